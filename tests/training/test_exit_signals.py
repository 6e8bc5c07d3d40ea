"""Signals save work and a dead launcher stops its training processes: real runs of pretrain_gpt.py, alone
and under the deepspeed launcher with two gloo ranks, signalled mid-training."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import psutil
import pytest

from megatron.training.exit_signals import EXIT_STATUS, ExitSignals
from megatron.training.launcher_watch import is_launcher
from tests.launch import (
    REPO_ROOT,
    LiveRun,
    RunResult,
    pretrain_command,
    run_pretrain,
    tiny_model_flags,
    write_ds_config,
)

ITERATION = r"iteration\s+{}/"
STOPPED = r"stopped on (\w+) after iteration (\d+); checkpoint saved to"


def endless_run_flags(data_prefix: str, tmp_path, save) -> list[str]:
    """Training that only a signal ends (ZeRO 1, so that each rank writes its own optimizer shard)."""
    return tiny_model_flags(data_prefix, train_iters=100_000) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)), "--save", str(save),
    ]  # fmt: skip


def interrupted_run(
    flags: list[str],
    act: Callable[[LiveRun], None],
    nproc: int = 1,
    launcher: str = "python",
    wrap: list[str] | None = None,
) -> RunResult:
    """Start a run (``wrap`` is put before its command), ``act`` on it once it has logged iteration 3, and
    return how it ended; whatever is left of it is killed after."""
    command, env = pretrain_command(flags, nproc, launcher)
    run = LiveRun([*(wrap or []), *command], env)
    try:
        run.wait_for(ITERATION.format(3))
        act(run)
        return run.wait()
    finally:
        run.kill()


def stopped_at(result: RunResult, signal_name: str) -> int:
    """The iteration after which the run says it stopped on ``signal_name``."""
    match = re.search(STOPPED, result.stdout)
    assert match, result.stdout[-3000:]
    assert match.group(1) == signal_name
    return int(match.group(2))


def assert_saved_at(save, iteration: int, ranks: int = 1) -> None:
    """The stop's checkpoint is the newest, with every rank's optimizer shard in it."""
    assert (save / "latest").read_text() == f"global_step{iteration}"
    shards = sorted(path.name for path in (save / f"global_step{iteration}").glob("*optim_states.pt"))
    assert len(shards) == ranks, shards


def processes_of(run: LiveRun, part: str) -> list[psutil.Process]:
    """The run's processes (below its first one) whose command line holds ``part``."""
    return [
        process
        for process in psutil.Process(run.process.pid).children(recursive=True)
        if part in " ".join(process.cmdline())
    ]


def assert_all_gone(processes: list[psutil.Process], timeout: float = 60) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"still running: {[process.pid for process in alive]}"


def test_flag_defaults_on_and_turns_off():
    from megatron.config.arguments import parse_args
    from megatron.config.schedules import duration_config

    base = ["--train-iters", "4"]
    assert duration_config(parse_args(base)).exit_signal_handler
    assert duration_config(parse_args(["--exit-signal-handler", *base])).exit_signal_handler
    assert not duration_config(parse_args(["--no-exit-signal-handler", *base])).exit_signal_handler


def test_handlers_and_wakeup_fd_are_put_back():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with ExitSignals() as signals:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert signals.received is None
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # none left installed
    with ExitSignals(enabled=False):
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]


def test_signals_other_code_handles_do_not_stop_the_run():
    """torch.compile's worker processes end while training runs, and a Python SIGCHLD handler (as
    asyncio's child watcher installs) makes their SIGCHLD reach the wakeup socket too: it must not count."""
    with ExitSignals() as signals:
        previous = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            os.kill(os.getpid(), signal.SIGCHLD)
            time.sleep(0.2)
            assert signals.received is None
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while signals.received is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert signals.received == "SIGUSR1"
        finally:
            signal.signal(signal.SIGCHLD, previous)


