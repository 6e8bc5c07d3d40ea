"""The planner against reality on one GPU (issue #19): measured peak memory and tokens/s of
``pretrain_gpt.py`` for a set of configurations, stored so that a test can hold the planner to them.

Each case is a real ``pretrain_gpt.py`` run (its loop, the bundled corpus and tokenizer, the case's ZeRO
stage, recomputation and offload through the usual flags and ds_config), run in a process of its own so
that the allocator's peak is the case's alone and an out-of-memory case is recorded, not fatal:

    python bench/plan_check.py --out bench/plan_measurements.json            # every case, on the GPU
    python bench/plan_check.py --only llama7b-z1-full-mb2 --out /tmp/m.json  # some of them
    python bench/plan_check.py --compare bench/plan_measurements.json        # predicted vs measured table
    python bench/plan_check.py --list

``configs`` spans 125M to 7B, ZeRO 0-3, recompute none/selective/full, offload and micro batches 1-16.
Each ranking group is one model and GPU measured in several layouts the planner considers feasible, to
check that its first choice is within 10% of the fastest: ``ranking``, a 3.8B LLaMA shape at 4096 tokens
whose micro batches beyond 2 fit only with recomputation, and ``ranking-long``, the same shape at 16384
tokens, which fits only with full recomputation or ZeRO-Offload. The stored file keeps each case's flags and
ds_config, so the comparison rebuilds the run's validated config exactly as ``pretrain_gpt.py`` did.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from megatron.config.presets import LLAMA_SWITCHES, get_preset  # noqa: E402

# The bundled tokenizer (data/tokenizer/gpt2-bpe) has this many entries; --make-vocab-size-divisible-by
# pads it to the vocabulary of the model family, so the embedding and logits have their real size.
TOKENIZER_VOCAB = 8192
FAMILY_VOCAB = {"gpt": 50304, "llama": 32000}
# Log lines before these many iterations hold the first step's allocations and warm-up; left out of tok/s.
WARMUP_ITERATIONS = 2
CASE_TIMEOUT_S = 420
MEASURED_PREFIX = "MEASURED "


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # a preset name (megatron/config/presets.py) or one of LLAMA_SHAPES
    seq_length: int
    micro_batch: int
    global_batch: int
    zero_stage: int
    recompute: str = "none"  # none | selective | full
    offload_optimizer: bool = False
    group: str = "configs"  # configs | ranking | ranking-long
    iterations: int = 6


# LLaMA-style shapes that are no preset: (layers, hidden, heads, FFN, key/value heads). TinyLlama-1.1B, a
# 3.8B whose states fit one H200 but whose larger micro batches need recomputation, and LLaMA-2-7B's layer
# 26 times (5.5B), the largest of that width whose states fit one H200 without offload.
LLAMA_SHAPES = {
    "tinyllama": (22, 2048, 32, 5632, 4),
    "llama-3.8b": (32, 3072, 24, 8192, 24),
    "llama-5.5b": (26, 4096, 32, 11008, 32),
}


def _ranking(name: str, micro: int, zero: int, recompute: str = "none") -> Case:
    return Case(name, "llama-3.8b", 4096, micro, 16, zero, recompute, group="ranking", iterations=4)


def _long_ranking(name: str, micro: int, zero: int, recompute: str, offload: bool = False) -> Case:
    """The 3.8B shape at 16384 tokens: without recomputation not even micro batch 1 fits one H200 (164 GiB
    predicted) unless the optimizer goes to the host, so each feasible layout recomputes or offloads."""
    return Case(name, "llama-3.8b", 16384, micro, 8, zero, recompute, offload, "ranking-long", iterations=4)


GROUPS = ("configs", "ranking", "ranking-long")
CASES = {
    case.name: case
    for case in (
        Case("gpt125m-z0-none-mb16", "gpt-125m", 1024, 16, 32, 0),
        Case("gpt350m-z1-sel-mb8", "gpt-350m", 1024, 8, 32, 1, "selective"),
        Case("gpt1.3b-z2-none-mb4", "gpt-1.3b", 2048, 4, 16, 2),
        Case("gpt1.3b-z3-full-mb16", "gpt-1.3b", 2048, 16, 32, 3, "full"),
        Case("gpt2.7b-z2-offload-sel-mb2", "gpt-2.7b", 2048, 2, 8, 2, "selective", True),
        Case("tinyllama-z1-none-mb8", "tinyllama", 2048, 8, 16, 1),
        # ZeRO-1 with full recomputation does not fit (measured: out of memory at the fp32 gradients).
        Case("llama7b-z1-full-mb2", "llama2-7b", 4096, 2, 16, 1, "full", iterations=5),
        Case("llama5.5b-z0-none-mb1", "llama-5.5b", 4096, 1, 16, 0, iterations=4),
        _ranking("llama3.8b-z1-none-mb1", 1, 1),
        _ranking("llama3.8b-z1-none-mb2", 2, 1),
        _ranking("llama3.8b-z1-sel-mb2", 2, 1, "selective"),
        _ranking("llama3.8b-z1-full-mb4", 4, 1, "full"),
        _ranking("llama3.8b-z1-full-mb8", 8, 1, "full"),
        _ranking("llama3.8b-z0-none-mb2", 2, 0),
        _ranking("llama3.8b-z3-none-mb2", 2, 3),
        _ranking("llama3.8b-z1-none-mb4", 4, 1),
        _long_ranking("llama3.8b-16k-z0-full-mb4", 4, 0, "full"),
        _long_ranking("llama3.8b-16k-z1-full-mb2", 2, 1, "full"),
        _long_ranking("llama3.8b-16k-z3-full-mb1", 1, 3, "full"),
        _long_ranking("llama3.8b-16k-z2-offload-none-mb1", 1, 2, "none", offload=True),
        _long_ranking("llama3.8b-16k-z1-offload-full-mb4", 4, 1, "full", offload=True),
        _long_ranking("llama3.8b-16k-z0-full-mb1", 1, 0, "full"),
    )
}


def model_flags(case: Case) -> tuple[str, list[str]]:
    """(family, the architecture flags) of the case's model at its sequence length. LLaMA shapes train
    without dropout, as Megatron-DeepSpeed's LLaMA recipes do; GPT shapes keep Megatron's default 0.1."""
    if case.model in LLAMA_SHAPES:
        family, (layers, hidden, heads, ffn, kv_heads) = "llama", LLAMA_SHAPES[case.model]
        extra = ["--ffn-hidden-size", str(ffn), "--num-key-value-heads", str(kv_heads)]
    else:
        shape = get_preset(case.model).shape
        family, layers, hidden = shape.family, shape.num_layers, shape.hidden_size
        heads = shape.num_attention_heads
        extra = ["--ffn-hidden-size", str(shape.ffn_hidden_size)] if shape.ffn_hidden_size else []
    flags = [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
        "--seq-length", str(case.seq_length), "--max-position-embeddings", str(case.seq_length), *extra,
        "--make-vocab-size-divisible-by", str(FAMILY_VOCAB[family]),
    ]  # fmt: skip
    if family == "llama":
        flags += [*LLAMA_SWITCHES, "--attention-dropout", "0", "--hidden-dropout", "0"]
    return family, flags


def case_flags(case: Case) -> list[str]:
    """The case's pretrain_gpt.py flags, without the run's paths (data, tokenizer, ds_config)."""
    _, flags = model_flags(case)
    flags += [
        "--micro-batch-size", str(case.micro_batch), "--global-batch-size", str(case.global_batch),
        "--zero-stage", str(case.zero_stage), "--bf16", "--lr", "1e-4", "--lr-decay-style", "constant",
        "--train-iters", str(case.iterations), "--log-interval", "1", "--eval-iters", "0",
    ]  # fmt: skip
    if case.recompute != "none":
        flags += ["--recompute-granularity", case.recompute]
    if case.offload_optimizer:
        flags += ["--cpu-optimizer"]
    return flags


def case_ds_config(case: Case) -> dict:
    return {"bf16": {"enabled": True}, "zero_optimization": {"stage": case.zero_stage}}


def run_paths(ds_config: dict, data_prefix: str) -> list[str]:
    """The flags that name this machine's files: the corpus, the bundled tokenizer and the ds_config."""
    tokenizer = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe"
    ds_path = Path(tempfile.mkdtemp()) / "ds_config.json"
    ds_path.write_text(json.dumps(ds_config))
    return [
        "--data-path", data_prefix, "--split", "98,2,0", "--tokenizer-type", "GPT2BPETokenizer",
        "--vocab-file", str(tokenizer / "vocab.json"), "--merge-file", str(tokenizer / "merges.txt"),
        "--deepspeed", "--deepspeed_config", str(ds_path),
    ]  # fmt: skip


