"""Resuming a checkpoint that cannot load as it is (an empty 'latest', a missing or truncated optimizer shard,
another ZeRO stage or data-parallel size) stops with one line naming the file or setting and the fix,
before DeepSpeed's traceback per rank; the settings a resumed run changes are logged with both values."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path

import pytest

from megatron.checkpointing.layout import load_file
from megatron.checkpointing.load_guards import (
    check_optimizer_files,
    check_zero_layout,
    latest_tag,
    log_changed_settings,
)
from megatron.config.errors import ConfigError
from megatron.parallel.context import ParallelContext
from tests.config.recipe import build
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

SHARD = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def dp2_zero1(gpt_data_prefix, tmp_path_factory) -> tuple[list[str], Path]:
    """Flags of a 4-iteration run and the checkpoint it saved at iteration 2 (--exit-interval) with data
    parallel size 2 and ZeRO stage 1."""
    folder = tmp_path_factory.mktemp("dp2_zero1")
    flags = tiny_model_flags(gpt_data_prefix, 4)
    save = folder / "ckpt"
    ds = write_ds_config(folder / "ds1.json", 1)
    saving = ["--deepspeed_config", str(ds), "--save", str(save), "--exit-interval", "2"]
    run_pretrain(flags + saving, nproc=2).check()
    assert sorted(path.name for path in (save / "global_step2").iterdir()) == [
        "mp_rank_00_model_states.pt", SHARD.format(0), SHARD.format(1),
    ]  # fmt: skip
    return flags, save


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    # No rank's traceback (torch prefixes those with "[rankN]:"); torchrun reports its failed child itself.
    assert not re.search(r"^\[rank\d+\]:", stderr, re.MULTILINE), stderr[-3000:]
    return lines[0]


def _copy(save: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(save, copy)
    return copy


@pytest.mark.slow
def test_zero_stage_change_is_one_line(dp2_zero1, tmp_path):
    flags, save = dp2_zero1
    ds0 = write_ds_config(tmp_path / "ds0.json", 0)
    result = run_pretrain(flags + ["--deepspeed_config", str(ds0), "--load", str(save)], nproc=2)
    assert result.returncode != 0 and not result.losses
    line = _one_error_line(result.stderr)
    assert f"{save / 'global_step2'} was saved with ZeRO stage 1, this run uses stage 0" in line
    assert "Resume with stage 1" in line and "--no-load-optim" in line


@pytest.mark.slow
def test_data_parallel_size_change_points_to_universal_checkpoints(dp2_zero1, tmp_path):
    flags, save = dp2_zero1
    ds1 = write_ds_config(tmp_path / "ds1.json", 1)
    result = run_pretrain(flags + ["--deepspeed_config", str(ds1), "--load", str(save)], launcher="python")
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "was saved with data-parallel size 2, this run has 1" in line
    assert "tools/checkpoint_util.py" in line and "--universal-checkpoint" in line


@pytest.mark.slow
def test_missing_shard_of_another_rank_is_named_by_rank_0(dp2_zero1, tmp_path):
    flags, save = dp2_zero1
    copy = _copy(save, tmp_path)
    missing = copy / "global_step2" / SHARD.format(1)
    missing.unlink()
    ds1 = write_ds_config(tmp_path / "ds1.json", 1)
    result = run_pretrain(flags + ["--deepspeed_config", str(ds1), "--load", str(copy)], nproc=2)
    assert result.returncode != 0 and not result.losses
    line = _one_error_line(result.stderr)
    assert f"optimizer-state file {missing} is missing" in line and "--no-load-optim" in line


@pytest.mark.slow
def test_changed_settings_are_logged_and_zero_1_loads_into_zero_2(dp2_zero1, tmp_path):
    flags, save = dp2_zero1
    flags = list(flags)
    flags[flags.index("--global-batch-size") + 1] = "16"
    ds2 = write_ds_config(tmp_path / "ds2.json", 2)
    result = run_pretrain(
        flags + ["--deepspeed_config", str(ds2), "--load", str(save), "--override-opt_param-scheduler"],
        nproc=2,
    ).check()
    assert "resume: --global-batch-size changed: 8 (checkpoint) -> 16 (this run)" in result.stdout
    assert "resume: --zero-stage changed: 1 (checkpoint) -> 2 (this run)" in result.stdout
    assert "resume: --lr changed" not in result.stdout
    assert sorted(result.losses) == [3, 4]


@pytest.mark.slow
def test_truncated_shard_and_empty_latest(dp2_zero1, tmp_path):
    _, save = dp2_zero1
    copy = _copy(save, tmp_path)
    folder = copy / "global_step2"
    saved = load_file(str(folder / "mp_rank_00_model_states.pt"))["config"]
    check_optimizer_files(str(folder), saved, ParallelContext.single())  # intact: passes
    shard = folder / SHARD.format(0)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ConfigError, match=f"optimizer-state file {shard} is truncated or damaged"):
        check_optimizer_files(str(folder), saved, ParallelContext.single())

    assert latest_tag(str(copy)) == "global_step2"
    (copy / "latest").write_text("\n")
    with pytest.raises(ConfigError, match=r"latest is empty, so it names no checkpoint \(checkpoint folders"):
        latest_tag(str(copy))
    (copy / "latest").write_text("global_step7")
    with pytest.raises(ConfigError, match="names global_step7, but .*global_step7 does not exist"):
        latest_tag(str(copy))
    (copy / "latest").unlink()
    assert latest_tag(str(copy)) is None  # no 'latest': a fresh start, as in Megatron


@pytest.mark.parametrize(
    "saved_stage, stage, loads_optimizer, refused",
    [
        (1, 2, True, False),
        (2, 1, True, False),
        (1, 0, True, True),
        (0, 1, True, True),
        (1, 0, False, False),
        (1, 3, False, True),
        (3, 1, False, True),
    ],
)
def test_zero_stage_rules(tmp_path, saved_stage, stage, loads_optimizer, refused):
    saved = dataclasses.asdict(build(tmp_path, {"--zero-stage": str(saved_stage), "--fp16": None}, ds={}))
    config = build(tmp_path, {"--zero-stage": str(stage), "--fp16": None}, ds={})
    if refused:
        with pytest.raises(
            ConfigError, match=f"saved with ZeRO stage {saved_stage}, this run uses stage {stage}"
        ):
            check_zero_layout(saved, "ckpt/global_step2", config, loads_optimizer)
    else:
        check_zero_layout(saved, "ckpt/global_step2", config, loads_optimizer)


@pytest.mark.parametrize(
    "stage, loads_optimizer, refused", [(1, True, True), (1, False, False), (3, False, True)]
)
def test_data_parallel_size_rules(tmp_path, stage, loads_optimizer, refused):
    changes = {"--zero-stage": str(stage), "--fp16": None}
    saved = dataclasses.asdict(build(tmp_path, changes, ds={}, world_size=16))
    config = build(tmp_path, changes, ds={}, world_size=8)
    if refused:
        with pytest.raises(ConfigError, match="data-parallel size 16, this run has 8"):
            check_zero_layout(saved, "ckpt/global_step2", config, loads_optimizer)
    else:
        check_zero_layout(saved, "ckpt/global_step2", config, loads_optimizer)


def test_each_changed_setting_is_one_log_line(tmp_path, caplog):
    saved = dataclasses.asdict(build(tmp_path, ds={}))
    changes = {"--lr": "6e-4", "--train-iters": "600000", "--global-batch-size": "512"}
    config = build(tmp_path, changes, ds={})
    with caplog.at_level(logging.INFO, logger="megatron"):
        log_changed_settings(saved, config)
    assert [record.getMessage() for record in caplog.records] == [
        "resume: --global-batch-size changed: 256 (checkpoint) -> 512 (this run)",
        "resume: --train-iters changed: 500000 (checkpoint) -> 600000 (this run)",
        "resume: --lr changed: 0.0003 (checkpoint) -> 0.0006 (this run)",
    ]


@pytest.mark.slow
def test_bf16_zero_1_resumes_where_the_straight_run_goes_on(gpt_data_prefix, tmp_path):
    """bf16 at ZeRO stage 1 runs DeepSpeed's BF16_Optimizer, whose shards are named bf16_*: the shard check
    finds them (it once looked for the ZeRO optimizer's name and refused every such resume)."""
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--bf16", "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1, bf16={"enabled": True})),
    ]  # fmt: skip
    straight = run_pretrain(flags).check()
    save = tmp_path / "ckpt"
    run_pretrain(flags + ["--save", str(save), "--exit-interval", "2"]).check()
    assert (save / "global_step2" / f"bf16_{SHARD.format(0)}").is_file()
    resumed = run_pretrain(flags + ["--load", str(save)]).check()
    assert resumed.loss_strings == {3: straight.loss_strings[3], 4: straight.loss_strings[4]}