def test_a_signal_repeated_at_once_is_one_and_a_later_one_ends_the_process():
    """The terminal's Ctrl-C plus the launcher's forwarded SIGTERM count once; a signal after that window
    ends the process while its main thread is blocked in C and never returns to Python (as a rank waiting
    in a collective for a dead peer): relocking a normal pthread mutex waits forever, through signals."""
    program = textwrap.dedent(
        """
        import ctypes, time
        from megatron.training.exit_signals import ExitSignals
        with ExitSignals(same_event_seconds=1.0) as signals:
            print("ready", flush=True)
            while signals.received is None:
                time.sleep(0.01)
            print("received", signals.received, flush=True)
            mutex = ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER, a normal mutex
            libc = ctypes.CDLL(None)
            libc.pthread_mutex_lock(mutex)
            libc.pthread_mutex_lock(mutex)  # locked already: waits forever, through signals
            print("the main thread came back", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().split() in (["received", "SIGINT"], ["received", "SIGTERM"])
        time.sleep(0.3)
        assert process.poll() is None  # the SIGTERM fell within the same event
        time.sleep(1.0)
        process.send_signal(signal.SIGUSR1)
        assert process.wait(timeout=10) == 128 + signal.SIGUSR1
    finally:
        process.kill()


@pytest.mark.parametrize(
    "cmdline, launcher",
    [
        (["/usr/bin/python3", "/usr/local/bin/deepspeed", "--num_gpus", "2", "pretrain_gpt.py"], True),
        (["/usr/bin/python3", "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30="], True),
        (["/usr/bin/python3", "/usr/local/bin/torchrun", "--nproc_per_node", "2", "train.py"], True),
        (["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py"], True),
        (["/bin/bash", "examples_deepspeed/quickstart_gpt.sh"], False),
        (["/usr/bin/python3", "-m", "pytest", "tests"], False),
        (["slurmstepd: [12.0]"], False),
    ],
)
def test_launcher_recognition(cmdline, launcher):
    assert is_launcher(cmdline) is launcher


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes_from_it(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    flags = endless_run_flags(gpt_data_prefix, tmp_path, save)
    result = interrupted_run(flags, lambda run: run.process.send_signal(signal.SIGTERM))
    assert result.returncode == EXIT_STATUS, result.stdout[-3000:]
    iteration = stopped_at(result, "SIGTERM")
    assert max(result.losses) == iteration
    assert_saved_at(save, iteration)
    # What a user runs next: the same command with --load (--exit-interval only ends this test's run).
    resumed = run_pretrain(
        flags + ["--load", str(save), "--exit-interval", str(iteration + 2)], launcher="python"
    )
    assert sorted(resumed.check().losses) == [iteration + 1, iteration + 2]


@pytest.mark.slow
def test_without_the_handler_sigterm_keeps_its_default_action(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    flags = endless_run_flags(gpt_data_prefix, tmp_path, save) + ["--no-exit-signal-handler"]
    result = interrupted_run(flags, lambda run: run.process.send_signal(signal.SIGTERM))
    assert result.returncode == -signal.SIGTERM
    assert not (save / "latest").exists()


@pytest.mark.slow
def test_sigusr1_to_one_rank_stops_both_after_the_same_iteration(gpt_data_prefix, tmp_path):
    """SLURM's warning signal reaching one rank only: the ranks agree and both save."""
    save = tmp_path / "ckpt"

    def signal_rank1(run: LiveRun) -> None:
        processes_of(run, "pretrain_gpt.py --local_rank=1")[0].send_signal(signal.SIGUSR1)

    result = interrupted_run(
        endless_run_flags(gpt_data_prefix, tmp_path, save), signal_rank1, nproc=2, launcher="deepspeed"
    )
    assert result.returncode == EXIT_STATUS, result.stdout[-3000:]
    assert_saved_at(save, stopped_at(result, "SIGUSR1"), ranks=2)


@pytest.mark.slow
def test_ctrl_c_through_the_launcher_saves(gpt_data_prefix, tmp_path):
    """Ctrl-C reaches the whole process group: the workers directly and through the launcher's SIGTERM,
    counted as one signal."""
    save = tmp_path / "ckpt"

    def ctrl_c(run: LiveRun) -> None:
        workers = processes_of(run, "pretrain_gpt.py")
        os.killpg(run.process.pid, signal.SIGINT)
        assert_all_gone(workers)

    result = interrupted_run(
        endless_run_flags(gpt_data_prefix, tmp_path, save), ctrl_c, nproc=2, launcher="deepspeed"
    )
    assert result.returncode != 0
    match = re.search(STOPPED, result.stdout)
    assert match, result.stdout[-3000:]
    assert_saved_at(save, int(match.group(2)), ranks=2)
    assert "exiting now, without saving" not in result.stdout


@pytest.mark.slow
def test_sigterm_to_the_deepspeed_runner_stops_the_workers(gpt_data_prefix, tmp_path):
    """The runner dies alone (it sets no handler); its launch child and the workers would train on."""
    save = tmp_path / "ckpt"

    def terminate_runner(run: LiveRun) -> None:
        workers = processes_of(run, "pretrain_gpt.py")
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=30) != 0
        assert_all_gone(workers)

    result = interrupted_run(
        endless_run_flags(gpt_data_prefix, tmp_path, save), terminate_runner, nproc=2, launcher="deepspeed"
    )
    assert "has exited: stopping training" in result.stdout
    assert_saved_at(save, stopped_at(result, "SIGTERM"), ranks=2)


@pytest.mark.slow
def test_killed_launch_fails_the_example_scripts_launcher(gpt_data_prefix, tmp_path):
    """SIGKILL to deepspeed.launcher.launch: the runner exits 0, the workers stop with a checkpoint, and
    the example scripts' launch_checked returns their status, not the runner's 0."""
    save = tmp_path / "ckpt"
    wrap = ["bash", "-c", 'source examples_deepspeed/launch_checked.sh && launch_checked "$@"', "launch"]

    def kill_launch(run: LiveRun) -> None:
        workers = processes_of(run, "pretrain_gpt.py")
        processes_of(run, "deepspeed.launcher.launch")[0].kill()
        assert_all_gone(workers)

    result = interrupted_run(
        endless_run_flags(gpt_data_prefix, tmp_path, save), kill_launch, nproc=2, launcher="deepspeed",
        wrap=wrap,
    )  # fmt: skip
    assert result.returncode == EXIT_STATUS, result.stdout[-3000:]
    assert_saved_at(save, stopped_at(result, "SIGTERM"), ranks=2)
