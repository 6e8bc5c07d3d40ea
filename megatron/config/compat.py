"""Megatron-DeepSpeed flags that choose its CUDA kernels or its process-group backend.

Recipes pass them on every launch. The kernel switches turn off fused kernels that this toolkit does not
have: the computation they select is already what runs here, so each is accepted and the log says once
what runs instead. ``--distributed-backend`` is honoured (Megatron-DeepSpeed itself lets DeepSpeed choose
under ``--deepspeed``); a backend this machine cannot run is refused before any process group starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from typing import get_args

from deepspeed.accelerator import get_accelerator

from megatron.config.errors import ConfigError, flag_dest
from megatron.config.schema import DistributedBackend, KernelConfig

logger = logging.getLogger(__name__)

# What runs here in place of the kernel each switch turns off (or on).
_WHAT_RUNS = {
    "--no-async-tensor-model-parallel-allreduce": "the tensor-parallel all-reduce of input gradients runs "
    "after the weight-gradient matmul, not overlapped with it (Megatron-DeepSpeed also turns the overlap "
    "off under --deepspeed)",
    "--no-masked-softmax-fusion": "attention is torch SDPA (or flash-attn), whose kernel scales, masks and "
    "softmaxes itself; there is no separate fused softmax kernel to turn off",
    "--no-bias-gelu-fusion": "the bias is added inside the linear layer's matmul and GeLU runs apart from "
    "it (eager), or both as torch.compile fuses them",
    "--no-bias-dropout-fusion": "dropout and the residual add run as separate eager kernels, or as "
    "torch.compile fuses them",
    "--no-gradient-accumulation-fusion": "weight gradients accumulate through autograd and DeepSpeed's "
    "buffers; there is no fused accumulate-into-main-grad matmul here",
}
_TRITON = "--use-flash-attn-triton"


def add_compat_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Megatron-DeepSpeed kernel and backend switches")
    group.add_argument(
        "--distributed-backend",
        choices=list(get_args(DistributedBackend)),
        default=None,
        help="torch.distributed backend: nccl (NVIDIA GPUs), gloo (CPU, or GPUs through the host), ccl "
        "(Intel oneCCL, with oneccl_bindings_for_pytorch). Default: the accelerator's (nccl on GPUs, gloo on "
        "CPU).",
    )
    for flag, what_runs in _WHAT_RUNS.items():
        group.add_argument(flag, action="store_true", help=f"Accepted; here {what_runs}.")
    group.add_argument(
        _TRITON,
        action="store_true",
        help="Accepted; attention runs through torch SDPA (flash kernels on recent GPUs) instead of "
        "flash-attn's Triton kernel.",
    )


def log_compat_flags(args: argparse.Namespace, kernels: KernelConfig) -> None:
    """Say once, for each kernel switch given, what runs in its place."""
    for flag, what_runs in _WHAT_RUNS.items():
        if getattr(args, flag_dest(flag)):
            logger.info("%s: %s.", flag, what_runs)
    if args.use_flash_attn_triton:
        instead = "flash-attn (--use-flash-attn)" if kernels.use_flash_attn else "torch SDPA"
        logger.info("%s: attention runs through %s, not flash-attn's Triton kernel.", _TRITON, instead)


def check_distributed_backend(backend: DistributedBackend | None) -> None:
    """This machine's check of --distributed-backend, before the process group starts (DeepSpeed would
    fail inside torch.distributed, on every rank)."""
    if backend is None:
        return
    device = get_accelerator().device_name()
    if backend == "nccl" and device != "cuda":
        raise ConfigError(
            f"--distributed-backend nccl: NCCL needs NVIDIA GPUs and this machine runs on {device}. Use "
            "--distributed-backend gloo, or drop the flag to use the accelerator's backend."
        )
    if backend == "ccl":
        if device == "cuda":
            raise ConfigError(
                "--distributed-backend ccl: oneCCL serves CPUs and Intel GPUs, and this machine runs on "
                "CUDA GPUs. Use --distributed-backend nccl (or drop the flag)."
            )
        if importlib.util.find_spec("oneccl_bindings_for_pytorch") is None:
            raise ConfigError(
                "--distributed-backend ccl: the oneccl_bindings_for_pytorch package (Intel's oneCCL for "
                "torch.distributed) is not installed. Install oneccl_bind_pt, or use --distributed-backend "
                "gloo on CPUs."
            )
