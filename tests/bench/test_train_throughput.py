"""bench/train_throughput.py runs on a CPU too (its figures mean nothing there): both modes, a model shrunk
by flags."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.launch import REPO_ROOT, child_env

TINY = [
    "--model", "small", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2",
]  # fmt: skip


def run_bench(*flags: str) -> str:
    completed = subprocess.run(
        [sys.executable, "bench/train_throughput.py", *TINY, *flags],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_loop_mode_reports_the_logged_throughput_and_the_synthetic_step():
    stdout = run_bench("--loop", "--iterations", "5", "--eval-every", "10", "--global-batch-size", "4")
    logged = [float(v) for v in re.findall(r"\| tokens per second: ([0-9.]+) \|", stdout)]
    assert len(logged) == 3 and "validation loss at iteration 10" in stdout
    assert "gradient accumulation steps: 2" in stdout
    pattern = r"RESULT ours-loop-small .* dropout=0.1 tok/s=([0-9,]+) .* synthetic_tok/s=([0-9,]+)"
    result = re.search(pattern, stdout)
    assert result, stdout[-2000:]
    assert float(result.group(1).replace(",", "")) == pytest.approx(logged[-1], abs=1)  # median of one line
    assert float(result.group(2).replace(",", "")) > 0


@pytest.mark.slow
def test_synthetic_mode_reports_a_step():
    stdout = run_bench("--warmup", "1", "--iterations", "2")
    pattern = r"RESULT ours-small T=1 P=1 D=1 autocast zero=0 .* dropout=0 step_ms=[0-9.]+ tok/s="
    assert re.search(pattern, stdout)
