"""Flags for non-finite losses and gradients: Megatron-LM's ``--check-for-nan-in-loss-and-grad`` (on by
default, ``--no-check-for-nan-in-loss-and-grad`` turns it off) and how many consecutive non-finite
iterations it tolerates before it stops the run (``megatron.training.nonfinite`` applies the rule)."""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError
from megatron.config.schema import NonFiniteConfig

_TOLERANCE_FLAG = "--max-consecutive-nonfinite-iterations"


def add_nonfinite_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("non-finite losses and gradients")
    group.add_argument(
        "--check-for-nan-in-loss-and-grad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Stop the run (exit status 3, no checkpoint saved) after "
        f"{_TOLERANCE_FLAG} consecutive iterations whose loss or gradient norm is NaN or inf, or whose "
        "update was skipped without a loss scale left to lower. On by default, as in Megatron-LM.",
    )
    group.add_argument(
        _TOLERANCE_FLAG,
        type=int,
        default=None,
        metavar="N",
        help="Consecutive non-finite iterations tolerated by --check-for-nan-in-loss-and-grad; the N-th "
        "stops the run. Default 1: the first one stops it, as Megatron-LM does.",
    )


def nonfinite_config(args: argparse.Namespace) -> NonFiniteConfig:
    tolerance = args.max_consecutive_nonfinite_iterations
    if tolerance is None:
        return NonFiniteConfig(check=args.check_for_nan_in_loss_and_grad)
    if tolerance < 1:
        raise ConfigError(
            f"{_TOLERANCE_FLAG} {tolerance}: must be >= 1 (1 stops at the first non-finite iteration); "
            "to never stop, pass --no-check-for-nan-in-loss-and-grad instead."
        )
    if not args.check_for_nan_in_loss_and_grad:
        raise ConfigError(
            f"{_TOLERANCE_FLAG} {tolerance} with --no-check-for-nan-in-loss-and-grad: nothing is checked, "
            "so the tolerance would do nothing. Drop one of the two flags."
        )
    return NonFiniteConfig(check=True, max_consecutive=tolerance)
