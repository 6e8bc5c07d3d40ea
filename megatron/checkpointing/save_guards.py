"""Checks that keep ``--save`` from costing work: an occupied or unwritable folder, a full disk.

At start (before any process group, on every rank, since every rank writes shards): a ``--save`` folder that
already holds checkpoints of a run this one does not ``--load`` would have its ``global_stepN`` folders
replaced and ``latest`` moved back, so it is refused unless ``--overwrite-save`` says it is deliberate; a
folder that cannot be written (a file, under a file, read-only, no permission) is found by writing a probe
file, not at the first save after hours of training.

Before each save: the checkpoint's size is estimated (the previous checkpoint's size on disk, or the weights
and optimizer state of every rank) and compared with the free space, so that a full disk stops the run with
one line before a half-written checkpoint; a save that still fails with an I/O error stops every rank with
one line instead of a traceback per rank (or ranks waiting forever in DeepSpeed's closing barrier). The
trackers are written after the save, so the previous checkpoint stays the one ``latest`` names.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist

from megatron.checkpointing.layout import LATEST_TAG_FILENAME, TRACKER_FILENAME
from megatron.config.errors import ConfigError
from megatron.config.schema import CheckpointConfig, Config
from megatron.training.distributed import any_rank

logger = logging.getLogger(__name__)

_TAG = re.compile(r"global_step(\d+)")
# What torch.save's zip writer raises (as RuntimeError) when the file system refuses a write.
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "Parent directory", "cannot be opened", "file write failed")

# The free-space figure of a folder; tests replace it to stand for a full disk.
disk_usage = shutil.disk_usage


def newest_checkpoint(folder: str) -> int | None:
    """The newest iteration that ``folder`` holds a checkpoint of (trackers or ``global_stepN`` folders);
    -1 for trackers that name none (empty, foreign); None when it holds no checkpoint at all."""
    if not os.path.isdir(folder):
        return None
    names = os.listdir(folder)
    iterations = [int(match.group(1)) for name in names if (match := _TAG.fullmatch(name))]
    found = bool(iterations)
    for tracker in (LATEST_TAG_FILENAME, TRACKER_FILENAME):
        if tracker in names:
            found = True
            with open(os.path.join(folder, tracker)) as handle:
                number = re.search(r"\d+", handle.read())
            if number:
                iterations.append(int(number.group()))
    if not found:
        return None
    return max(iterations, default=-1)


def check_save_folder(options: CheckpointConfig) -> None:
    """``--save`` must not hold checkpoints of another run (unless ``--overwrite-save``), and be writable."""
    if options.save is None:
        return
    _check_not_occupied(options)
    check_writable("--save", options.save)


def _check_not_occupied(options: CheckpointConfig) -> None:
    save = options.save
    newest = newest_checkpoint(save)
    if newest is None or options.overwrite_save:
        return
    found = f"iteration {newest}" if newest >= 0 else "unreadable trackers"
    loads_it = options.load is not None and os.path.realpath(options.load) == os.path.realpath(save)
    if loads_it and not (options.finetune or options.reset_iteration):
        return  # resuming: the run continues after the checkpoint it loads
    if loads_it:
        counting = "--finetune" if options.finetune else "--reset-iteration"
        raise ConfigError(
            f"--save {save} is the --load folder and holds checkpoints up to {found}, but {counting} counts "
            "iterations from zero, so this run would replace them (global_step1, ...) and move 'latest' "
            "back. "
            "Give another --save, or add --overwrite-save to write into it anyway."
        )
    raise ConfigError(
        f"--save {save} already holds checkpoints (newest: {found}) that this run does not --load; saving "
        f"there would replace them and move 'latest'. Resume them with --load {save}, give another --save, "
        "or add --overwrite-save to write into it anyway."
    )


def check_writable(flag: str, path: str) -> None:
    """Create ``path`` if needed and write a probe file in it: what a save does first, done at start."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file, not a folder; give a folder path.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path} lies under {parent}, which is a file; give a folder path.")
    probe = os.path.join(path, f".write_check.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as handle:
            handle.write("probe")
        os.remove(probe)
    except OSError as error:
        raise ConfigError(
            f"{flag} {path} cannot be written ({_reason(error)}); give a folder this user can write to on a "
            "writable file system."
        ) from error


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def folder_size(folder: str) -> int:
    """Bytes of all files under ``folder``."""
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names
    )


