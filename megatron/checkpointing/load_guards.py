"""Checks before DeepSpeed's ``engine.load_checkpoint``, and what a resume changes, said in the log.

DeepSpeed meets an empty ``latest``, a missing or truncated optimizer shard, a ZeRO stage change (1 -> 0: an
``AttributeError``) or a data-parallel size change (a ``ZeRORuntimeException``) with a traceback per rank;
here each is one line naming the file or setting and the fix, on every rank. A setting the resumed run
changes (batch size, duration, learning rate, ...) is logged with both values, so that a schedule reshaped
on purpose is visible in the log and one reshaped by accident can be spotted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import zipfile

import torch.distributed as dist

from megatron.checkpointing.layout import (
    LATEST_TAG_FILENAME,
    load_file,
    model_rank,
    model_states_name,
    optim_states_name,
    zero3_model_states_name,
)
from megatron.config.errors import ConfigError
from megatron.config.schema import Config
from megatron.parallel.context import ParallelContext

logger = logging.getLogger(__name__)

_UNIVERSAL = (
    "convert it to a universal checkpoint (tools/checkpoint_util.py --load-dir {dir} --save-dir NEW "
    "--universal) and --load NEW --universal-checkpoint"
)
# Settings a resumed run may change, as (section, field, flag) of the saved config.
_LOGGED_SETTINGS = (
    ("batch", "global_batch_size", "--global-batch-size"),
    ("batch", "micro_batch_size", "--micro-batch-size"),
    ("batch", "data_parallel_size", "data-parallel size"),
    ("batch", "rampup_batch_size", "--rampup-batch-size"),
    ("duration", "train_iters", "--train-iters"),
    ("duration", "train_samples", "--train-samples"),
    ("duration", "train_tokens", "--train-tokens"),
    ("optimizer", "optimizer", "--optimizer"),
    ("optimizer", "lr", "--lr"),
    ("optimizer", "weight_decay", "--weight-decay"),
    ("optimizer", "clip_grad", "--clip-grad"),
    ("lr_schedule", "min_lr", "--min-lr"),
    ("lr_schedule", "decay_style", "--lr-decay-style"),
    ("lr_schedule", "decay_iters", "--lr-decay-iters"),
    ("lr_schedule", "decay_samples", "--lr-decay-samples"),
    ("lr_schedule", "warmup_iters", "--lr-warmup-iters"),
    ("lr_schedule", "warmup_samples", "--lr-warmup-samples"),
    ("lr_schedule", "decay_tokens", "--lr-decay-tokens"),
    ("lr_schedule", "warmup_tokens", "--lr-warmup-tokens"),
    ("deepspeed", "zero_stage", "--zero-stage"),
    ("seed", None, "--seed"),
)


def latest_tag(load_dir: str) -> str | None:
    """The tag ``load_dir/latest`` names; None without that file (the run starts afresh)."""
    latest = os.path.join(load_dir, LATEST_TAG_FILENAME)
    if not os.path.exists(latest):
        return None
    with open(latest) as handle:
        tag = handle.read().strip()
    folders = sorted(
        (name for name in os.listdir(load_dir) if re.fullmatch(r"global_step\d+", name)),
        key=lambda name: int(name[len("global_step") :]),
    )
    present = f"checkpoint folders there: {', '.join(folders[-3:])}" if folders else "no checkpoint folders"
    if not tag:
        raise ConfigError(
            f"--load: {latest} is empty, so it names no checkpoint ({present}). Write the tag of a complete "
            "one into it (e.g. global_step1000), or remove the file to start from scratch."
        )
    if not os.path.isdir(os.path.join(load_dir, tag)):
        raise ConfigError(
            f"--load: {latest} names {tag}, but {os.path.join(load_dir, tag)} does not exist ({present}). "
            "Write the tag of a complete checkpoint into it."
        )
    return tag


def check_zero3_files(folder: str, path: str, config: Config) -> None:
    """ZeRO stage 3 names its model-state files per data-parallel rank; when this run's file is missing but
    the other naming's is there, the stage changed: say so instead of 'file missing'."""
    if os.path.isfile(path):
        return
    stage = config.deepspeed.zero_stage
    other = os.path.join(folder, model_states_name(0) if stage == 3 else zero3_model_states_name(0, 0))
    if os.path.isfile(other):
        saved = (load_file(other).get("config") or {}).get("deepspeed", {}).get("zero_stage", 3)
        raise ConfigError(_stage_change(folder, saved, stage))


