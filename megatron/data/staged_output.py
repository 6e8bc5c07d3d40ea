"""A new ``PREFIX.bin``/``PREFIX.idx`` pair written beside the old one and moved into place only when whole.

``tools/preprocess_data.py`` used to write ``PREFIX.bin`` in place: a killed or failing run left a partial
``.bin`` beside the previous ``.idx``, or deleted the previous good ``.bin``. Here both files are written
under hidden staging names in the output folder (same filesystem, so the final move is a rename) and:

- on success they are flushed to disk, then renamed over the outputs, ``.bin`` first and ``.idx`` last. A
  reader therefore never pairs a new ``.idx`` with an old ``.bin``; in the instant between the two renames
  it may pair the old ``.idx`` with the new ``.bin``, which the size check at open refuses with a clear
  error rather than reading. A reader that opened the old pair keeps reading it (a rename leaves open
  files alone).
- on an error, Ctrl-C or SIGTERM the staging files are removed and the previous outputs are untouched.
- on SIGKILL (or power loss) the staging files stay behind; their names
  (``.NAME.bin.HOST.PID.partial``) never end in ``.bin``/``.idx``, so nothing reads them, and the next run
  on the same prefix removes those of processes of this host that no longer exist.
"""

from __future__ import annotations

import glob
import logging
import os
import socket

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, data_file_path, index_file_path

logger = logging.getLogger(__name__)
_SUFFIX = ".partial"


def staging_path(final_path: str, host: str, pid: int) -> str:
    folder, name = os.path.split(final_path)
    return os.path.join(folder, f".{name}.{host}.{pid}{_SUFFIX}")


def remove_stale_staging(final_path: str) -> list[str]:
    """Delete staging files of ``final_path`` left by killed runs on this host; returns what was removed."""
    host = socket.gethostname()
    pattern = staging_path(glob.escape(final_path), glob.escape(host), 0)[: -len(f"0{_SUFFIX}")]
    removed = []
    for path in glob.glob(pattern + "*" + _SUFFIX):
        pid_text = path[len(pattern) : -len(_SUFFIX)]
        if pid_text.isdigit() and not _process_exists(int(pid_text)):
            os.remove(path)
            removed.append(path)
    if removed:
        logger.info("removed %s left by an interrupted run", ", ".join(removed))
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedDataset:
    """A :class:`MMapIndexedDatasetBuilder` for ``prefix`` whose output appears only at :meth:`commit`."""

    def __init__(self, prefix: str, dtype: type[np.number]) -> None:
        self.prefix = prefix
        host, pid = socket.gethostname(), os.getpid()
        self._final = (data_file_path(prefix), index_file_path(prefix))  # renamed in this order
        for path in self._final:
            remove_stale_staging(path)
        self._staged = tuple(staging_path(path, host, pid) for path in self._final)
        self.builder = MMapIndexedDatasetBuilder(self._staged[0], dtype)

    @property
    def staged_paths(self) -> tuple[str, str]:
        return self._staged

    def commit(self) -> None:
        """Write the index, flush both files, then rename ``.bin`` and ``.idx`` (last) into place."""
        self.builder.finalize(self._staged[1])
        for path in self._staged:
            _fsync(path)
        for staged, final in zip(self._staged, self._final):
            os.replace(staged, final)
        # The renames themselves are durable only once the folder is flushed.
        folder = os.open(os.path.dirname(os.path.abspath(self._final[0])), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def discard(self) -> None:
        """Remove the staging files; the previous outputs, if any, stay as they were."""
        self.builder.discard()
        for path in self._staged:
            if os.path.exists(path):
                os.remove(path)
