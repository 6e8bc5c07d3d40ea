"""Training throughput of ``pretrain_gpt.py`` on GPUs: tokens/s, TFLOP/s per GPU, MFU, memory.

Two modes, launched like training (``deepspeed --num_gpus N bench/train_throughput.py ...``):

- the **synthetic step** (default): the entry point's engine and step on random tokens, one micro batch per
  step, dropout off, so that the figure measures the step and compares with the peers' (which run neither
  dropout nor accumulation);
- ``--loop``: ``pretrain_gpt.py``'s own training loop as users run it, on the bundled corpus preprocessed
  with the bundled tokenizer (its 8,192 entries padded to the peers' 50,304 by
  ``--make-vocab-size-divisible-by``, so the model has their shape), Megatron's default dropout (0.1), two
  micro batches per step, the data loader, evaluation every ``--eval-every`` iterations and the log line.
  It reports the tokens/s the log lines show (the median over the lines after the first two intervals, which
  hold compilation) and then times the synthetic step on the same engine, with the same dropout and
  accumulation, so that the two compare directly.

``--model`` picks a shape (small: 125M, medium: 350M, large: 1.3B GPTs, the layers and widths of the
presets gpt-125m, gpt-350m, gpt-1.3b; tinyllama: TinyLlama-1.1B, LLaMA-style
with grouped-query attention); every other flag is a ``pretrain_gpt.py``
flag and overrides the defaults below (``--attention-dropout 0 --hidden-dropout 0`` turns dropout off,
``--global-batch-size`` sets the accumulation). Prints one ``RESULT`` line on rank 0. MFU is against
PEAK_TFLOPS (default 989, H100/H200 dense bf16).

    deepspeed --num_gpus 1 bench/train_throughput.py --model medium --loop --torch-compile \\
      --torch-compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.profile_gaps import profile_steps  # noqa: E402
from bench.timing import median_step_seconds  # noqa: E402
from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.build import build_config, world_size_from_env  # noqa: E402
from megatron.config.presets import get_preset  # noqa: E402
from megatron.config.schema import Config  # noqa: E402
from megatron.parallel.context import ParallelContext, parallel_context_for  # noqa: E402
from megatron.training.distributed import initialize_distributed, shutdown_distributed  # noqa: E402
from megatron.training.engine import TrainingEngine, build_engine  # noqa: E402
from megatron.training.entry import configure_logging  # noqa: E402
from megatron.training.pretrain import Pretraining  # noqa: E402
from megatron.training.step import Batch, StepResult, make_batch  # noqa: E402
from megatron.training.throughput import flops_per_token  # noqa: E402
from pretrain_gpt import build_pretraining, gpt_model_provider  # noqa: E402

# The peers' shapes: GPT-2's vocabulary (50257, padded to 50304), and TinyLlama-1.1B's (32000) with the
# LLaMA-style flags of raw_torch_llama.py's and HF's LlamaForCausalLM's architecture.
GPT_VOCAB = dict(vocab=50257, padded_vocab=50304, flags=[])
LLAMA_FLAGS = [
    "--position-embedding-type", "rope", "--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--num-key-value-heads", "4", "--ffn-hidden-size", "5632",
]  # fmt: skip


def _preset_shape(name: str, seq: int, micro: int) -> dict:
    """A GPT preset's layers, width and heads (megatron/config/presets.py), at the peers' sequence length
    and micro batch."""
    shape = get_preset(name).shape
    return dict(
        layers=shape.num_layers, hidden=shape.hidden_size, heads=shape.num_attention_heads, seq=seq,
        micro=micro, **GPT_VOCAB,
    )  # fmt: skip


SHAPES = {
    "small": _preset_shape("gpt-125m", seq=1024, micro=16),
    "medium": _preset_shape("gpt-350m", seq=1024, micro=16),
    "large": _preset_shape("gpt-1.3b", seq=2048, micro=8),
    "tinyllama": dict(
        layers=22,
        hidden=2048,
        heads=32,
        seq=2048,
        micro=8,
        vocab=32000,
        padded_vocab=32000,
        flags=LLAMA_FLAGS,
    ),
}
PROFILED_STEPS = 3
# --loop: the log intervals that hold compilation and CUDA-graph recording, left out of the median.
LOOP_LOG_INTERVAL = 5
LOOP_WARMUP_INTERVALS = 2
# --precision: (ds_config section, flags, default ZeRO stage). Without ZeRO, autocast leaves the optimizer
# unwrapped: one fused AdamW over the fp32 weights, no per-parameter dtype copies.
PRECISIONS = {
    "autocast": ({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, [], 0),
    "bf16": ({"bf16": {"enabled": True}}, ["--bf16"], 1),
}
TOKENS_PER_SECOND = re.compile(r"\| tokens per second: ([0-9.]+) \|")


def shape_flags(shape: dict, ds_config: str, iterations: int) -> list[str]:
    return [
        "--num-layers", str(shape["layers"]), "--hidden-size", str(shape["hidden"]),
        "--num-attention-heads", str(shape["heads"]), "--seq-length", str(shape["seq"]),
        "--max-position-embeddings", str(shape["seq"]), "--micro-batch-size", str(shape["micro"]),
        "--train-iters", str(iterations), "--lr", "1e-4", "--lr-decay-style", "constant",
        "--deepspeed", "--deepspeed_config", ds_config, *shape["flags"],
    ]  # fmt: skip


def synthetic_flags() -> list[str]:
    return [
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--data-path", "synthetic", "--vocab-file", "unused", "--merge-file", "unused",
    ]  # fmt: skip


def loop_flags(shape: dict, data_prefix: str, eval_every: int) -> list[str]:
    """The bundled corpus and tokenizer, Megatron's default dropout, two micro batches per step."""
    tokenizer = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe"
    return [
        "--global-batch-size", str(2 * shape["micro"]),
        "--data-path", data_prefix, "--split", "98,2,0", "--tokenizer-type", "GPT2BPETokenizer",
        "--vocab-file", str(tokenizer / "vocab.json"), "--merge-file", str(tokenizer / "merges.txt"),
        "--make-vocab-size-divisible-by", str(shape["padded_vocab"]),
        "--log-interval", str(LOOP_LOG_INTERVAL), "--eval-interval", str(eval_every), "--eval-iters", "2",
    ]  # fmt: skip


