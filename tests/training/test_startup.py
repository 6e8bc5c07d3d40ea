"""What a new user meets before the first iteration: the rendezvous port, a precision the device lacks, the
first-run build of DeepSpeed's CPU op, and the installer that does nothing when all is in place."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from deepspeed.accelerator import get_accelerator

from megatron.config.build import check_device_precision
from megatron.config.errors import ConfigError
from megatron.training import distributed
from tests.config.recipe import RECIPE_DS, build
from tests.launch import REPO_ROOT, free_port, run_pretrain, tiny_model_flags, write_ds_config

sys.path.insert(0, str(REPO_ROOT / "tools"))

import check_install  # noqa: E402


@contextmanager
def listening(port: int):
    """Something else holding ``port`` (or the port already taken, which is as good)."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
        except OSError:
            pass
        yield


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["python", "deepspeed"])
def test_a_busy_port_is_one_line(gpt_data_prefix, tmp_path, launcher):
    port = free_port()
    flags = tiny_model_flags(gpt_data_prefix, 2)
    flags += ["--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0))]
    with listening(port):
        result = run_pretrain(flags, launcher=launcher, port=port)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"MASTER_PORT {port} on 127.0.0.1 is already in use" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_one_process_without_a_launcher_finds_a_free_port(gpt_data_prefix, tmp_path, monkeypatch):
    """Without MASTER_PORT, a busy 29500 (the launchers' default) does not matter to a group of one."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    flags = tiny_model_flags(gpt_data_prefix, 2)
    flags += ["--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0))]
    with listening(29500):
        run_pretrain(flags, launcher="python", port=None).check()


@pytest.mark.parametrize(
    ("precision", "probe"), [("--fp16", "is_fp16_supported"), ("--bf16", "is_bf16_supported")]
)
def test_a_precision_the_device_lacks_is_refused(tmp_path, monkeypatch, precision, probe):
    ds = {key: value for key, value in RECIPE_DS.items() if key != "fp16"}
    config = build(tmp_path, {"--fp16": None, precision: True}, ds=ds)
    monkeypatch.setattr(type(get_accelerator()), probe, lambda self: True)
    check_device_precision(config)
    monkeypatch.setattr(type(get_accelerator()), probe, lambda self: False)
    with pytest.raises(ConfigError, match=f"{precision} .*PyTorch has no {precision[2:]} kernels for this"):
        check_device_precision(config)


def test_the_first_op_build_announces_itself(tmp_path, monkeypatch, caplog):
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        pytest.skip("DeepSpeed builds this op on CPUs only")
    build_directory = lambda name, verbose: str(tmp_path)  # noqa: E731
    monkeypatch.setattr(distributed.cpp_extension, "_get_build_directory", build_directory)
    with caplog.at_level(logging.INFO, logger="megatron"):
        distributed.announce_op_build(accelerator)
    assert "DeepSpeed is compiling its CPU communication op" in caplog.text
    caplog.clear()
    name = accelerator.create_op_builder("ShareMemCommBuilder").name
    (tmp_path / f"{name}.so").touch()
    with caplog.at_level(logging.INFO, logger="megatron"):
        distributed.announce_op_build(accelerator)
    assert caplog.text == ""


def test_the_installer_does_nothing_when_all_is_installed():
    """The test command installed the test extras before this ran: a second install is a no-op."""
    completed = subprocess.run(
        ["bash", "tools/install.sh", "test"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and completed.stdout == "", completed.stdout + completed.stderr


def test_missing_or_old_requirements_are_found(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["numpy>=1", "surely-not-installed-package"]\n'
        '[project.optional-dependencies]\nold = ["pytest<1"]\n'
    )
    monkeypatch.setattr(check_install, "REPO_ROOT", Path(tmp_path))
    unmet = check_install.unmet_requirements(["old"])
    assert "surely-not-installed-package" in unmet
    assert any(line.startswith("pytest<1 (found ") for line in unmet)
    assert not any(line.startswith("numpy") for line in unmet)
    assert any(str(tmp_path) in line for line in unmet)  # not installed from that checkout
    with pytest.raises(ValueError, match="no extra nope"):
        check_install.unmet_requirements(["nope"])
