"""What every ``pretrain_*.py`` entry point does before training: flags -> config, checks, clean errors."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from megatron.config.errors import ConfigError
from megatron.parallel.launch_env import discover
from megatron.training.distributed import shutdown_distributed
from megatron.training.exit_signals import EXIT_STATUS as INTERRUPTED_EXIT_STATUS
from megatron.training.exit_signals import TrainingInterrupted
from megatron.training.launcher_watch import watch_launchers
from megatron.training.nonfinite import EXIT_STATUS as NONFINITE_EXIT_STATUS
from megatron.training.nonfinite import NonFiniteError

# Where rank 0 writes its exit status, when set: DeepSpeed's runner exits 0 for a launch killed by a
# signal, so the example scripts check this file instead (examples_deepspeed/launch_checked.sh).
EXIT_STATUS_FILE_VARIABLE = "MEGATRON_EXIT_STATUS_FILE"
CONFIG_ERROR_STATUS = 2
RANK0_REPORTS_FIRST_S = 3.0


def configure_logging() -> None:
    """Rank 0 logs the toolkit's progress; other ranks only warnings, so a 64-rank job prints one log line
    per interval. Other libraries log warnings only (not the compiler commands of DeepSpeed's op checks)."""
    rank = _rank()
    logging.basicConfig(
        level=logging.WARNING,
        format="[%(asctime)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("megatron").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main``; a :class:`ConfigError` becomes one readable line and exit status 2, a non-finite stop
    status 3, a stop on a signal status 4 (no traceback for any). Training processes under a launcher
    stop when it dies (``launcher_watch``). Rank 0 records that it runs, then its status, in
    ``$MEGATRON_EXIT_STATUS_FILE`` when that is set, for the example scripts' ``launch_checked``."""
    configure_logging()
    watch_launchers()
    _record_status(f"running {os.getpid()}")
    status = _run(main, argv)
    # Recorded before the teardown: a rank that dies in the final barrier must not erase a status that
    # is already decided (launch_checked then reports the run as killed).
    _record_status(str(status))
    if status != CONFIG_ERROR_STATUS:
        shutdown_distributed()
    return status


def _record_status(text: str) -> None:
    """Rank 0's line in ``$MEGATRON_EXIT_STATUS_FILE``: "running PID" while it runs, then its exit status."""
    status_file = os.environ.get(EXIT_STATUS_FILE_VARIABLE)
    if status_file and _rank() == 0:
        with open(status_file, "w") as file:
            file.write(f"{text}\n")


def _run(main: Callable[[list[str] | None], object], argv: list[str] | None) -> int:
    try:
        main(argv)
    except ConfigError as error:
        _print_on_rank0(f"error: {error}")
        if _rank() != 0:
            # A launcher stops the other ranks at the first one's exit: let rank 0 print the error first.
            time.sleep(RANK0_REPORTS_FIRST_S)
        return CONFIG_ERROR_STATUS
    except NonFiniteError as error:  # one line and status 3; every rank stops at the same check
        _print_on_rank0(f"error: {error}")
        return NONFINITE_EXIT_STATUS
    except TrainingInterrupted as error:  # every rank stops after the same iteration
        _print_on_rank0(str(error))
        return INTERRUPTED_EXIT_STATUS
    return 0


def _rank() -> int:
    """This process's rank under any launcher (srun and mpirun set no RANK); 0 while the environment
    cannot be read, whose error the config check then reports."""
    try:
        return discover(os.environ).rank
    except ConfigError:
        return 0


def _print_on_rank0(message: str) -> None:
    if _rank() == 0:
        print(message, file=sys.stderr)