def preprocessed_corpus() -> str:
    """The bundled corpus as GPT documents (as the quickstart makes them); local rank 0 writes them, under
    temporary names renamed into place, while the other ranks wait for the index."""
    from tools.preprocess_data import main as preprocess

    prefix = REPO_ROOT / "data" / "processed" / "kjv"
    index = Path(f"{prefix}_text_document.idx")
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not index.exists():
        partial = Path(f"{prefix}.partial")
        tokenizer = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe"
        preprocess([
            "--input", str(REPO_ROOT / "data" / "corpus" / "kjv.jsonl"), "--json-keys", "text",
            "--output-prefix", str(partial), "--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", str(tokenizer / "vocab.json"), "--merge-file", str(tokenizer / "merges.txt"),
            "--append-eod", "--workers", "2",
        ])  # fmt: skip
        os.replace(f"{partial}_text_document.bin", f"{prefix}_text_document.bin")
        os.replace(f"{partial}_text_document.idx", index)
    while not index.exists():
        time.sleep(1)
    return f"{prefix}_text_document"


def random_batches(config: Config, context: ParallelContext, device: torch.device) -> list[Batch]:
    """One iteration's micro batches of random tokens, on the device."""
    batch = config.batch
    seq = config.model.seq_length
    generator = torch.Generator().manual_seed(context.data_rank)
    shape = (batch.gradient_accumulation_steps, batch.micro_batch_size, seq + 1)
    samples = torch.randint(0, config.model.padded_vocab_size, shape, generator=generator)
    return [make_batch({"text": sample}, device, -1, False, context) for sample in samples]


def corpus_batches(pretraining: Pretraining) -> list[Batch]:
    """The loop's next iteration of micro batches from its corpus, on the device."""
    micro_batches = pretraining.config.batch.gradient_accumulation_steps
    device, parallel = pretraining.context.device, pretraining.parallel
    samples = [next(pretraining.train_samples) for _ in range(micro_batches)]
    return [pretraining.data.make_batch(sample, device, parallel) for sample in samples]


def repeated_step(built: TrainingEngine, batches: list[Batch]) -> Callable[[], StepResult]:
    """One training iteration of the engine over the same micro batches each time (already on the device,
    so no data loading nor copy is timed)."""

    def step() -> StepResult:
        return built.train_step(iter(batches), len(batches))

    return step


