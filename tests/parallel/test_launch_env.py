"""Rank discovery from each launcher's variables, as pure functions of an environment (the real launches
are in tests/cluster/)."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from megatron.parallel.launch_env import (
    DEFAULT_MASTER_PORT,
    LaunchEnv,
    discover,
    export_launch_env,
    first_host,
)

# What srun sets in task 3 of a 4-task step over two nodes (a subset of the real variables).
SRUN_TASK = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_STEP_NODELIST": "gpu[007-008]",
}  # fmt: skip
# What OpenMPI's mpirun sets in rank 1 of 2 on one node.
MPIRUN_RANK = {
    "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}  # fmt: skip


def test_nothing_set_is_one_process():
    assert discover({}) == LaunchEnv("none", 0, 1, 0)
    env: dict[str, str] = {}
    export_launch_env(discover(env), env)
    assert env == {}  # initialize_distributed picks the single-process values and a free port


def test_torchrun_and_deepspeed_variables_are_taken_as_they_are():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "6000"}
    assert discover(env) == LaunchEnv("torch", 5, 8, 1, "n1", 6000)


def test_torch_variables_win_over_slurm_ones_under_srun_torchrun():
    env = {**SRUN_TASK, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert discover(env).launcher == "torch"
    assert (discover(env).rank, discover(env).world_size) == (1, 2)


def test_srun_task_gets_rank_world_and_first_node_as_master():
    launch = discover(SRUN_TASK)
    assert launch == LaunchEnv("slurm", 3, 4, 1, "gpu007", launch.master_port)
    assert launch.master_port == discover({**SRUN_TASK, "SLURM_PROCID": "0"}).master_port  # same for all
    assert discover({**SRUN_TASK, "MASTER_PORT": "7000", "MASTER_ADDR": "head"}).master_port == 7000
    env = dict(SRUN_TASK)
    export_launch_env(launch, env)
    assert {name: env[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007",
    }  # fmt: skip


def test_sbatch_shell_outside_a_step_is_one_process():
    """The batch script has SLURM_PROCID=0 and the job's task count, but is no step of ranks."""
    batch = {name: value for name, value in SRUN_TASK.items() if name != "SLURM_STEP_ID"}
    assert discover({**batch, "SLURM_PROCID": "0"}).world_size == 1


def test_openmpi_single_node_rendezvous_on_loopback():
    assert discover(MPIRUN_RANK) == LaunchEnv("openmpi", 1, 2, 1, "127.0.0.1", DEFAULT_MASTER_PORT)
    assert discover({**MPIRUN_RANK, "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}).master_addr == "h0"


def test_openmpi_on_several_nodes_needs_master_addr():
    env = {**MPIRUN_RANK, "OMPI_COMM_WORLD_SIZE": "4"}
    with pytest.raises(ConfigError, match="-x MASTER_ADDR="):
        discover(env)


def test_azureml_master_node_variables():
    multi = {**MPIRUN_RANK, "OMPI_COMM_WORLD_SIZE": "16", "AZ_BATCH_MASTER_NODE": "10.0.0.4:6105"}
    assert discover(multi) == LaunchEnv("azureml", 1, 16, 1, "10.0.0.4", 6105)
    single = {**MPIRUN_RANK, "AZ_BATCHAI_MPI_MASTER_NODE": "10.0.0.5"}
    assert discover(single).master_addr == "10.0.0.5"


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("node[07-09,12],gpu3", "node07"),
        ("gpu3,node[07-09]", "gpu3"),
        ("rack[1-2]-n[4,6]", "rack1-n4"),
        ("a-[0003-0010]", "a-0003"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "eight"}, "WORLD_SIZE='eight'"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"),
        ({**SRUN_TASK, "SLURM_PROCID": "4"}, "SLURM_PROCID=4"),
        ({**MPIRUN_RANK, "OMPI_COMM_WORLD_SIZE": "x"}, "OMPI_COMM_WORLD_SIZE='x'"),
        ({"WORLD_SIZE": "1", "MASTER_PORT": "99999"}, "MASTER_PORT"),
        ({**SRUN_TASK, "SLURM_JOB_NODELIST": "", "SLURM_STEP_NODELIST": ""}, "set MASTER_ADDR"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        discover(env)
