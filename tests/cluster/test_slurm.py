"""examples_deepspeed/slurm/ on a real one-node SLURM cluster (tests/cluster/slurm_cluster.py), 2 ranks
on CPU: the srun-direct job trains and saves; the same job sent the time-limit warning (USR1 to its
batch shell) saves, requeues itself and, started again, resumes from that checkpoint with the losses of
the job that ran straight through, and so does the torchrun job; the deepspeed-launcher job trains with
those losses too."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.cluster.common import TINY_GPT_SCRIPT_FLAGS, losses, script_env
from tests.cluster.slurm_cluster import SlurmCluster
from tests.launch import REPO_ROOT

pytestmark = pytest.mark.slow

SLURM_EXAMPLES = REPO_ROOT / "examples_deepspeed" / "slurm"
TRAIN_ITERS = 40
STOPPED = re.compile(r"stopped on SIGUSR1 after iteration (\d+); checkpoint saved to")


def submit(
    cluster: SlurmCluster,
    script: str,
    data_prefix: str,
    folder: Path,
    name: str,
    tasks: tuple[str, ...] | list[str] = ("--ntasks-per-node=2",),
) -> tuple[int, Path]:
    """Submit one of the example scripts for the tiny GPT; its checkpoints go to ``folder/name``."""
    log = folder / f"{name}.out"
    options = [f"--job-name={name}", *tasks, f"--output={log}", "--time=00:10:00"]
    env = script_env(data_prefix, TRAIN_ITERS, CHECKPOINT_PATH=str(folder / name), GPUS_PER_NODE="2")
    job_id = cluster.sbatch(SLURM_EXAMPLES / script, options, TINY_GPT_SCRIPT_FLAGS, env=env)
    return job_id, log


def wait_for_line(log: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text() if log.exists() else "")
        if match:
            return match
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in {log} after {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, gpt_data_prefix, tmp_path_factory) -> dict[int, str]:
    """The srun-direct job trained to the end without interruption: its losses, after checking its log
    and checkpoint."""
    folder = tmp_path_factory.mktemp("straight")
    job, log = submit(slurm_cluster, "pretrain_gpt_srun.sbatch", gpt_data_prefix, folder, "straight")
    assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED"}, timeout=180) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "2 rank(s), started by srun (SLURM_PROCID/SLURM_NTASKS)" in text
    assert sorted(losses(text)) == list(range(1, TRAIN_ITERS + 1))
    assert float(losses(text)[TRAIN_ITERS]) < float(losses(text)[1]) - 1
    assert (folder / "straight" / "latest").read_text() == f"global_step{TRAIN_ITERS}"
    assert len(list((folder / "straight" / f"global_step{TRAIN_ITERS}").glob("*optim_states.pt"))) == 2
    return losses(text)


@pytest.mark.parametrize(
    "script, tasks, started_by",
    [
        ("pretrain_gpt_srun.sbatch", ["--ntasks-per-node=2"], "srun"),
        ("pretrain_gpt_torchrun.sbatch", ["--ntasks-per-node=1", "--cpus-per-task=2"], "a launcher"),
    ],
)
def test_job_saves_on_the_time_limit_warning_requeues_and_resumes(
    slurm_cluster, gpt_data_prefix, tmp_path, straight_run, script, tasks, started_by
):
    """USR1 reaches the ranks through the batch shell's trap (and, under torchrun, through torchrun)."""
    job, log = submit(slurm_cluster, script, gpt_data_prefix, tmp_path, "warned", tasks)
    wait_for_line(log, r"iteration\s+3/", timeout=120)
    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job))
    wait_for_line(log, "requeueing job", timeout=60)
    first_part = log.read_text()
    assert f"2 rank(s), started by {started_by}" in first_part
    stop = int(STOPPED.search(first_part).group(1))
    assert stop < TRAIN_ITERS
    if script == "pretrain_gpt_srun.sbatch":  # srun returns the ranks' status; torchrun its own
        assert "training step exited with status 4" in first_part
    assert (tmp_path / "warned" / "latest").read_text() == f"global_step{stop}"

    # Slurm holds a requeued job back for a while (reason BeginTime): let it start now, but not within the
    # second its first run's credential was revoked in, which slurmd compares at one-second resolution
    # ("Killing non-startable batch job: Job credential revoked").
    slurm_cluster.wait_state(job, {"PENDING"}, timeout=60)
    time.sleep(2)
    slurm_cluster.command("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = slurm_cluster.wait_state(job, {"COMPLETED", "FAILED"}, timeout=180)
    assert state == "COMPLETED", log.read_text()[-6000:]
    resumed = log.read_text()[len(first_part) :]
    assert "(restart 1)" in resumed
    assert sorted(losses(resumed)) == list(range(stop + 1, TRAIN_ITERS + 1))
    assert {**losses(first_part), **losses(resumed)} == straight_run
    assert (tmp_path / "warned" / "latest").read_text() == f"global_step{TRAIN_ITERS}"


@pytest.mark.parametrize(
    "script, options, started_by",
    [("pretrain_gpt_deepspeed.sbatch", ["--ntasks-per-node=2"], "srun")],
)
def test_deepspeed_launcher_job_trains_as_srun_does(
    slurm_cluster, gpt_data_prefix, tmp_path, straight_run, script, options, started_by
):
    job, log = submit(slurm_cluster, script, gpt_data_prefix, tmp_path, "job", options)
    assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED"}, timeout=180) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert f"2 rank(s), started by {started_by}" in text
    assert losses(text) == straight_run
