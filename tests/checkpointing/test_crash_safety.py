"""A save killed half-way leaves the previous checkpoint loadable; damaged or mismatched checkpoints fail
clearly, naming the file, before DeepSpeed touches them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT, child_env, free_port, run_pretrain, tiny_model_flags, write_ds_config

# Installed into the training process through PYTHONPATH: once the first file of global_step4 is on disk,
# torch.save announces it and stalls, so the test can kill the process in the middle of that save.
STALLING_SAVE = """
import os, time, torch
_save = torch.save
def _stalling_save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    if "global_step4" in str(f):
        open(os.environ["STALL_MARKER"], "w").close()
        time.sleep(600)
torch.save = _stalling_save
"""


@pytest.mark.slow
def test_save_killed_half_way_keeps_the_previous_checkpoint(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALLING_SAVE)
    marker = tmp_path / "stalled"
    flags = tiny_model_flags(gpt_data_prefix, 6) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
        "--save", str(save), "--save-interval", "2",
    ]  # fmt: skip
    env = child_env(
        PYTHONPATH=f"{hook}{os.pathsep}{REPO_ROOT}", STALL_MARKER=str(marker), MASTER_PORT=str(free_port())
    )
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "pretrain_gpt.py"), *flags],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert process.poll() is None, "training ended before the save to kill"
            assert time.time() < deadline, "the stalled save never came"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert (save / "global_step4").is_dir()  # the interrupted save left its partial folder ...
    assert (save / "latest").read_text() == "global_step2"  # ... which nothing points at
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    resumed = run_pretrain(flags + ["--load", str(save)], launcher="python").check()
    assert "loaded checkpoint" in resumed.stdout and "global_step2" in resumed.stdout
    assert sorted(resumed.losses) == [3, 4, 5, 6]


@pytest.fixture
def saved_run(gpt_data_prefix, tmp_path) -> tuple[list[str], Path]:
    save = tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, 2) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)), "--save", str(save),
    ]  # fmt: skip
    run_pretrain(flags, launcher="python").check()
    return flags, save


@pytest.mark.slow
def test_truncated_checkpoint_names_the_file(saved_run):
    flags, save = saved_run
    states = save / "global_step2" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    result = run_pretrain(flags + ["--load", str(save)], launcher="python")
    assert result.returncode == 2
    assert f"checkpoint file {states} cannot be read" in result.stderr and "truncated" in result.stderr


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(saved_run):
    flags, save = saved_run
    flags = list(flags)
    flags[flags.index("--hidden-size") + 1] = "128"
    result = run_pretrain(flags + ["--load", str(save)], launcher="python")
    assert result.returncode == 2
    assert "is a different model: hidden_size 64 (checkpoint) vs 128 (flags)" in result.stderr


@pytest.mark.slow
def test_checkpoint_of_another_layout_points_to_the_converter(saved_run):
    flags, save = saved_run
    result = run_pretrain(flags + ["--load", str(save), "--tensor-model-parallel-size", "2"], nproc=2)
    assert result.returncode != 0
    assert "--tensor-model-parallel-size 1, this run uses 2" in result.stderr
    assert "tools/checkpoint_util.py" in result.stderr
