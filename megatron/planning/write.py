"""A layout as what ``pretrain_gpt.py`` takes: its ds_config and its flags.

The search checks each candidate by running the toolkit's own rules on exactly these flags and this
ds_config, so what ``--write`` emits is what was checked.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from megatron.planning.layout import Layout, Precision

# The flags a layout sets (value-taking, then switches); the user's own are dropped in their favour.
LAYOUT_FLAGS = (
    "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size",
    "--ds-sequence-parallel-size",
    "--micro-batch-size",
    "--zero-stage",
    "--recompute-granularity",
    "--recompute-method",
    "--recompute-num-layers",
    "--deepspeed_config",
    "--deepspeed-config",
)
LAYOUT_SWITCHES = (
    "--deepspeed",
    "--sequence-parallel",
    "--cpu-optimizer",
    "--checkpoint-activations",
    "--no-pipeline-parallel",
)
DS_CONFIG_NAME = "ds_config.json"


def ds_config_for(layout: Layout, precision: Precision) -> dict[str, Any]:
    """The ds_config of ``layout``: batch sizes, the ZeRO stage and offload, the precision section."""
    zero: dict[str, Any] = {"stage": layout.zero_stage}
    if layout.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if layout.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": layout.global_batch_size,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.gradient_accumulation_steps,
        "zero_optimization": zero,
        "steps_per_print": 1000000,
        "wall_clock_breakdown": False,
    }
    if precision in ("bf16", "fp16"):
        config[precision] = {"enabled": True}
    elif precision == "autocast":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return config


def layout_flags(layout: Layout, ds_config_path: str) -> list[str]:
    """The ``pretrain_gpt.py`` flags of ``layout`` (the ds_config carries the rest)."""
    flags = [
        "--deepspeed", "--tensor-model-parallel-size", str(layout.tensor_parallel),
        "--pipeline-model-parallel-size", str(layout.pipeline_parallel),
        "--micro-batch-size", str(layout.micro_batch_size),
        "--zero-stage", str(layout.zero_stage),
        "--deepspeed_config", ds_config_path,
    ]  # fmt: skip
    if layout.ulysses > 1:
        flags += ["--ds-sequence-parallel-size", str(layout.ulysses)]
    if layout.sequence_parallel:
        flags.append("--sequence-parallel")
    if layout.recompute != "none":
        flags += ["--recompute-granularity", layout.recompute]
    if layout.offload_optimizer:
        flags.append("--cpu-optimizer")
    return flags


def without_layout_flags(argv: list[str]) -> list[str]:
    """``argv`` less the flags a layout sets (and their values), so the layout's own are the only ones."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in LAYOUT_FLAGS:
            skip = "=" not in token
            continue
        if name not in LAYOUT_SWITCHES:
            kept.append(token)
    return kept


def write_layout(directory: Path, argv: list[str], layout: Layout, precision: Precision) -> tuple[Path, Path]:
    """Write ``ds_config.json`` and ``flags.txt`` (one shell-quoted line of pretrain_gpt.py flags: the
    given ``argv`` with the layout's flags) into ``directory``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ds_path = directory / DS_CONFIG_NAME
    ds_path.write_text(json.dumps(ds_config_for(layout, precision), indent=2) + "\n")
    flags_path = directory / "flags.txt"
    line = without_layout_flags(argv) + layout_flags(layout, str(ds_path))
    flags_path.write_text(shlex.join(line) + "\n")
    return ds_path, flags_path
