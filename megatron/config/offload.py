"""ZeRO-Offload: ``--cpu-optimizer`` and the ds_config's ``zero_optimization.offload_optimizer`` /
``offload_param``, reconciled as the other flag/key pairs are.

With the optimizer offloaded (device ``cpu`` or ``nvme``) DeepSpeed keeps the fp32 master weights and Adam's
moments in host memory (or on NVMe) and updates them on the CPU; DeepSpeed 0.19 then requires its own CPU
Adam as the client optimizer (``deepspeed.ops.adam.DeepSpeedCPUAdam``; any other raises
``ZeRORuntimeException`` in ``DeepSpeedEngine._configure_optimizer``), so the toolkit builds that one, with
the same weight-decay groups. ``--cpu-optimizer`` (Megatron-DeepSpeed's flag for the same CPU Adam) and the
ds_config must agree: the flag alone fills in ``offload_optimizer: {"device": "cpu"}``, the key alone turns
the CPU Adam on.
"""

from __future__ import annotations

import argparse
from typing import Any

from megatron.config.ds_config import DsConfigFile
from megatron.config.errors import ConfigError

_OFFLOADED = ("cpu", "nvme")
_OPTIMIZER_KEY = "zero_optimization.offload_optimizer"
_PARAM_KEY = "zero_optimization.offload_param"


def add_offload_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ZeRO-Offload")
    group.add_argument(
        "--cpu-optimizer",
        action="store_true",
        help="Run Adam on the CPU (DeepSpeed's CPUAdam, ZeRO-Offload): optimizer states in host memory. "
        'Fills in the ds_config\'s zero_optimization.offload_optimizer {"device": "cpu"} when it is missing; '
        "needs ZeRO stage 1-3.",
    )


def offload_optimizer(
    ds: DsConfigFile, args: argparse.Namespace, stage: int
) -> tuple[bool, dict[str, Any] | None]:
    """(whether the CPU Adam runs, the ``offload_optimizer`` section to fill in or None)."""
    present, device = ds.lookup(f"{_OPTIMIZER_KEY}.device")
    section_present = ds.lookup(_OPTIMIZER_KEY)[0]
    offloaded = present and device in _OFFLOADED
    if args.cpu_optimizer and section_present and not offloaded:
        raise ConfigError(
            f"--cpu-optimizer, but ds_config {ds.path} has '{_OPTIMIZER_KEY}.device' "
            f"{device if present else 'unset'} ('none'): the optimizer would stay on the accelerator. Set it "
            'to "cpu" (or "nvme"), or drop --cpu-optimizer.'
        )
    cpu_adam = args.cpu_optimizer or offloaded
    source = "--cpu-optimizer" if args.cpu_optimizer else f"'{_OPTIMIZER_KEY}.device' {device!r}"
    if cpu_adam and stage == 0:
        raise ConfigError(
            f"{source} with ZeRO stage 0 (--zero-stage / zero_optimization.stage in {ds.path}): DeepSpeed "
            "offloads the optimizer of its ZeRO optimizers only. Use --zero-stage 1, 2 or 3."
        )
    if cpu_adam and args.optimizer != "adam":
        raise ConfigError(
            f"{source} with --optimizer {args.optimizer}: ZeRO-Offload updates on the CPU with DeepSpeed's "
            "CPUAdam only. Use --optimizer adam, or keep the optimizer on the accelerator."
        )
    param_present, param_device = ds.lookup(f"{_PARAM_KEY}.device")
    if param_present and param_device in _OFFLOADED and stage != 3:
        raise ConfigError(
            f"ds_config {ds.path}: '{_PARAM_KEY}.device' is {param_device!r} with ZeRO stage {stage}: only "
            "ZeRO stage 3 partitions (and so offloads) the parameters. Use --zero-stage 3, or remove "
            f"'{_PARAM_KEY}' (offload_optimizer works with stages 1-3)."
        )
    fill = {"device": "cpu"} if args.cpu_optimizer and not section_present else None
    return cpu_adam, fill
