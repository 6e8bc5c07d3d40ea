"""What the cluster tests share: the run every launch trains, and installing a Debian package when a
launcher is missing (CI runs as root with apt; elsewhere the test is skipped, saying why)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.launch import LOSS_PATTERN, REPO_ROOT, child_env, tiny_model_flags, write_ds_config

# The tiny GPT of tests/launch.py through the variables of examples_deepspeed/gpt_job_args.sh (fp32 on
# CPU), and the flags that script leaves at pretrain_gpt.py's defaults, passed as the script's arguments.
TINY_GPT_VARIABLES = {
    "NUM_LAYERS": "2", "HIDDEN_SIZE": "64", "NUM_ATTN_HEADS": "4", "SEQ_LENGTH": "32",
    "MICRO_BATCH_SIZE": "2", "GLOBAL_BATCH_SIZE": "8", "LR": "1e-3", "MIN_LR": "1e-4",
    "LR_WARMUP_ITERS": "2", "BF16": "0", "SPLIT": "90,10,0", "EVAL_ITERS": "2", "LOG_INTERVAL": "1",
}  # fmt: skip
TINY_GPT_SCRIPT_FLAGS = [
    "--attention-dropout",
    "0",
    "--hidden-dropout",
    "0",
    "--num-workers",
    "0",
    "--seed",
    "1234",
]


def script_env(data_prefix: str, train_iters: int, **variables: str) -> dict[str, str]:
    """The environment in which an example script trains the tiny GPT on ``data_prefix``."""
    return {
        **child_env(),
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        **TINY_GPT_VARIABLES,
        "DATA_PATH": data_prefix,
        "TRAIN_ITERS": str(train_iters),
        **variables,
    }


def losses(log: str) -> dict[int, str]:
    """The logged lm loss of each iteration, as printed (so that runs compare exactly)."""
    return {int(iteration): loss for iteration, loss in LOSS_PATTERN.findall(log)}


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
