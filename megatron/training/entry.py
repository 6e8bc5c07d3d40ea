"""What every ``pretrain_*.py`` entry point does before training: flags -> config, checks, clean errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from megatron.config.errors import ConfigError
from megatron.training.distributed import shutdown_distributed
from megatron.training.nonfinite import EXIT_STATUS as NONFINITE_EXIT_STATUS
from megatron.training.nonfinite import NonFiniteError


def configure_logging() -> None:
    """Rank 0 logs the toolkit's progress; other ranks only warnings, so a 64-rank job prints one log line
    per interval. Other libraries log warnings only (not the compiler commands of DeepSpeed's op checks)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.WARNING,
        format="[%(asctime)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("megatron").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main`` and turn a :class:`ConfigError` into one readable line and exit status 2, no traceback."""
    configure_logging()
    try:
        main(argv)
    except ConfigError as error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:  # one line and status 3; every rank stops at the same check
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {error}", file=sys.stderr)
        shutdown_distributed()
        return NONFINITE_EXIT_STATUS
    shutdown_distributed()
    return 0