def check_zero_layout(saved: dict, folder: str, config: Config, loads_optimizer: bool) -> None:
    """The optimizer state of ZeRO 1/2 (and of DeepSpeed's bf16 optimizer) is sharded over the data-parallel
    ranks, and ZeRO 3 shards the weights too: a stage or data-parallel size change cannot load in place.
    Stages 1 and 2 write the same shards and load each other's."""
    saved_stage, stage = saved["deepspeed"]["zero_stage"], config.deepspeed.zero_stage
    involves_stage3 = 3 in (saved_stage, stage)
    if saved_stage != stage and {saved_stage, stage} != {1, 2} and (loads_optimizer or involves_stage3):
        raise ConfigError(_stage_change(folder, saved_stage, stage))
    saved_dp, dp = saved["batch"]["data_parallel_size"], config.batch.data_parallel_size
    if saved_dp == dp:
        return
    if stage == 3:
        raise ConfigError(
            f"--load: {folder} was saved with ZeRO stage 3 over data-parallel size {saved_dp}, this run has "
            f"{dp}: stage 3 shards the weights themselves. Resume with data-parallel size {saved_dp} "
            "(world size / (tensor x pipeline x Ulysses size))."
        )
    if loads_optimizer and _sharded_optimizer(saved):
        raise ConfigError(
            f"--load: {folder} was saved with data-parallel size {saved_dp}, this run has {dp}, and its "
            f"optimizer state is sharded over those ranks (ZeRO stage {saved_stage}). Resume with "
            f"data-parallel size {saved_dp}, {_UNIVERSAL.format(dir=os.path.dirname(folder))}, or add "
            "--no-load-optim to start the optimizer state afresh."
        )


def _sharded_optimizer(saved: dict) -> bool:
    return saved["deepspeed"]["zero_stage"] >= 1 or bool(saved["precision"].get("bf16"))


def _stage_change(folder: str, saved_stage: int, stage: int) -> str:
    no_optim = "" if 3 in (saved_stage, stage) else ", or add --no-load-optim to start the optimizer afresh"
    return (
        f"--load: {folder} was saved with ZeRO stage {saved_stage}, this run uses stage {stage} "
        "(--zero-stage / zero_optimization.stage), whose optimizer state is laid out differently. Resume "
        f"with stage {saved_stage} (stages 1 and 2 load each other's){no_optim}."
    )


def check_optimizer_files(folder: str, saved: dict, context: ParallelContext) -> None:
    """Every rank's optimizer shard must be there and complete (a torch.save zip archive ends with its
    directory, which a truncated file lacks). Each rank checks its own; all raise the first problem found,
    so that rank 0 says it. A collective: every rank calls it."""
    problem = None
    if _sharded_optimizer(saved):
        rank = model_rank(context.pipeline_rank, context.tensor_rank, context.tensor_size)
        # DeepSpeed's BF16_Optimizer (bf16 at stage 0, and at stage 1 with fp32 gradient accumulation and
        # no offload) names its shards bf16_*; the ZeRO optimizer does not. Whichever is there is checked.
        named = {
            bf16: os.path.join(folder, optim_states_name(context.sequence_data_rank, rank, bf16))
            for bf16 in (True, False)
        }
        present = [path for path in named.values() if os.path.isfile(path)]
        problem = _damaged(present[0] if present else named[saved["deepspeed"]["zero_stage"] == 0])
    problems = [problem]
    if dist.is_initialized() and dist.get_world_size() > 1:
        problems = [None] * dist.get_world_size()
        dist.all_gather_object(problems, problem)
    found = [text for text in problems if text]
    if found:
        raise ConfigError(found[0])


def _damaged(path: str) -> str | None:
    fix = "Use an earlier checkpoint (write its tag into 'latest'), or --no-load-optim to start the optimizer"
    if not os.path.isfile(path):
        return f"--load: optimizer-state file {path} is missing; the checkpoint is incomplete. {fix} afresh."
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError) as error:
        return f"--load: optimizer-state file {path} is truncated or damaged ({error}). {fix} afresh."


def log_changed_settings(saved: dict, config: Config) -> None:
    """One line per setting that differs from the checkpoint's run, with both values."""
    current = dataclasses.asdict(config)
    for section, field, flag in _LOGGED_SETTINGS:
        before = saved.get(section) if field is None else (saved.get(section) or {}).get(field)
        after = current[section] if field is None else current[section][field]
        if isinstance(before, list):
            before = tuple(before)
        if before != after:
            logger.info("resume: %s changed: %s (checkpoint) -> %s (this run)", flag, before, after)
