"""Running ``pretrain_gpt.py`` for real in tests: one process, or several through a launcher with gloo."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB_FILE = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe" / "vocab.json"
MERGE_FILE = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe" / "merges.txt"
BERT_VOCAB_FILE = REPO_ROOT / "data" / "tokenizer" / "bert-wordpiece" / "vocab.txt"

LOSS_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| lm loss: (\S+) \|")
VALID_PATTERN = re.compile(r"validation loss at .*? \| lm loss value: (\S+) \|")


# What a launcher sets for its processes. A test that starts a process group inside pytest (a group of one
# for in-process code) leaves them in os.environ; a child started with them would join that group's port.
PROCESS_GROUP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
# Test ports come from below the kernel's ephemeral range: a port found free there could be taken, before
# the launched rank binds it, as the local end of one of the many gloo connections of a test running
# beside it (pytest-xdist), and a rank would then stop at "MASTER_PORT ... already in use".
LOWEST_TEST_PORT = 10_000


def xdist_workers() -> int:
    """How many pytest-xdist workers run the suite (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def threads_per_process() -> int:
    """OpenMP threads for a test's process: this machine's cores shared among the pytest-xdist workers.
    More threads than cores make libgomp's waiting threads spin against each other: two single-process
    runs of 2 threads each on 2 cores took 30-40 s for the 30 iterations that take 4.5 s with 1 each."""
    return max(1, len(os.sched_getaffinity(0)) // xdist_workers())


def child_env(**variables: str) -> dict[str, str]:
    """The environment for a process a test starts: this process's, without the process-group variables
    (see ``PROCESS_GROUP_VARIABLES``), with its share of the cores (:func:`threads_per_process`; a launcher
    of several ranks gets ``OMP_NUM_THREADS=1`` in ``variables``) and ``variables`` added."""
    env = {name: value for name, value in os.environ.items() if name not in PROCESS_GROUP_VARIABLES}
    return {**env, "OMP_NUM_THREADS": str(threads_per_process()), **variables}


def first_ephemeral_port() -> int:
    """The lowest port the kernel hands out as the local end of a connection (Linux; elsewhere
    ``LOWEST_TEST_PORT``, which leaves the choice of test ports to the kernel)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except OSError:
        return LOWEST_TEST_PORT


def free_port() -> int:
    """A TCP port that nothing listens on now, from this pytest-xdist worker's own block of the ports below
    the ephemeral range, so that two workers never pick the same one. Where there is no room below the
    ephemeral range (a machine configured so, or not Linux), the kernel picks it."""
    workers = xdist_workers()
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    block = (first_ephemeral_port() - LOWEST_TEST_PORT) // workers
    if block < 1:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    start = LOWEST_TEST_PORT + worker * block
    for port in random.SystemRandom().sample(range(start, start + block), min(block, 200)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + block - 1}")


GPT2_TOKENIZER_FLAGS = (
    "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(VOCAB_FILE), "--merge-file", str(MERGE_FILE),
)  # fmt: skip


def tiny_model_flags(
    data_prefix: str, train_iters: int = 6, tokenizer: tuple[str, ...] = GPT2_TOKENIZER_FLAGS
) -> list[str]:
    """A model small enough for several runs a minute on two cores; dropout off so runs compare exactly.
    ``tokenizer``: the tokenizer flags, the bundled GPT-2 BPE by default."""
    return [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
        "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-iters", str(train_iters), "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine",
        "--lr-warmup-iters", "2", "--weight-decay", "0.01", "--clip-grad", "1.0",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--data-path", data_prefix, "--split", "90,10,0", *tokenizer,
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "2", "--num-workers", "0",
        "--seed", "1234", "--deepspeed",
    ]  # fmt: skip


# Megatron-DeepSpeed's LLaMA recipe flags, on the tiny model (4 heads sharing 2 key/value heads).
LLAMA_FLAGS = [
    "--use-rotary-position-embeddings", "--no-position-embedding", "--swiglu", "--normalization", "rmsnorm",
    "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--num-key-value-heads", "2",
    "--no-query-key-layer-scaling",
]  # fmt: skip


def write_ds_config(path: Path, zero_stage: int, **extra) -> Path:
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": zero_stage}, **extra}
    path.write_text(json.dumps(config))
    return path


def launch(command: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Run a launcher command from the repository root, capturing its output.

    Now and then a rank aborts in native code at start-up ("terminate called ...", SIGABRT, before any
    training output): seen once in about 60 4-rank launches here and not reproduced since; gloo has an open
    bug of that kind (pytorch/pytorch#188266). Such a launch is run once more, on a fresh port; a failure
    that repeats, and every other failure, is returned as it is.
    """

    def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    completed = run(command, env)
    aborted_at_start = "terminate called" in completed.stderr and not LOSS_PATTERN.search(completed.stdout)
    if completed.returncode == 0 or not aborted_at_start:
        return completed
    print(f"a rank aborted at start-up, launching again: {' '.join(command[:6])} ...")
    command, env = list(command), dict(env)
    if "--master_port" in command:
        command[command.index("--master_port") + 1] = str(free_port())
    if "MASTER_PORT" in env:
        env["MASTER_PORT"] = str(free_port())
    return run(command, env)


def run_example(script: str, variables: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """Run ``examples_deepspeed/<script>`` as users do, with ``variables`` added to the environment, one
    thread per process and a free rendezvous port (the session's MASTER_PORT may be held by this pytest
    process's own process group); the test fails unless the script exits 0."""
    env = child_env(OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()), **variables)
    completed = subprocess.run(
        ["bash", f"examples_deepspeed/{script}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def losses(self) -> dict[int, float]:
        return {int(it): float(loss) for it, loss in LOSS_PATTERN.findall(self.stdout)}

    @property
    def loss_strings(self) -> dict[int, str]:
        return {int(it): loss for it, loss in LOSS_PATTERN.findall(self.stdout)}

    def check(self) -> RunResult:
        assert self.returncode == 0, (
            f"run failed ({self.returncode}):\n{self.stdout[-3000:]}\n{self.stderr[-5000:]}"
        )
        return self


def pretrain_command(
    flags: list[str],
    nproc: int = 1,
    launcher: str = "torchrun",
    script: str = "pretrain_gpt.py",
    port: int | None | str = "free",
) -> tuple[list[str], dict]:
    """The command line and environment that :func:`run_pretrain` runs (arguments as there)."""
    env = child_env(WANDB_MODE="offline", **({"OMP_NUM_THREADS": "1"} if nproc > 1 else {}))
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    script = str(REPO_ROOT / script)
    port = str(free_port() if port == "free" else port)
    if launcher == "deepspeed":
        command = ["deepspeed", "--num_gpus", str(nproc), "--master_port", port, script, *flags]
    elif nproc == 1 and launcher == "python":
        command = [sys.executable, script, *flags]
        if port != "None":
            env["MASTER_PORT"] = port
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", port, script, *flags,
        ]  # fmt: skip
    return command, env


def run_pretrain(
    flags: list[str],
    nproc: int = 1,
    launcher: str = "torchrun",
    timeout: int = 600,
    script: str = "pretrain_gpt.py",
    port: int | None | str = "free",
) -> RunResult:
    """``nproc`` processes of ``script`` (``pretrain_gpt.py``, ``pretrain_bert.py``, ``pretrain_t5.py``) on
    CPU; DeepSpeed picks its CPU accelerator and gloo. ``port``: the rendezvous port, a free one by default;
    None leaves ``MASTER_PORT`` unset for a single process without a launcher."""
    command, env = pretrain_command(flags, nproc, launcher, script, port)
    completed = launch(command, env, timeout)
    return RunResult(completed.returncode, completed.stdout, completed.stderr)


class LiveRun:
    """A command running in its own session (so that a test can signal its whole process group), its
    output (stdout and stderr together) collected as it comes, for tests that act on a run mid-way."""

    def __init__(self, command: list[str], env: dict):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        """The first match of ``pattern`` in the output; fails when the run ends or times out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                match = re.search(pattern, self.output)
                assert match, f"ended ({self.process.returncode}) before {pattern!r}:\n{self.output[-5000:]}"
                return match
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-5000:]}")

    def wait(self, timeout: float = 120) -> RunResult:
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout} s:\n{self.output[-5000:]}") from None
        self._reader.join(timeout=5)
        return RunResult(returncode, self.output, "")

    def kill(self) -> None:
        """End what is left of the run's process group (after a test, whatever its outcome)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
