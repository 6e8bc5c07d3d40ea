"""bench/evaluation_throughput.py runs on a CPU too (its figures mean nothing there): a tiny GPT scores the
bundled corpus's windows, and HF's model of the same weights sums the same loss."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.launch import REPO_ROOT, child_env

TINY = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
    "--max-position-embeddings", "64", "--dtype", "fp32", "--characters", "6000", "--micro-batch-size", "4",
    "--stride", "32",
]  # fmt: skip
RESULT = re.compile(
    r"RESULT (ours|hf)-large fp32 cpu seq=64 micro_batch=4 windows=(\d+) .* summed_loss=(\S+)"
)


def test_both_sides_score_the_same_windows_to_the_same_loss():
    completed = subprocess.run(
        [sys.executable, "bench/evaluation_throughput.py", "--model", "large", *TINY],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (ours, our_windows, our_loss), (hf, hf_windows, hf_loss) = RESULT.findall(completed.stdout)
    assert (ours, hf) == ("ours", "hf") and our_windows == hf_windows and int(our_windows) > 1
    assert abs(float(our_loss) - float(hf_loss)) <= 1e-6 * abs(float(hf_loss))
