"""A real one-node SLURM cluster on this machine for the tests: Debian's slurm-wlm and munge (installed
with apt when ``sbatch`` is missing; CI runs as root), a generated ``slurm.conf`` in a temporary folder,
``munged``, ``slurmctld`` and ``slurmd`` started and, at the end, stopped by the pids they wrote.

The configuration needs neither cgroups nor systemd (process tracking through /proc, no task
plugin), runs both daemons as root on ports of their own and oversubscribes the cores, so a 2-task job
fits a 2-core machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.cluster.common import require_commands
from tests.launch import child_env, free_port

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: ``env`` points the SLURM commands at its configuration."""

    folder: Path
    env: dict[str, str]

    def sbatch(
        self, script: Path, options: list[str], arguments: list[str], env: dict[str, str] | None = None
    ) -> int:
        """Submit ``script`` with sbatch ``options`` and the script's ``arguments``, from the repository
        root; returns the job id. A refused submission fails with sbatch's message."""
        completed = subprocess.run(
            ["sbatch", "--parsable", *options, str(script), *arguments],
            env={**(env or child_env()), **self.env},
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
        )
        assert completed.returncode == 0, f"sbatch failed: {completed.stderr}"
        return int(completed.stdout.strip().split(";")[0])

    def command(self, *argv: str) -> str:
        return subprocess.run(argv, env=child_env(**self.env), capture_output=True, text=True).stdout

    def job_field(self, job_id: int, field: str) -> str:
        """A field of ``scontrol show job`` (``JobState``, ``Reason``, ``Restarts``, ``ExitCode``...)."""
        match = re.search(rf"\b{field}=(\S*)", self.command("scontrol", "show", "job", str(job_id)))
        return match.group(1) if match else ""

    def wait_state(self, job_id: int, states: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} not in {states} after {timeout} s:\n"
            + self.command("scontrol", "show", "job", str(job_id))
        )


def _write_config(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    memory_mb = int(psutil.virtual_memory().available / 2**20 * 0.8)
    settings = {
        "ClusterName": "megatron-tests",
        "SlurmctldHost": host,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MpiDefault": "none",
        "ReturnToService": "2",
        "SlurmctldPort": str(free_port()),
        "SlurmdPort": str(free_port()),
        "StateSaveLocation": str(folder / "state"),
        "SlurmdSpoolDir": str(folder / "spool"),
        "SlurmctldPidFile": str(folder / "slurmctld.pid"),
        "SlurmdPidFile": str(folder / "slurmd.pid"),
        "SlurmctldLogFile": str(folder / "slurmctld.log"),
        "SlurmdLogFile": str(folder / "slurmd.log"),
        "SchedulerParameters": "sched_interval=1",
        "KillWait": "30",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    path = folder / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_munge() -> int | None:
    """Start munged unless one answers already; returns the pid of the one started here."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return None
    if not MUNGE_KEY.exists():
        MUNGE_KEY.write_bytes(os.urandom(1024))
        subprocess.run(["chown", "munge:munge", str(MUNGE_KEY)], check=True)
        MUNGE_KEY.chmod(0o400)
    MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "munge:munge", str(MUNGE_PID.parent)], check=True)
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
    return int(MUNGE_PID.read_text())


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        psutil.Process(pid).wait(timeout=15)
    except psutil.Error:
        pass


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node cluster, idle and ready for ``sbatch``; stopped at the end of the session."""
    require_commands(["sbatch", "slurmctld", "slurmd", "munged"], ["slurm-wlm", "munge"])
    folder = tmp_path_factory.mktemp("slurm")
    config = _write_config(folder)
    env = {"SLURM_CONF": str(config)}
    munge_pid = _start_munge()
    pids: list[int] = []
    try:
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([daemon, "-f", str(config)], env=child_env(**env), check=True)
            deadline = time.monotonic() + 20
            while not (folder / pid_file).exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            pids.append(int((folder / pid_file).read_text()))
        cluster = SlurmCluster(folder, env)
        deadline = time.monotonic() + 60
        while "idle" not in cluster.command("sinfo", "-h", "-o", "%t"):
            assert time.monotonic() < deadline, (
                cluster.command("sinfo") + (folder / "slurmctld.log").read_text()
            )
            time.sleep(0.5)
        yield cluster
    finally:
        for pid in reversed(pids):
            _stop(pid)
        if munge_pid is not None:
            _stop(munge_pid)
