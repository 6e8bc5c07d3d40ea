"""Running ``pretrain_gpt.py`` for real in tests: one process, or several through a launcher with gloo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron.training.distributed import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB_FILE = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe" / "vocab.json"
MERGE_FILE = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe" / "merges.txt"
BERT_VOCAB_FILE = REPO_ROOT / "data" / "tokenizer" / "bert-wordpiece" / "vocab.txt"

LOSS_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| lm loss: (\S+) \|")
VALID_PATTERN = re.compile(r"validation loss at .*? \| lm loss value: (\S+) \|")


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
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else "2", "WANDB_MODE": "offline"}
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
    completed = launch(command, env, timeout)
    return RunResult(completed.returncode, completed.stdout, completed.stderr)
