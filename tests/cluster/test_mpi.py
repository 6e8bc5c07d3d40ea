"""``mpirun -np 2 python pretrain_gpt.py`` (OpenMPI, no other launcher): ranks come from
OMPI_COMM_WORLD_* and the run trains exactly as torchrun's of the same flags."""

from __future__ import annotations

import sys

import pytest

from tests.cluster.common import cluster_run_flags, require_commands
from tests.launch import REPO_ROOT, RunResult, free_port, launch, pretrain_command, run_pretrain

pytestmark = pytest.mark.slow


def test_mpirun_matches_torchrun(gpt_data_prefix, tmp_path):
    require_commands(["mpirun"], ["openmpi-bin"])
    flags = cluster_run_flags(gpt_data_prefix, tmp_path, train_iters=4)
    reference = run_pretrain(flags, nproc=2).check()

    _, env = pretrain_command(flags, nproc=2)
    env = {**env, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    env["MASTER_PORT"] = str(free_port())  # mpirun passes its environment on to the ranks of this node
    command = [
        "mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none",
        sys.executable, str(REPO_ROOT / "pretrain_gpt.py"), *flags,
    ]  # fmt: skip
    completed = launch(command, env, timeout=300)
    result = RunResult(completed.returncode, completed.stdout, completed.stderr).check()

    assert "2 rank(s), started by mpirun (OMPI_COMM_WORLD_*)" in result.stdout
    assert result.loss_strings == reference.loss_strings
    assert sorted(result.losses) == [1, 2, 3, 4]
