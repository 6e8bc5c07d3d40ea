"""Training processes stop when their launcher dies.

DeepSpeed's single-node ``deepspeed`` runner sets no signal handler, so SIGTERM ends it alone: its
``deepspeed.launcher.launch`` child and the training processes under that one live on, re-parented, and
train to the end; SIGKILL to ``launch`` orphans them the same way (and the runner then exits 0, since it
drops negative return codes). A scheduler sees a finished job while the run goes on writing to its
``--save``. So each training process records the launcher processes above it (its parent, and that one's
parent, while each is a known launcher) and a thread checks once a second that they still run. When one
has gone, the process sends itself SIGTERM: inside the training loop that saves a checkpoint and exits
(``megatron.training.exit_signals``); before it, the default action ends the process.

A process started from a shell, by SLURM's ``srun`` or by ``mpirun`` has no launcher above it here and is
not watched: those stop their tasks themselves.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import psutil

logger = logging.getLogger("megatron")

CHECK_SECONDS = 1.0
# How a launcher process's command line starts: a module run with -m, or a console script.
_LAUNCHER_MODULES = (
    "deepspeed.launcher.launch",
    "deepspeed.launcher.runner",
    "torch.distributed.run",
    "torch.distributed.launch",
)
_LAUNCHER_SCRIPTS = ("deepspeed", "ds", "torchrun")


def is_launcher(cmdline: list[str]) -> bool:
    """Whether a command line is one of the launchers above: ``python -m <module>``, ``python <script>``
    or the console script itself."""
    head = cmdline[:4]
    if any(arg in _LAUNCHER_MODULES for arg in head):
        return True
    return any(os.path.basename(arg) in _LAUNCHER_SCRIPTS for arg in head[:2])


def launcher_ancestors(process: psutil.Process | None = None) -> list[psutil.Process]:
    """The launchers above ``process`` (this one by default), nearest first."""
    launchers = []
    parent = (process or psutil.Process()).parent()
    while parent is not None:
        try:
            if not is_launcher(parent.cmdline()):
                break
        except psutil.Error:
            break
        launchers.append(parent)
        parent = parent.parent()
    return launchers


def _gone(process: psutil.Process) -> bool:
    """Exited (a zombie that its own parent has not reaped yet counts), or its PID reused."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def watch_launchers(check_seconds: float = CHECK_SECONDS) -> threading.Thread | None:
    """Start the watch thread (see the module docstring); None when no launcher is above this process."""
    launchers = launcher_ancestors()
    if not launchers:
        return None
    names = {launcher.pid: launcher.name() for launcher in launchers}  # unreadable once it has gone

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(check_seconds):
            for launcher in launchers:
                if _gone(launcher):
                    logger.warning(
                        "the launcher of this process (pid %d, %s) has exited: stopping training",
                        launcher.pid,
                        names[launcher.pid],
                    )
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
