"""Checkpoint flags: where checkpoints go, and what a run resumed from one takes from it.

Megatron-DeepSpeed's recipes restart or reshape a schedule from a checkpoint with these flags, so they are
checked against each other here, before any process group starts; what they do is applied when the
checkpoint loads (``megatron.checkpointing.checkpoint``).

- ``--override-opt_param-scheduler``: the LR-schedule settings of the flags (peak and minimum LR, warmup,
  decay length and style, token warmup and decay) replace the checkpoint's; progress still loads.
- ``--use-checkpoint-opt_param-scheduler``: the checkpoint's settings replace the flags'.
- neither: the two must agree, and a difference is an error naming both values (Megatron-DeepSpeed's
  ``OptimizerParamScheduler`` asserts the same).
- ``--no-load-lr-state``: the LR schedule is not loaded at all: it starts from its beginning (warmup
  included) with the flags' settings, while weights, optimizer state and counters load.
- ``--reset-iteration``: the iteration count, consumed samples and consumed tokens start from zero (the data
  is read from its beginning), while weights, optimizer state and LR schedule load. With
  ``--no-load-lr-state`` this restarts the whole schedule from a checkpoint's weights.
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError, require_positive
from megatron.config.schema import CheckpointConfig, SchedulerSource

_OVERRIDE = "--override-opt_param-scheduler"
_USE_CHECKPOINT = "--use-checkpoint-opt_param-scheduler"


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpointing")
    group.add_argument("--save", default=None, help="Directory to save checkpoints to.")
    group.add_argument("--load", default=None, help="Directory to load a checkpoint from.")
    group.add_argument("--save-interval", type=int, default=None, help="Iterations between checkpoints.")
    group.add_argument(
        "--overwrite-save",
        action="store_true",
        help="Write into a --save folder that already holds checkpoints this run does not --load (those of "
        "the same iterations are replaced and 'latest' moves to this run's). Without it that is an error.",
    )
    group.add_argument(
        "--no-load-optim", action="store_true", help="Do not load optimizer state (nor the LR schedule)."
    )
    group.add_argument(
        "--no-load-rng", action="store_true", help="Do not load random-number-generator state."
    )
    group.add_argument(
        "--finetune", action="store_true", help="Load only the weights; reset iteration count and optimizer."
    )
    group.add_argument(
        "--universal-checkpoint",
        action="store_true",
        help="--load a DeepSpeed universal checkpoint (tools/checkpoint_util.py --universal): weights and "
        "optimizer state go into this run's data/tensor/pipeline layout.",
    )
    group.add_argument(
        _OVERRIDE,
        action="store_true",
        dest="override_opt_param_scheduler",
        help="On --load, take the LR schedule's settings (--lr, --min-lr, warmup, decay length and style) "
        "from the flags instead of the checkpoint; its progress still loads.",
    )
    group.add_argument(
        _USE_CHECKPOINT,
        action="store_true",
        dest="use_checkpoint_opt_param_scheduler",
        help="On --load, take the LR schedule's settings from the checkpoint instead of the flags. Without "
        f"this or {_OVERRIDE}, settings that differ are an error.",
    )
    group.add_argument(
        "--no-load-lr-state",
        action="store_true",
        help="On --load, do not load the LR schedule: it starts from its beginning with the flags' settings.",
    )
    group.add_argument(
        "--reset-iteration",
        action="store_true",
        help="On --load, start the iteration count and the consumed samples and tokens from zero (the data "
        "from its beginning); weights, optimizer state and LR schedule still load.",
    )


def checkpoint_config(args: argparse.Namespace) -> CheckpointConfig:
    if args.save_interval is not None and args.save is None:
        raise ConfigError(
            f"--save-interval {args.save_interval} was given without --save; add --save <directory> or drop "
            "--save-interval."
        )
    require_positive("--save-interval", args.save_interval)
    return CheckpointConfig(
        save=args.save,
        load=args.load,
        save_interval=args.save_interval,
        overwrite_save=args.overwrite_save,
        no_load_optim=args.no_load_optim,
        no_load_rng=args.no_load_rng,
        finetune=args.finetune,
        scheduler_source=_scheduler_source(args),
        no_load_lr_state=args.no_load_lr_state,
        reset_iteration=args.reset_iteration,
    )


def _scheduler_source(args: argparse.Namespace) -> SchedulerSource:
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ConfigError(
            f"{_OVERRIDE} and {_USE_CHECKPOINT} were both given: one takes the LR schedule's settings from "
            "the flags, the other from the checkpoint. Keep one."
        )
    if not args.use_checkpoint_opt_param_scheduler:
        return "flags" if args.override_opt_param_scheduler else "match"
    not_loaded = [
        (args.no_load_lr_state, "--no-load-lr-state", "does not load the LR schedule"),
        (args.no_load_optim, "--no-load-optim", "loads neither optimizer state nor LR schedule"),
        (args.finetune, "--finetune", "loads only the weights"),
    ]
    for given, flag, what in not_loaded:
        if given:
            raise ConfigError(
                f"{_USE_CHECKPOINT} with {flag}, which {what}: there are no checkpoint settings to use. "
                f"Drop one of the two."
            )
    return "checkpoint"
