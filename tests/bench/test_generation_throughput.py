"""bench/generation_throughput.py runs on a CPU too (its figures mean nothing there): both model families
shrunk by flags, in float32, against HF's ``generate``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.launch import REPO_ROOT, child_env

TINY = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--dtype", "fp32",
    "--batch-sizes", "1", "2", "--prompt-length", "8", "--new-tokens", "5", "--repeats", "1",
]  # fmt: skip
TINY_LLAMA = ["--num-key-value-heads", "2", "--ffn-hidden-size", "128"]
RESULT = re.compile(
    r"RESULT (ours|hf)-(\S+) fp32 cpu prompt=8 .*batch=(\d+) new_tokens=5 tok/s=[0-9,.]+ .* "
    r"rows_full=(\d+)/(\d+)(?: row0_agreeing_prefix=(\d+)/5)?"
)


@pytest.mark.parametrize("model,flags", [("large", []), ("tinyllama", TINY_LLAMA)])
def test_every_row_gets_its_tokens_and_hf_generates_the_same(model, flags):
    completed = subprocess.run(
        [sys.executable, "bench/generation_throughput.py", "--model", model, *TINY, *flags],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = [match.groups() for match in RESULT.finditer(completed.stdout)]
    assert [(side, name, int(batch)) for side, name, batch, *_ in results] == [
        ("ours", model, 1), ("ours", model, 2), ("hf", model, 1), ("hf", model, 2),
    ]  # fmt: skip
    for _, _, batch, full, rows, _ in results:
        assert full == rows == batch
    # Float32 and the same weights: greedy decoding picks the same tokens.
    assert [agree for *_, agree in results[2:]] == ["5", "5"]
    assert re.search(rf"RATIO {model} ours/hf tok/s: batch 1: [0-9.]+x, batch 2: [0-9.]+x", completed.stdout)
