"""Megatron-DeepSpeed's kernel switches and --distributed-backend: accepted, said once in the log, and a
backend this machine cannot run refused before any process group starts."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from megatron.config.arguments import parse_args
from megatron.config.compat import check_distributed_backend
from megatron.config.errors import ConfigError
from tests.config.recipe import build
from tests.config.test_arguments import REQUIRED

KERNEL_SWITCHES = [
    "--no-async-tensor-model-parallel-allreduce",
    "--no-masked-softmax-fusion",
    "--no-bias-gelu-fusion",
    "--no-bias-dropout-fusion",
    "--no-gradient-accumulation-fusion",
    "--use-flash-attn-triton",
]


def test_kernel_switches_are_accepted_and_each_logged_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="megatron"):
        config = build(tmp_path, dict.fromkeys(KERNEL_SWITCHES, True))
    assert config.kernels.use_flash_attn is False  # the Triton switch does not ask for flash-attn
    for flag in KERNEL_SWITCHES:
        assert sum(record.getMessage().startswith(f"{flag}: ") for record in caplog.records) == 1, flag
    assert "attention runs through torch SDPA" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megatron"):
        build(tmp_path)
    assert not any(flag in caplog.text for flag in KERNEL_SWITCHES)


def test_use_flash_attn_v2_is_use_flash_attn():
    assert parse_args(REQUIRED + ["--use-flash-attn-v2"]).use_flash_attn
    assert not parse_args(REQUIRED).use_flash_attn


@pytest.mark.parametrize("backend", ["nccl", "gloo", "ccl"])
def test_distributed_backend_reaches_the_parallel_config(tmp_path, backend):
    assert build(tmp_path, {"--distributed-backend": backend}).parallel.distributed_backend == backend
    assert build(tmp_path).parallel.distributed_backend is None


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--distributed-backend: invalid choice: 'mpi'"):
        build(tmp_path, {"--distributed-backend": "mpi"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA GPUs, where NCCL runs")
def test_nccl_without_gpus_is_refused():
    with pytest.raises(ConfigError, match="--distributed-backend nccl: NCCL needs NVIDIA GPUs .* cpu"):
        check_distributed_backend("nccl")
    check_distributed_backend("gloo")
    check_distributed_backend(None)


@pytest.mark.skipif(
    importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None or torch.cuda.is_available(),
    reason="oneCCL's bindings are installed (or the machine has CUDA GPUs: another refusal)",
)
def test_ccl_without_its_bindings_is_refused():
    with pytest.raises(ConfigError, match="oneccl_bindings_for_pytorch .* not installed"):
        check_distributed_backend("ccl")