def estimated_checkpoint_bytes(engine, save_dir: str, config: Config) -> int:
    """The size of the next checkpoint: the previous one's on disk when ``save_dir`` has one (what this rank's
    file system holds of it), else every rank's weights and optimizer state (a float32 master copy, and
    Adam's two moments or SGD's momentum), which ZeRO spreads over the data-parallel ranks. A collective:
    every rank calls it."""
    parameters = list(engine.module.parameters())
    values = sum(getattr(p, "ds_numel", p.numel()) for p in parameters)
    weight_bytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in parameters)
    state_bytes = 4 + (8 if config.optimizer.optimizer == "adam" else 4)
    share = torch.tensor(
        [(weight_bytes + values * state_bytes) / config.batch.data_parallel_size], dtype=torch.float64
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        share = share.to(engine.device)
        dist.all_reduce(share)
    latest = os.path.join(save_dir, LATEST_TAG_FILENAME)
    if os.path.isfile(latest):
        with open(latest) as handle:
            tag = handle.read().strip()
        if tag and os.path.isdir(os.path.join(save_dir, tag)):
            return folder_size(os.path.join(save_dir, tag))
    return int(share.item())


def check_free_space(engine, save_dir: str, tag: str, config: Config) -> None:
    """Stop every rank, with one line, before a save that does not fit; the previous checkpoint stays."""
    needed = estimated_checkpoint_bytes(engine, save_dir, config)
    free = disk_usage(save_dir).free
    short = free < needed
    if short and _rank() != 0:  # rank 0 says it in the error line
        logger.error("disk full on %s: %s", socket.gethostname(), _disk_full(save_dir, tag, needed, free))
    if any_rank(short, engine.device):
        detail = _disk_full(save_dir, tag, needed, free) if short else "on another rank (its line is above)"
        raise ConfigError(
            f"disk full: {detail}. Free space there or point --save at a larger disk; the previous "
            "checkpoint is intact and --load resumes it."
        )


def _disk_full(save_dir: str, tag: str, needed: int, free: int) -> str:
    return f"{tag} needs ~{needed / 1e9:.3g} GB, {free / 1e9:.3g} GB free on --save {save_dir}"


def guarded_save(save: Callable[[], object], save_dir: str, tag: str, device: torch.device) -> None:
    """Run ``save`` (DeepSpeed's save of this rank's files); if it fails with an I/O error on any rank, every
    rank stops with one line. A failing rank first meets the barrier that ends DeepSpeed's save, where the
    others wait, so no rank hangs."""
    failure = None
    try:
        save()
    except Exception as error:
        if not is_write_failure(error):
            raise
        failure = error
        if _rank() != 0:
            logger.error("rank %d: %s", _rank(), save_failure(save_dir, tag, error))
        if dist.is_initialized():
            dist.barrier()
    if any_rank(failure is not None, device):
        raise save_failure(save_dir, tag, failure)


def _free_space(folder: str) -> str:
    try:
        return f"{disk_usage(folder).free / 1e9:.3g} GB free there"
    except OSError as error:
        return f"free space unknown: {_reason(error)}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_write_failure(error: BaseException) -> bool:
    """An I/O failure of a save (the file system's, not a bug): OSError, or torch.save's zip writer."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES)


def save_failure(save_dir: str, tag: str, error: BaseException | None) -> ConfigError:
    """One line for a save that failed on some rank (``error``: this rank's, None if it wrote its part)."""
    if error is None:
        cause = "on another rank (its line is above)"
    elif isinstance(error, OSError) and error.errno:
        cause = f"({_reason(error)}: {error.filename or save_dir})"
    else:  # torch's zip writer says no more than "file write failed": the free space tells if it was that
        cause = f"({str(error).splitlines()[0]}; {_free_space(save_dir)})"
    return ConfigError(
        f"--save {save_dir}: writing {tag} failed {cause}. Fix the folder (space, permissions, mount) or "
        "point --save elsewhere; the previous checkpoint is intact and 'latest' still names it."
    )
