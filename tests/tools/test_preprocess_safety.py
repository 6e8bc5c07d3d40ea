"""tools/preprocess_data.py never damages its previous output and names the file and line of bad input.

A run that fails (bad line late in the input), is terminated (SIGTERM) or killed (SIGKILL) mid-run leaves the
previous ``.bin``/``.idx`` byte-identical; staging files are removed at once, or after SIGKILL by the next
run. Non-UTF-8 bytes and a truncated ``.gz`` are reported with file and line; an input without documents
is refused.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from megatron.config.errors import ConfigError
from tests.data.corpora import MERGES, REPO_ROOT, VOCAB
from tools.preprocess_data import main as preprocess

KJV = (REPO_ROOT / "data" / "corpus" / "kjv.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
GPT2_FLAGS = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", VOCAB, "--merge-file", MERGES]


def command(input_path: Path, prefix: Path, *extra: str) -> list[str]:
    return ["--input", str(input_path), "--output-prefix", str(prefix), *GPT2_FLAGS, *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder, hidden ones included, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A folder holding a good earlier output of 20 chapters: (folder, output prefix, its files)."""
    folder = tmp_path / "out"
    source = tmp_path / "first.jsonl"
    source.write_text("".join(KJV[:20]), encoding="utf-8")
    preprocess(command(source, folder / "kjv", "--append-eod"))
    files = snapshot(folder)
    assert sorted(files) == ["kjv_text_document.bin", "kjv_text_document.idx"]
    return folder, folder / "kjv", files


def test_failure_late_in_the_input_leaves_previous_output(previous, tmp_path: Path) -> None:
    folder, prefix, files = previous
    source = tmp_path / "late_error.jsonl"
    source.write_text("".join(KJV[:300]) + '{"text": broken\n', encoding="utf-8")
    for workers in ("1", "2"):
        with pytest.raises(ConfigError, match=r"late_error\.jsonl' line 301 is not valid JSON"):
            preprocess(command(source, prefix, "--workers", workers, "--log-interval", "100"))
        assert snapshot(folder) == files


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_signal_mid_run_leaves_previous_output(previous, tmp_path: Path, signum: int) -> None:
    """The process is signalled once it has written documents; SIGTERM unwinds and removes its staging
    files, SIGKILL cannot, so the next run on the prefix removes them; neither touches the outputs."""
    folder, prefix, files = previous
    source = tmp_path / "big.jsonl"
    source.write_text("".join(KJV * 4), encoding="utf-8")
    args = command(source, prefix, "--log-interval", "20")
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tools" / "preprocess_data.py"), *args],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stderr:
            if line.startswith("processed"):
                break
        else:
            pytest.fail(f"no progress line before exit status {process.wait()}")
        process.send_signal(signum)
        status = process.wait(timeout=60)
    finally:
        process.kill()
        process.stderr.close()
    assert status == (128 + signum if signum == signal.SIGTERM else -signum)
    after = snapshot(folder)
    assert {name: after[name] for name in files} == files
    leftovers = sorted(set(after) - set(files))
    if signum == signal.SIGTERM:
        assert leftovers == []
        return
    assert leftovers and all(name.endswith(f".{process.pid}.partial") for name in leftovers)
    assert all(name.startswith(".kjv_text_document.") for name in leftovers)
    small = tmp_path / "small.jsonl"
    small.write_text("".join(KJV[:3]), encoding="utf-8")
    preprocess(command(small, prefix))  # a later run sweeps what the killed one left
    assert sorted(snapshot(folder)) == sorted(files)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_non_utf8_input_names_file_and_line(previous, tmp_path: Path, workers: str) -> None:
    folder, prefix, files = previous
    source = tmp_path / "latin1.jsonl"
    source.write_bytes("".join(KJV[:2]).encode() + '{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.jsonl' line 3 is not UTF-8 \(byte 0xe9 at column 14\)"):
        preprocess(command(source, prefix, "--workers", workers))
    assert snapshot(folder) == files


def test_truncated_gzip_names_file_and_line(previous, tmp_path: Path) -> None:
    folder, prefix, files = previous
    whole = gzip.compress("".join(KJV[:200]).encode())
    cut = whole[: len(whole) // 2]
    source = tmp_path / "cut.jsonl.gz"
    source.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)  # what any reader can get out of the cut file
    complete = readable.count(b"\n")
    with pytest.raises(
        ConfigError, match=rf"cut\.jsonl\.gz' is truncated or damaged gzip data at line {complete + 1} "
    ):
        preprocess(command(source, prefix))
    assert snapshot(folder) == files


def test_input_without_documents_is_refused(previous, tmp_path: Path) -> None:
    folder, prefix, files = previous
    source = tmp_path / "empty.jsonl"
    for text in ("", "\n\n", json.dumps({"text": ""}) + "\n"):
        source.write_text(text)
        with pytest.raises(ConfigError, match=r"empty\.jsonl' gave no documents for --json-keys 'text'"):
            preprocess(command(source, prefix))
        assert snapshot(folder) == files
    assert not os.path.exists(tmp_path / "fresh_text_document.idx")
    with pytest.raises(ConfigError, match="gave no documents"):
        preprocess(command(source, tmp_path / "fresh"))
    assert not list(tmp_path.glob("*fresh*"))