class LoggedThroughput(logging.Handler):
    """The tokens/s of each log line of the training loop, as printed."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.values: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = TOKENS_PER_SECOND.search(record.getMessage())
        if match:
            self.values.append(float(match.group(1)))


def describe(config: Config, context: ParallelContext, precision: str, stage: int) -> str:
    batch = config.batch
    layout = f"T={context.tensor_size} P={context.pipeline_size} D={batch.data_parallel_size}"
    precision += f"+fp8-{config.fp8.format}" if config.fp8 else ""
    dropout = max(config.model.attention_dropout, config.model.hidden_dropout)
    return (
        f"{layout} {precision} zero={stage} gpus={dist.get_world_size()} seq={config.model.seq_length} "
        f"mbs={batch.micro_batch_size} gbs={batch.global_batch_size} dropout={dropout:g}"
    )


def throughput_fields(config: Config, tokens_per_second: float, device: torch.device) -> str:
    world = dist.get_world_size()
    per_gpu = tokens_per_second / world
    tflops = per_gpu * flops_per_token(config.model) / 1e12
    peak = float(os.environ.get("PEAK_TFLOPS", "989"))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    memories = [torch.zeros(1, device=device) for _ in range(world)]
    dist.all_gather(memories, torch.tensor([memory], device=device))
    return (
        f"tok/s={tokens_per_second:,.0f} tok/s/gpu={per_gpu:,.0f} TFLOP/s/gpu={tflops:.1f} "
        f"MFU={100 * tflops / peak:.1f}% peakmem={max(m.item() for m in memories):.1f}GiB"
    )


def run_synthetic(known: argparse.Namespace, flags: list[str], stage: int) -> None:
    config = build_config(parse_args(flags), world_size_from_env(), SHAPES[known.model]["vocab"])
    distributed = initialize_distributed()
    context = parallel_context_for(config.parallel)
    built = build_engine(config, context, gpt_model_provider)
    step = repeated_step(built, random_batches(config, context, distributed.device))
    seconds, result = median_step_seconds(step, known.warmup, known.iterations)
    if known.profile:
        report = profile_steps(step, PROFILED_STEPS)
        if dist.get_rank() == 0:
            print(report, flush=True)
    tokens_per_second = config.batch.global_batch_size * config.model.seq_length / seconds
    fields = throughput_fields(config, tokens_per_second, distributed.device)
    if dist.get_rank() == 0:
        print(
            f"RESULT ours-{known.model} {describe(config, context, known.precision, stage)} "
            f"step_ms={seconds * 1000:.1f} {fields} loss={result.loss.item():.3f}",
            flush=True,
        )


def run_loop(known: argparse.Namespace, flags: list[str], stage: int) -> None:
    logged = LoggedThroughput()
    logging.getLogger("megatron").addHandler(logged)
    pretraining = build_pretraining(flags)
    pretraining.run()
    config, context, device = pretraining.config, pretraining.parallel, pretraining.context.device
    # Rank 0 logs; the other ranks' figure is never printed.
    loop = statistics.median(logged.values[LOOP_WARMUP_INTERVALS:] or [float("nan")])
    tokens = config.batch.global_batch_size * config.model.seq_length
    # The loop's step alone: on random tokens (the synthetic mode's), and on a batch of the loop's corpus,
    # which tells a cost of the loop from a cost of the data's values.
    figures = {}
    for name, batches in (
        ("synthetic", random_batches(config, context, device)),
        ("corpus", corpus_batches(pretraining)),
    ):
        seconds, _ = median_step_seconds(repeated_step(pretraining.built, batches), 3, known.iterations)
        figures[name] = tokens / seconds
    fields = throughput_fields(config, loop, device)
    if dist.get_rank() == 0:
        print(
            f"RESULT ours-loop-{known.model} {describe(config, context, known.precision, stage)} {fields} "
            f"synthetic_tok/s={figures['synthetic']:,.0f} loop/synthetic={loop / figures['synthetic']:.3f} "
            f"corpus_step_tok/s={figures['corpus']:,.0f} log_lines={len(logged.values)}",
            flush=True,
        )


def main() -> None:
    bench = argparse.ArgumentParser(add_help=False)
    bench.add_argument("--model", choices=SHAPES, default="small")
    bench.add_argument("--loop", action="store_true", help="pretrain_gpt.py's loop on the bundled corpus")
    bench.add_argument("--warmup", type=int, default=10, help="synthetic steps before timing")
    bench.add_argument("--iterations", type=int, default=20, help="timed steps (--loop: after the warmup)")
    bench.add_argument("--eval-every", type=int, default=20, help="--loop: iterations between evaluations")
    bench.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="autocast",
        help="autocast: the ds_config's torch_autocast (fp32 weights, bf16 forward); bf16: --bf16 (bf16 "
        "weights, DeepSpeed's fp32 master copies)",
    )
    bench.add_argument("--zero-stage", type=int, default=None, help="default: 0 with autocast, 1 with bf16")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="after timing, profile three steps: the top GPU kernels and what the GPU waits on",
    )
    known, overrides = bench.parse_known_args()
    if known.loop and known.iterations < LOOP_LOG_INTERVAL:
        bench.error(f"--loop needs --iterations {LOOP_LOG_INTERVAL} or more (one log line per interval)")
    configure_logging()
    shape = SHAPES[known.model]
    ds_config = Path(tempfile.mkdtemp()) / "ds.json"
    section, precision_flags, default_stage = PRECISIONS[known.precision]
    stage = default_stage if known.zero_stage is None else known.zero_stage
    ds_config.write_text(json.dumps({**section, "zero_optimization": {"stage": stage}}))
    if known.loop:
        iterations = LOOP_WARMUP_INTERVALS * LOOP_LOG_INTERVAL + known.iterations
        data = loop_flags(shape, preprocessed_corpus(), known.eval_every)
        flags = shape_flags(shape, str(ds_config), iterations) + data + precision_flags + overrides
        run_loop(known, flags, stage)
    else:
        iterations = known.warmup + known.iterations
        flags = shape_flags(shape, str(ds_config), iterations) + synthetic_flags()
        flags += precision_flags + overrides
        run_synthetic(known, flags, stage)
    shutdown_distributed()


if __name__ == "__main__":
    main()
