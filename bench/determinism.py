"""Bitwise reproducibility of ``pretrain_gpt.py`` runs: the same run twice, and split and resumed,
compared loss by loss and checkpoint tensor by checkpoint tensor, with each run's throughput.

Every run trains ``--model`` (``bench/train_throughput.py``'s shapes: medium is the 350M GPT, tinyllama
TinyLlama-1.1B) for ``--iterations`` on the bundled corpus with Megatron's default dropout, two micro
batches per step, bf16 and ZeRO ``--zero-stage``, logging every iteration, one process. ``--runs`` lists
the runs, each one of
- ``baseline``: the flags as given;
- ``det``: with ``--deterministic-mode``;
- ``det-split``: ``--deterministic-mode``, stopped by ``--exit-interval`` at half the iterations and
  resumed from its checkpoint to the end.
Each run is compared with the first run of its mode (``det-split`` with the first ``det``): one ``COMPARE``
line with how many logged losses and checkpoint tensors are bitwise equal. Each run prints a ``RESULT`` line
with its median tokens/s (over the log lines after the first quarter). Checkpoints are hashed, tensor by
tensor, and deleted after each run. Other flags go to ``pretrain_gpt.py`` (``--torch-compile``,
``--num-experts 4`` ...). ``--mode-setting NAME=VALUE`` replaces one of the choices at the top of
``megatron/training/determinism.py`` in the deterministic runs (``SDPA_KERNELS=cudnn,flash,math``,
``FILL_UNINITIALIZED_MEMORY=True``), to measure another choice:

    python3 bench/determinism.py --model medium --runs baseline baseline det det det-split
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.train_throughput import SHAPES, loop_flags, preprocessed_corpus, shape_flags  # noqa: E402
from megatron.training import determinism  # noqa: E402
from megatron.training.distributed import free_port  # noqa: E402

LOSS = re.compile(r"iteration\s+(\d+)/.*?\| lm loss: (\S+) \|")
TOKENS_PER_SECOND = re.compile(r"\| tokens per second: ([0-9.]+) \|")
# Runs the entry point in this process after replacing deterministic mode's choices (a JSON object).
WORKER = (
    "import json, runpy, sys; import megatron.training.determinism as mode; "
    "[setattr(mode, name, value) for name, value in json.loads(sys.argv[1]).items()]; "
    "sys.argv = ['pretrain_gpt.py', *sys.argv[2:]]; runpy.run_path('pretrain_gpt.py', run_name='__main__')"
)


def mode_setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--mode-setting``: a comma-separated VALUE is a tuple, True/False a bool."""
    name, _, value = text.partition("=")
    if not hasattr(determinism, name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a choice of megatron/training/determinism.py")
    if value in ("True", "False"):
        return name, value == "True"
    return name, tuple(value.split(","))


def run_training(flags: list[str], settings: dict[str, object], log: Path) -> str:
    """One ``pretrain_gpt.py`` process; its log (also written to ``log``)."""
    if settings:
        command = [sys.executable, "-c", WORKER, json.dumps(settings), *flags]
    else:
        command = [sys.executable, "pretrain_gpt.py", *flags]
    env = dict(os.environ, MASTER_PORT=str(free_port()))
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        sys.exit(
            f"{' '.join(command[:3])} ... failed ({completed.returncode}); log: {log}\n"
            f"{(completed.stdout + completed.stderr)[-3000:]}"
        )
    return completed.stdout + completed.stderr


def tensor_hashes(save: Path) -> dict[str, str]:
    """A digest of every tensor of every file under ``save`` (model states and optimizer shards), by file
    and key path."""
    hashes = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
            hashes[prefix] = f"{value.dtype}{tuple(value.shape)}:{hashlib.sha1(data.tobytes()).hexdigest()}"
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}/{index}", item)

    for path in sorted(save.rglob("*.pt")):
        walk(str(path.relative_to(save)), torch.load(path, map_location="cpu", weights_only=False))
    return hashes


def main() -> None:
    bench = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    bench.add_argument("--model", choices=sorted(SHAPES), default="medium")
    bench.add_argument("--iterations", type=int, default=30)
    bench.add_argument("--zero-stage", type=int, default=1)
    bench.add_argument("--runs", nargs="+", choices=("baseline", "det", "det-split"), required=True)
    bench.add_argument(
        "--mode-setting", type=mode_setting, action="append", default=[],
        help="NAME=VALUE: a choice of megatron/training/determinism.py for the deterministic runs",
    )  # fmt: skip
    bench.add_argument("--label", default="", help="a name for these runs in the output")
    known, extra = bench.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="determinism-"))
    ds_config = work / "ds_config.json"
    ds_config.write_text(
        json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": known.zero_stage}})
    )
    shape = SHAPES[known.model]
    base = [
        *shape_flags(shape, str(ds_config), known.iterations),
        *loop_flags(shape, preprocessed_corpus(), eval_every=known.iterations),
        "--bf16", "--log-interval", "1", "--seed", "1234", *extra,
    ]  # fmt: skip
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    label = f"{known.model} zero{known.zero_stage} {known.label}".strip()
    print(f"torch {torch.__version__}, {name}, {label}: {' '.join(extra) or 'no extra flags'}", flush=True)
    firsts: dict[str, tuple[dict, dict]] = {}
    for index, run in enumerate(known.runs):
        save = work / f"run{index}"
        flags = [*base, "--save", str(save), "--save-interval", str(known.iterations)]
        settings = {}
        if run != "baseline":
            flags.append("--deterministic-mode")
            settings = dict(known.mode_setting)
        if run == "det-split":
            half = known.iterations // 2
            output = run_training([*flags, "--exit-interval", str(half)], settings, work / f"run{index}a.log")
            output += run_training([*flags, "--load", str(save)], settings, work / f"run{index}b.log")
        else:
            output = run_training(flags, settings, work / f"run{index}.log")
        losses = {int(iteration): loss for iteration, loss in LOSS.findall(output)}
        rates = [float(rate) for rate in TOKENS_PER_SECOND.findall(output)]
        steady = rates[len(rates) // 4 :] or rates
        hashes = tensor_hashes(save)
        shutil.rmtree(save)
        print(
            f"RESULT {label} run={index} mode={run} iterations_logged={len(losses)} "
            f"tok/s={statistics.median(steady):,.1f} final_loss={losses.get(known.iterations)} "
            f"tensors={len(hashes)}",
            flush=True,
        )
        mode = "det" if run == "det-split" else run
        if mode not in firsts:
            firsts[mode] = (losses, hashes)
            continue
        first_losses, first_hashes = firsts[mode]
        same_losses = sum(losses.get(key) == value for key, value in first_losses.items())
        same_tensors = sum(hashes.get(key) == value for key, value in first_hashes.items())
        differ = next((key for key, value in first_hashes.items() if hashes.get(key) != value), None)
        print(
            f"COMPARE {label} run={index} ({run}) vs first {mode}: losses_equal={same_losses}/"
            f"{len(first_losses)} tensors_equal={same_tensors}/{len(first_hashes)}"
            + (f" first_differing={differ}" if differ else ""),
            flush=True,
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
