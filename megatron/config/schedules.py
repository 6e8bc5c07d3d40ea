"""The run's length, learning-rate schedule and batch arithmetic: the rules that tie flags together in time.

Split from ``build.py`` so that the schedule rules (Megatron's iteration and sample modes, the batch-size
ramp-up) can be read in one place.
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError, flag_dest, require_positive
from megatron.config.parallelism import describe_data_parallel
from megatron.config.schema import BatchConfig, DurationConfig, LRScheduleConfig, ParallelConfig


def duration_config(args: argparse.Namespace) -> DurationConfig:
    if (args.train_iters is None) == (args.train_samples is None):
        given = "both were given" if args.train_iters is not None else "neither was given"
        raise ConfigError(f"give exactly one of --train-iters and --train-samples ({given}).")
    require_positive("--train-iters", args.train_iters)
    require_positive("--train-samples", args.train_samples)
    require_positive("--train-tokens", args.train_tokens)
    require_positive("--exit-interval", args.exit_interval)
    require_positive("--exit-duration-in-mins", args.exit_duration_in_mins)
    return DurationConfig(
        train_iters=args.train_iters,
        train_samples=args.train_samples,
        train_tokens=args.train_tokens,
        exit_interval=args.exit_interval,
        exit_duration_in_mins=args.exit_duration_in_mins,
        exit_signal_handler=args.exit_signal_handler,
    )


def lr_schedule_config(args: argparse.Namespace, duration: DurationConfig) -> LRScheduleConfig:
    """Megatron's two modes: with --train-iters the schedule counts iterations, with --train-samples it
    counts samples, and the other mode's flags are an error rather than silently ignored."""
    require_positive("--lr", args.lr)
    if args.min_lr < 0 or args.min_lr > args.lr:
        raise ConfigError(f"--min-lr {args.min_lr}: must be between 0 and --lr {args.lr}.")
    fraction = args.lr_warmup_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"--lr-warmup-fraction {fraction}: must be in [0, 1].")
    iteration_mode = duration.train_iters is not None
    unit, other = ("iters", "samples") if iteration_mode else ("samples", "iters")
    mode_flag = f"--train-{unit}"
    for flag in (f"--lr-decay-{other}", f"--lr-warmup-{other}"):
        value = getattr(args, flag_dest(flag))
        if value:
            raise ConfigError(
                f"{flag} {value} does not apply with {mode_flag}: the schedule counts "
                f"{unit} there. Use --lr-decay-{unit} / --lr-warmup-{unit} instead."
            )
    warmup_flag = f"--lr-warmup-{unit}"
    if fraction is not None and getattr(args, flag_dest(warmup_flag)):
        raise ConfigError(
            f"--lr-warmup-fraction {fraction} and {warmup_flag} {getattr(args, flag_dest(warmup_flag))} were "
            "both given; choose one way to set the warmup."
        )
    decay_flag = f"--lr-decay-{unit}"
    decay = getattr(args, flag_dest(decay_flag))
    require_positive(decay_flag, decay)
    if decay is None:
        decay_flag, decay = mode_flag, getattr(args, flag_dest(mode_flag))
    warmup = int(fraction * decay) if fraction is not None else getattr(args, flag_dest(warmup_flag))
    if warmup < 0:
        raise ConfigError(f"{warmup_flag} {warmup}: must be >= 0.")
    if warmup > decay:
        source = "--lr-warmup-fraction" if fraction is not None else warmup_flag
        raise ConfigError(
            f"warmup of {warmup} {unit} (from {source}) is longer than the decay of {decay} {unit} (from "
            f"{decay_flag}); shorten the warmup or lengthen the decay."
        )
    decay_tokens, warmup_tokens = _token_schedule(args, warmup_flag, fraction)
    lengths = {f"decay_{unit}": decay, f"warmup_{unit}": warmup}
    return LRScheduleConfig(
        args.lr_decay_style, args.min_lr, **lengths, decay_tokens=decay_tokens, warmup_tokens=warmup_tokens
    )


