"""Logging flags: the log interval, evaluation, tensorboard and wandb, and step timing.

The ``--log-*-to-tensorboard`` switches are Megatron-DeepSpeed's and add its optional scalars under its tag
names (``megatron.training.interval_log`` writes them). They need somewhere to write, so each is refused
without ``--tensorboard-dir`` rather than doing nothing.
"""

from __future__ import annotations

import argparse
import os

from megatron.config.errors import ConfigError, flag_dest, require_positive
from megatron.config.schema import LoggingConfig, OptimizerConfig

_WANDB_MODES = ("online", "offline", "disabled")
TIMING_LOG_LEVELS = (0, 1, 2)
_TENSORBOARD_SWITCHES = (
    "--log-timers-to-tensorboard",
    "--log-batch-size-to-tensorboard",
    "--log-validation-ppl-to-tensorboard",
    "--log-optimizer-states-to-tensorboard",
    "--log-memory-to-tensorboard",
)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("--log-interval", type=int, default=100, help="Iterations between log lines.")
    group.add_argument("--eval-interval", type=int, default=1000, help="Iterations between evaluations.")
    group.add_argument("--eval-iters", type=int, default=100, help="Iterations per evaluation.")
    group.add_argument("--tensorboard-dir", default=None, help="Write TensorBoard events here.")
    group.add_argument(
        "--tensorboard-queue-size",
        type=int,
        default=1000,
        help="Scalars tensorboard holds in memory before writing them to disk (they are also written every "
        "2 minutes and at exit); 1 writes each at once.",
    )
    group.add_argument(
        "--timing-log-level",
        type=int,
        choices=TIMING_LOG_LEVELS,
        default=0,
        help="Which parts of the step to time, each with a device sync: 0 the iteration only, 1 also "
        "forward-backward and optimizer, 2 also batch-generator, forward-compute and backward-compute. "
        "Logged every --log-interval (and to tensorboard with --log-timers-to-tensorboard).",
    )
    group.add_argument(
        "--log-timers-to-tensorboard",
        action="store_true",
        help="Write the iteration time and the --timing-log-level timers to tensorboard.",
    )
    group.add_argument(
        "--log-batch-size-to-tensorboard",
        action="store_true",
        help="Write the global batch size to tensorboard (batch-size/batch-size).",
    )
    group.add_argument(
        "--log-validation-ppl-to-tensorboard",
        action="store_true",
        help="Write the validation perplexity to tensorboard (lm-loss-validation/lm loss validation ppl).",
    )
    group.add_argument(
        "--log-optimizer-states-to-tensorboard",
        action="store_true",
        help="Write L1/L2 norms and largest magnitudes of Adam's moments and of the weights (optimizer/...).",
    )
    group.add_argument(
        "--log-memory-to-tensorboard",
        action="store_true",
        help="Write the accelerator's memory use (mem-allocated-bytes, mem-reserved-bytes, ...).",
    )
    group.add_argument("--wandb-project", default=None, help="Log to this Weights & Biases project.")
    group.add_argument("--wandb-exp-name", default=None, help="Weights & Biases run name.")
    group.add_argument("--wandb-save-dir", default=None, help="Weights & Biases local directory.")
    group.add_argument(
        "--wandb-mode",
        choices=list(_WANDB_MODES),
        default=None,
        help="Default: the WANDB_MODE environment variable if set, else online.",
    )


def logging_config(args: argparse.Namespace, optimizer: OptimizerConfig) -> LoggingConfig:
    require_positive("--log-interval", args.log_interval)
    require_positive("--eval-interval", args.eval_interval)
    require_positive("--tensorboard-queue-size", args.tensorboard_queue_size)
    if args.eval_iters < 0:
        raise ConfigError(f"--eval-iters {args.eval_iters}: must be >= 0 (0 turns evaluation off).")
    wandb_mode = args.wandb_mode or os.environ.get("WANDB_MODE") or "online"
    if wandb_mode not in _WANDB_MODES:
        raise ConfigError(
            f"WANDB_MODE={wandb_mode!r} in the environment: use one of {', '.join(_WANDB_MODES)}."
        )
    switches = {flag: getattr(args, flag_dest(flag)) for flag in _TENSORBOARD_SWITCHES}
    given = [flag for flag, on in switches.items() if on]
    if given and not args.tensorboard_dir:
        raise ConfigError(
            f"{', '.join(given)} without --tensorboard-dir: there is no tensorboard to write to. Add "
            "--tensorboard-dir DIR, or drop the flag(s)."
        )
    if switches["--log-optimizer-states-to-tensorboard"] and optimizer.optimizer != "adam":
        raise ConfigError(
            f"--log-optimizer-states-to-tensorboard with --optimizer {optimizer.optimizer}: it writes norms "
            "of Adam's moments (exp_avg, exp_avg_sq), which SGD does not keep. Use --optimizer adam or drop "
            "the flag."
        )
    return LoggingConfig(
        log_interval=args.log_interval,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        tensorboard_dir=args.tensorboard_dir,
        wandb_project=args.wandb_project,
        wandb_exp_name=args.wandb_exp_name,
        wandb_save_dir=args.wandb_save_dir,
        wandb_mode=wandb_mode,
        tensorboard_queue_size=args.tensorboard_queue_size,
        timing_log_level=args.timing_log_level,
        **{flag_dest(flag): on for flag, on in switches.items()},
    )
