"""--save is checked before training: a folder holding another run's checkpoints, or one that cannot be
written, stops the run at start with one line; a disk too full for the next checkpoint, or a failed write,
stops it before the trackers move, with the previous checkpoint intact."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron.checkpointing import TrainState, save_checkpoint, save_guards
from megatron.config.errors import ConfigError
from megatron.config.schema import CheckpointConfig
from tests.config.recipe import build
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config


def _checkpoint_at(folder: Path, iteration: int) -> Path:
    """The trackers and tag folder of a saved checkpoint (contents stand in for the real files)."""
    tag = folder / f"global_step{iteration}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (folder / "latest").write_text(tag.name)
    (folder / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return tag


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "already holds checkpoints (newest: iteration 30) that this run does not --load"),
        ({"load": "elsewhere"}, "Resume them with --load"),
        ({"same_load": True, "finetune": True}, "--finetune counts iterations from zero"),
        ({"same_load": True, "reset_iteration": True}, "--reset-iteration counts iterations from zero"),
    ],
)
def test_occupied_save_folder_is_refused(tmp_path, options, message):
    save = tmp_path / "ckpt"
    _checkpoint_at(save, 10)
    _checkpoint_at(save, 30)
    options = dict(options)
    load = str(save / ".." / "ckpt") if options.pop("same_load", False) else options.pop("load", None)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        save_guards.check_save_folder(CheckpointConfig(save=str(save), load=load, **options))
    assert "--overwrite-save" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "setup",
    [
        lambda save: None,  # nothing there yet: created
        lambda save: save.mkdir(),  # empty folder
        lambda save: (save.mkdir(), (save / "notes.txt").write_text("x")),  # no checkpoint in it
    ],
)
def test_free_save_folders_are_accepted(tmp_path, setup):
    save = tmp_path / "ckpt"
    setup(save)
    save_guards.check_save_folder(CheckpointConfig(save=str(save)))
    assert save.is_dir() and not any(path.name.startswith(".write_check") for path in save.iterdir())


def test_resuming_or_overwriting_deliberately_is_accepted(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint_at(save, 10)
    save_guards.check_save_folder(CheckpointConfig(save=str(save), load=str(save)))
    save_guards.check_save_folder(CheckpointConfig(save=str(save), overwrite_save=True))
    save_guards.check_save_folder(
        CheckpointConfig(save=str(save), load=str(save), finetune=True, overwrite_save=True)
    )


def test_unwritable_save_folders_are_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=f"--save {a_file} is a file"):
        save_guards.check_save_folder(CheckpointConfig(save=str(a_file)))
    under = a_file / "ckpt" / "run1"
    with pytest.raises(ConfigError, match=f"--save {under} lies under {a_file}, which is a file"):
        save_guards.check_save_folder(CheckpointConfig(save=str(under)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0555) folder regardless")
def test_read_only_save_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"cannot be written \(Permission denied\)"):
            save_guards.check_save_folder(CheckpointConfig(save=str(locked / "ckpt")))
    finally:
        locked.chmod(0o755)


class _FakeEngine:
    """What save_checkpoint uses of a DeepSpeed engine; its save writes one file or fails like a full disk."""

    def __init__(self, fail: BaseException | None = None):
        self.module = torch.nn.Linear(1000, 1000)  # 1,001,000 float32 parameters
        self.device = torch.device("cpu")
        self.fail = fail
        self.saved: list[str] = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        if self.fail is not None:
            raise self.fail
        os.makedirs(os.path.join(save_dir, tag))
        self.saved.append(tag)


def _save(engine: _FakeEngine, save: Path, tmp_path: Path, iteration: int = 40) -> None:
    config = build(tmp_path, {"--fp16": None, "--save": str(save), "--load": None}, ds={}, world_size=1)
    scheduler = SimpleNamespace(state_dict=lambda: {"num_samples": 0})
    save_checkpoint(engine, str(save), TrainState(iteration=iteration), scheduler, config)


def test_disk_full_stops_before_the_save(tmp_path, monkeypatch):
    save = tmp_path / "ckpt"
    engine = _FakeEngine()
    # No previous checkpoint: 1,001,000 parameters x (4 weight + 4 master + 8 Adam) bytes = 16.0 MB.
    monkeypatch.setattr(save_guards, "disk_usage", lambda path: SimpleNamespace(free=15_000_000))
    with pytest.raises(
        ConfigError, match=r"disk full: global_step40 needs ~0\.016 GB, 0\.015 GB free on"
    ) as err:
        _save(engine, save, tmp_path)
    assert "\n" not in str(err.value) and engine.saved == []
    monkeypatch.setattr(save_guards, "disk_usage", lambda path: SimpleNamespace(free=17_000_000))
    _save(engine, save, tmp_path)
    assert engine.saved == ["global_step40"] and (save / "latest").read_text() == "global_step40"

    # Now the previous checkpoint's size on disk is the estimate.
    (save / "global_step40" / "shard.pt").write_bytes(b"x" * 20_000_000)
    before = _snapshot(save)
    with pytest.raises(ConfigError, match=r"global_step50 needs ~0\.02 GB, 0\.017 GB free"):
        _save(engine, save, tmp_path, iteration=50)
    assert _snapshot(save) == before


@pytest.mark.parametrize(
    "failure, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device", "x.pt"), r"\(No space left on device: x\.pt\)"),
        (OSError(errno.EROFS, "Read-only file system"), r"\(Read-only file system: .*ckpt\)"),
        (
            RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
            r"\(PytorchStreamWriter failed writing file data/0: file write failed; 1e\+03 GB free there\)",
        ),
    ],
)
def test_failed_write_is_one_line_and_keeps_the_trackers(tmp_path, monkeypatch, failure, cause):
    save = tmp_path / "ckpt"
    _checkpoint_at(save, 10)
    monkeypatch.setattr(save_guards, "disk_usage", lambda path: SimpleNamespace(free=10**12))
    with pytest.raises(ConfigError, match=f"--save {save}: writing global_step40 failed {cause}") as error:
        _save(_FakeEngine(fail=failure), save, tmp_path)
    assert "previous checkpoint is intact" in str(error.value)
    assert (save / "latest").read_text() == "global_step10"


def test_other_save_errors_are_not_hidden(tmp_path, monkeypatch):
    monkeypatch.setattr(save_guards, "disk_usage", lambda path: SimpleNamespace(free=10**12))
    with pytest.raises(RuntimeError, match="a bug"):
        _save(_FakeEngine(fail=RuntimeError("a bug")), tmp_path / "ckpt", tmp_path)


@pytest.mark.slow
def test_pretrain_refuses_occupied_and_unwritable_save_at_start(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, 2) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)), "--save", str(save),
    ]  # fmt: skip
    run_pretrain(flags, launcher="python").check()
    before = _snapshot(save)
    again = run_pretrain(flags, launcher="python")  # a new run into the same folder, without --load
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: --save {save} already holds checkpoints")
    assert "newest: iteration 2" in again.stderr and not again.losses
    assert _snapshot(save) == before

    under_a_file = save / "latest" / "ckpt"
    flags[flags.index("--save") + 1] = str(under_a_file)
    unwritable = run_pretrain(flags, launcher="python")
    assert unwritable.returncode == 2
    assert f"error: --save {under_a_file} lies under {save / 'latest'}, which is a file" in unwritable.stderr
    assert not unwritable.losses
