"""What the cluster tests share: the run every launch trains, and installing a Debian package when a
launcher is missing (CI runs as root with apt; elsewhere the test is skipped, saying why)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.launch import tiny_model_flags, write_ds_config


def cluster_run_flags(data_prefix: str, folder: Path, train_iters: int) -> list[str]:
    """The tiny GPT on two data-parallel ranks, ZeRO 1 (each rank writes its own optimizer shard)."""
    return tiny_model_flags(data_prefix, train_iters=train_iters) + [
        "--deepspeed_config", str(write_ds_config(folder / "ds.json", 1)),
    ]  # fmt: skip


def require_commands(commands: list[str], packages: list[str]) -> None:
    """Install ``packages`` with apt when one of ``commands`` is missing; skip when that cannot be done."""
    if all(shutil.which(command) for command in commands):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(commands)} missing and not root with apt-get: install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    missing = [command for command in commands if not shutil.which(command)]
    assert not missing, f"apt-get installed {packages} but {missing} still missing"
