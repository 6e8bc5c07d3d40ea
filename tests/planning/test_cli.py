"""tools/plan.py end to end: a table on stdout, --write's flags and ds_config accepted by build_config at
the cluster's world size, a clear "no layout fits" for a model too large, errors that name the flag."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.planning.cli import main
from tests.launch import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import check_install  # noqa: E402

TINY = (
    "--num-layers 4 --hidden-size 256 --num-attention-heads 8 --num-key-value-heads 4 --seq-length 512 "
    "--global-batch-size 64 --bf16 --position-embedding-type rope --swiglu --normalization rmsnorm "
    "--disable-bias-linear --untie-embeddings-and-output-weights --tokenizer-type GPTSentencePieceTokenizer"
).split()
CLUSTER = ["--num-gpus", "8", "--gpus-per-node", "4", "--gpu", "A100-40"]
ROW = re.compile(r"^\s+1\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d)\s+(\d+)\s+(\d+)\s+(none|selective|full)\s")


@pytest.mark.slow
def test_the_tool_prints_a_ranked_table():
    completed = subprocess.run(
        [sys.executable, "tools/plan.py", *CLUSTER, *TINY],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#  T  P"))
    assert all(lines[header + k].lstrip().startswith(str(k)) for k in range(1, 11))
    speeds = [float(line.split()[-2].replace(",", "")) for line in lines[header + 1 : header + 11]]
    assert speeds == sorted(speeds, reverse=True)
    assert any(line.startswith("rejected: ") for line in lines)


def test_write_emits_flags_and_a_ds_config_that_build_config_accepts(tmp_path, capsys):
    run_flags = "--lr 3e-4 --train-iters 100 --data-path corpus --tokenizer-model tokenizer.model".split()
    assert main([*CLUSTER, *TINY, *run_flags, "--write", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    best = next(ROW.match(line) for line in out.splitlines() if ROW.match(line))
    t, p, d, u, stage, micro, accumulation, recompute = best.groups()
    flags = shlex.split((tmp_path / "flags.txt").read_text())
    assert "note:" not in out  # the planner's own check of the written flags found nothing
    config = build_config(parse_args(flags), 8, 32000)
    parallel, batch = config.parallel, config.batch
    assert (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size) == (int(t), int(p))
    assert (parallel.ds_sequence_parallel_size, batch.data_parallel_size) == (int(u), int(d))
    assert (batch.micro_batch_size, batch.global_batch_size) == (int(micro), 64)
    assert int(micro) * int(accumulation) * int(d) == 64
    assert config.deepspeed.zero_stage == int(stage) and config.precision.bf16
    assert config.recompute.granularity == (None if recompute == "none" else recompute)
    assert config.deepspeed.config_path == str(tmp_path / "ds_config.json")


def test_a_model_too_large_says_no_layout_fits_and_by_how_much(capsys):
    huge = (
        "--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048 --global-batch-size 8"
    )
    assert main(["--num-gpus", "1", "--gpu", "A100-40", *huge.split(), "--bf16"]) == 1
    out = capsys.readouterr().out
    found = re.search(
        r"no layout fits: the closest, (.*), needs ([\d.]+) GiB > 40 GiB \(short by ([\d.]+) GiB\)", out
    )
    assert found, out
    assert float(found.group(2)) - 40 == pytest.approx(float(found.group(3)), abs=0.11)


def test_errors_name_the_flag(capsys):
    assert main([*CLUSTER, *[f for f in TINY if f not in ("--global-batch-size", "64")]]) == 2
    assert "--global-batch-size" in capsys.readouterr().err
    assert main(["--num-gpus", "12", "--gpus-per-node", "8", "--gpu", "H100", *TINY]) == 2
    assert "--num-gpus 12 is not a multiple of --gpus-per-node 8" in capsys.readouterr().err
    assert main(["--num-gpus", "8", *TINY]) == 2
    assert "--gpu" in capsys.readouterr().err


def test_check_install_wants_the_console_script(tmp_path, monkeypatch):
    """An install made before megatron-plan existed lacks the command: install.sh must run pip again."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = []\n[project.scripts]\nsurely-not-a-command = "megatron.planning.cli:main"'
    )
    monkeypatch.setattr(check_install, "REPO_ROOT", Path(tmp_path))
    assert (
        "console script surely-not-a-command (megatron.planning.cli:main)"
        in check_install.unmet_requirements([])
    )