def _token_schedule(
    args: argparse.Namespace, warmup_flag: str, fraction: float | None
) -> tuple[int | None, int | None]:
    """Megatron-DeepSpeed's --lr-decay-tokens / --lr-warmup-tokens: each, when given, makes its phase count
    consumed tokens. A warmup in iterations or samples may come with a decay in tokens (the decay then
    starts from the tokens consumed when the warmup ended), but not with a warmup in tokens."""
    decay_tokens, warmup_tokens = args.lr_decay_tokens, args.lr_warmup_tokens
    require_positive("--lr-decay-tokens", decay_tokens)
    if warmup_tokens is None:
        return decay_tokens, None
    if warmup_tokens < 0:
        raise ConfigError(f"--lr-warmup-tokens {warmup_tokens}: must be >= 0.")
    other = "--lr-warmup-fraction" if fraction is not None else warmup_flag
    other_value = fraction if fraction is not None else getattr(args, flag_dest(warmup_flag))
    if other_value:
        raise ConfigError(
            f"--lr-warmup-tokens {warmup_tokens} and {other} {other_value} were both given; choose one way "
            "to set the warmup."
        )
    if decay_tokens is not None and warmup_tokens > decay_tokens:
        raise ConfigError(
            f"--lr-warmup-tokens {warmup_tokens} is longer than --lr-decay-tokens {decay_tokens}; shorten "
            "the warmup or lengthen the decay."
        )
    return decay_tokens, warmup_tokens


def batch_config(
    micro: int | None,
    global_batch: int | None,
    parallel: ParallelConfig,
    rampup: list[int] | None,
    duration: DurationConfig,
) -> BatchConfig:
    """Global batch = micro batch x gradient accumulation x data-parallel size, where the data-parallel size
    is what tensor, pipeline and sequence parallelism leave of the world."""
    if micro is None:
        raise ConfigError(
            "missing required flag --micro-batch-size (or train_micro_batch_size_per_gpu in the ds_config)."
        )
    require_positive("--micro-batch-size", micro)
    require_positive("--global-batch-size", global_batch)
    per_step = micro * parallel.data_parallel_size
    data_parallel = describe_data_parallel(parallel)
    if global_batch % per_step:
        raise ConfigError(
            f"--global-batch-size {global_batch} is not divisible by --micro-batch-size {micro} x "
            f"{data_parallel} = {per_step}: gradient accumulation steps = global / (micro x data-parallel) "
            f"must be a whole number. Use a multiple of {per_step}."
        )
    if rampup is not None:
        _check_rampup(tuple(rampup), global_batch, per_step, data_parallel, duration)
    return BatchConfig(
        micro_batch_size=micro,
        global_batch_size=global_batch,
        data_parallel_size=parallel.data_parallel_size,
        rampup_batch_size=tuple(rampup) if rampup is not None else None,
    )


def _check_rampup(
    rampup: tuple[int, ...], global_batch: int, per_step: int, data_parallel: str, duration: DurationConfig
) -> None:
    start, increment, samples = rampup
    flag = f"--rampup-batch-size {start} {increment} {samples}"
    if duration.train_iters is not None:
        raise ConfigError(
            f"{flag} needs --train-samples: a batch-size ramp-up counts samples, not iterations."
        )
    if start <= 0 or increment <= 0 or samples < 0:
        raise ConfigError(f"{flag}: START and INCR must be > 0 and SAMPLES >= 0.")
    if start > global_batch or (global_batch - start) % increment:
        raise ConfigError(
            f"{flag}: the ramp must reach --global-batch-size {global_batch} from START {start} in whole "
            f"steps of INCR {increment}, so (global - START) must be a non-negative multiple of INCR."
        )
    for name, value in (("START", start), ("INCR", increment)):
        if value % per_step:
            raise ConfigError(
                f"{flag}: {name} {value} is not a multiple of micro-batch size x {data_parallel} = "
                f"{per_step}, so some ramp steps would need a fractional number of micro-batches."
            )