def measure(case: Case, data_prefix: str) -> dict:
    """Train the case in this process; its allocator peaks, steady tokens/s and host peak (RSS)."""
    import torch

    from bench.train_throughput import LoggedThroughput
    from megatron.training.entry import configure_logging
    from pretrain_gpt import build_pretraining

    configure_logging()
    logged = LoggedThroughput()
    logging.getLogger("megatron").addHandler(logged)
    measured: dict = {"oom": False}
    try:
        build_pretraining(case_flags(case) + run_paths(case_ds_config(case), data_prefix)).run()
    except torch.OutOfMemoryError as error:
        measured.update(oom=True, error=str(error).splitlines()[0])
    steady = logged.values[WARMUP_ITERATIONS:]
    free, total = torch.cuda.mem_get_info()
    measured.update(
        peak_allocated_bytes=torch.cuda.max_memory_allocated(),
        peak_reserved_bytes=torch.cuda.max_memory_reserved(),
        device_used_bytes_at_end=total - free,
        device_total_bytes=total,
        tokens_per_second=statistics.median(steady) if steady else None,
        tokens_per_second_per_line=logged.values,
        host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        host_memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    )
    return measured


def record_of(case: Case, measured: dict, device: str) -> dict:
    return {
        "case": asdict(case),
        "flags": case_flags(case),
        "ds_config": case_ds_config(case),
        "tokenizer_vocab_size": TOKENIZER_VOCAB,
        "device": device,
        "measured": measured,
    }


