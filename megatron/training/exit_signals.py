"""Signals that save work: SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before the time limit) make every
rank finish the current step, save a checkpoint and exit with :data:`EXIT_STATUS`; a second signal ends
the process at once.

Python runs a signal handler only when its main thread is back in the interpreter, which a rank blocked in
a collective (a peer died) may never be. So the handler here does nothing itself: the interpreter's C-level
handler writes each signal's number to a socket (``signal.set_wakeup_fd``) the moment it arrives, and a
small thread reading that socket does the counting. The first signal only raises a flag for the loop; a
later one ends the process from that thread, whatever its main thread is doing, with the status a shell
gives a process killed by that signal (128 + its number). Signals that arrive within
:data:`SAME_EVENT_SECONDS` of the first count as that one: a terminal's Ctrl-C reaches the worker and the
``deepspeed`` launcher, which forwards SIGTERM a moment later.

Ranks must stop at the same iteration, and a signal can reach them at different moments (or reach one
rank only): :class:`StopVote` has them agree on it without making the step wait for the device.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist

logger = logging.getLogger("megatron")

# What ``run_cli`` returns for a run stopped by a signal or by its launcher's death (2 is bad input, 3 a
# non-finite stop). Non-zero, so that a scheduler or a shell's ``&&`` never takes a stopped run for one
# that trained to its end.
EXIT_STATUS = 4

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SAME_EVENT_SECONDS = 2.0


class TrainingInterrupted(RuntimeError):
    """The run stopped on a signal after saving (when it has a --save); ``run_cli`` prints the message as
    one line and exits with :data:`EXIT_STATUS`."""


class ExitSignals:
    """While entered, catches :data:`HANDLED_SIGNALS` as described in the module docstring; ``received``
    is the first one's name. Enter and leave it on the main thread (Python sets handlers only there).
    ``enabled`` False (``--no-exit-signal-handler``) leaves every signal's default action in place."""

    def __init__(self, enabled: bool = True, same_event_seconds: float = SAME_EVENT_SECONDS):
        self.enabled = enabled
        self.same_event_seconds = same_event_seconds
        self.received: str | None = None
        self._first_at: float | None = None
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ExitSignals:
        if not self.enabled:
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        for signum in HANDLED_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, _leave_to_the_watcher)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="exit-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.enabled:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._writer.close()  # the watcher's read returns empty and its thread ends
        self._thread.join(timeout=5)
        self._reader.close()

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            # The socket carries every signal that has a Python handler, also those of other code (an
            # asyncio child watcher's or torch.compile's workers' SIGCHLD): only ours stop the run.
            for signum in data:
                if signum in HANDLED_SIGNALS:
                    self._arrived(signum)

    def _arrived(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first_at is None:
            self._first_at, self.received = now, name
            logger.warning(
                "received %s: finishing this iteration, then saving a checkpoint and exiting (a second "
                "signal exits at once, without saving)",
                name,
            )
            return
        if now - self._first_at <= self.same_event_seconds:
            return
        logger.warning(
            "received %s after %s: exiting now, without saving (status %d)",
            name,
            self.received,
            128 + signum,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)


def _leave_to_the_watcher(signum, frame) -> None:
    """Python-level handler: the watcher thread has already seen the signal through the wakeup socket."""


class StopVote:
    """Every iteration each rank votes with the signal it received (0 for none); each rank learns the
    result one iteration later, so all ranks stop after the same iteration and no step waits for the
    device: the all-reduce is queued behind the step, and its result is read only after the next step has
    been queued. With one process the vote is its own, at once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1
        self._pending: tuple[object, torch.Tensor, object] | None = None

    def cast(self, received: str | None) -> str | None:
        """This iteration's vote; returns the name of a signal that some rank received (the highest
        numbered one, when ranks received different ones), as of the previous iteration, or None."""
        number = int(signal.Signals[received]) if received else 0
        if not self.distributed:
            return received
        decided = self._read_pending()
        vote = torch.full((1,), float(number), device=self.device)
        work = dist.all_reduce(vote, op=dist.ReduceOp.MAX, async_op=True)
        if self.device.type == "cuda":
            work.wait()  # the current stream waits for the reduction; the host does not
            host = torch.empty(1, pin_memory=True)
            host.copy_(vote, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending = (work, host, done)
        else:
            self._pending = (work, vote, None)
        return decided

    def _read_pending(self) -> str | None:
        if self._pending is None:
            return None
        work, result, done = self._pending
        if done is None:
            work.wait()
        else:
            done.synchronize()
        number = int(result.item())
        return signal.Signals(number).name if number else None
