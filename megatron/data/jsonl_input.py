"""Reading preprocess_data.py's input: JSON lines, plain or gzip, with errors naming the file and line.

Lines are read as bytes and decoded one by one, so a non-UTF-8 byte is reported with its line and column
instead of a bare ``UnicodeDecodeError`` from somewhere in a buffer, and a truncated or damaged ``.gz``
stops with the line it reached instead of an ``EOFError``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator

from megatron.config.errors import ConfigError


def check_input(path: str) -> None:
    """Fail before any output exists when ``--input`` cannot be read."""
    if not os.path.isfile(path):
        raise ConfigError(f"--input {path!r} does not exist; pass a .jsonl or .jsonl.gz file.")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--input {path!r} cannot be read; check its permissions.")


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of ``path`` (``.gz`` decompressed), counted from 1."""
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as stream:
            for lineno, raw in enumerate(stream, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ConfigError(
                        f"--input {path!r} line {lineno} is not UTF-8 (byte {raw[exc.start]:#04x} at column "
                        f"{exc.start + 1}); convert the file to UTF-8, e.g. with iconv -t UTF-8."
                    ) from None
                yield lineno, text
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ConfigError(
            f"--input {path!r} is truncated or damaged gzip data at line {lineno + 1} (after {lineno} "
            f"complete lines: {exc}); re-create or re-download the file."
        ) from None
    except OSError as exc:
        raise ConfigError(f"--input {path!r} cannot be read at line {lineno + 1} ({exc}).") from None