def run_cases(names: list[str], out: Path) -> None:
    """Each case in a child process; the file is rewritten after each, so a cut-short run keeps the rest."""
    from bench.train_throughput import preprocessed_corpus

    preprocessed_corpus()
    records = []
    for name in names:
        command = [sys.executable, str(Path(__file__)), "--measure", name]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
            lines = [line for line in child.stdout.splitlines() if line.startswith(MEASURED_PREFIX)]
            failure = None if lines else (child.stderr or child.stdout)[-3000:]
        except subprocess.TimeoutExpired:
            lines, failure = [], f"timed out after {CASE_TIMEOUT_S} s"
        if lines:
            records.append(json.loads(lines[-1][len(MEASURED_PREFIX) :]))
            print(f"{name}: {json.dumps(records[-1]['measured'])[:300]}", flush=True)
        else:
            print(f"{name}: FAILED\n{failure}", flush=True)
        out.write_text(json.dumps({"date": str(datetime.date.today()), "records": records}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the cases")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--group", choices=GROUPS, default=None, help="only this group")
    parser.add_argument("--out", type=Path, help="where the measurements go (JSON)")
    parser.add_argument("--compare", type=Path, help="a measurements file: print predicted vs measured")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one case in this process (run_cases' child)
    args = parser.parse_args()
    if args.list:
        for case in CASES.values():
            print(f"{case.name:30} {case.group:15} {' '.join(case_flags(case))}")
        return
    if args.measure:
        import torch

        from bench.train_throughput import preprocessed_corpus

        measured = measure(CASES[args.measure], preprocessed_corpus())
        record = record_of(CASES[args.measure], measured, torch.cuda.get_device_name())
        print(MEASURED_PREFIX + json.dumps(record), flush=True)
        os._exit(0)  # the engine's background threads must not hold up the parent's next case
    if args.compare:
        from bench.plan_compare import print_comparison

        print_comparison(json.loads(args.compare.read_text())["records"])
        return
    if args.out is None:
        parser.error("give --out FILE for the measurements (or --list / --compare)")
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"--only: no case {', '.join(unknown)}; --list shows them")
    run_cases([name for name in names if args.group in (None, CASES[name].group)], args.out)


if __name__ == "__main__":
    main()
