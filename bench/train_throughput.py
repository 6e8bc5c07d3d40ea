"""Training throughput of ``pretrain_gpt.py``'s own step on GPUs: tokens/s, TFLOP/s per GPU, MFU, memory.

Runs the library's engine and step functions (the DeepSpeed engine, the model the entry point builds, in bf16
autocast without ZeRO by default, ``--precision bf16 --zero-stage 1`` for DeepSpeed's bf16 optimizer)
on synthetic tokens, so that the figure measures training and not data loading. Launch it like training:

    deepspeed --num_gpus 2 bench/train_throughput.py --model large --tensor-model-parallel-size 2

``--model`` picks a shape (small: 125M, medium: 350M, large: 1.3B; vocabulary 50304); every other flag is a
``pretrain_gpt.py`` flag and overrides the defaults below. Prints one ``RESULT`` line on rank 0.
MFU is against PEAK_TFLOPS (default 989, H100/H200 dense bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.profile_gaps import profile_steps  # noqa: E402
from bench.timing import median_step_seconds  # noqa: E402
from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.build import build_config, world_size_from_env  # noqa: E402
from megatron.parallel.context import parallel_context_for  # noqa: E402
from megatron.training.distributed import initialize_distributed, shutdown_distributed  # noqa: E402
from megatron.training.engine import build_engine  # noqa: E402
from megatron.training.step import make_batch, pipeline_train_step, train_step  # noqa: E402
from megatron.training.throughput import flops_per_token  # noqa: E402
from pretrain_gpt import gpt_model_provider  # noqa: E402

SHAPES = {
    "small": dict(layers=12, hidden=768, heads=12, seq=1024, micro=16),
    "medium": dict(layers=24, hidden=1024, heads=16, seq=1024, micro=16),
    "large": dict(layers=24, hidden=2048, heads=16, seq=2048, micro=8),
}
PROFILED_STEPS = 3
VOCAB = 50257  # GPT-2's, padded to 50304
# --precision: (ds_config section, flags, default ZeRO stage). Without ZeRO, autocast leaves the optimizer
# unwrapped: one fused AdamW over the fp32 weights, no per-parameter dtype copies.
PRECISIONS = {
    "autocast": ({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, [], 0),
    "bf16": ({"bf16": {"enabled": True}}, ["--bf16"], 1),
}


def default_flags(shape: dict, ds_config: str, iterations: int) -> list[str]:
    return [
        "--num-layers", str(shape["layers"]), "--hidden-size", str(shape["hidden"]),
        "--num-attention-heads", str(shape["heads"]), "--seq-length", str(shape["seq"]),
        "--max-position-embeddings", str(shape["seq"]), "--micro-batch-size", str(shape["micro"]),
        "--train-iters", str(iterations), "--lr", "1e-4", "--lr-decay-style", "constant",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--data-path", "synthetic", "--vocab-file", "unused", "--merge-file", "unused",
        "--deepspeed", "--deepspeed_config", ds_config,
    ]  # fmt: skip


def main() -> None:
    bench = argparse.ArgumentParser(add_help=False)
    bench.add_argument("--model", choices=SHAPES, default="small")
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--iterations", type=int, default=20)
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
    shape = SHAPES[known.model]
    ds_config = Path(tempfile.mkdtemp()) / "ds.json"
    section, precision_flags, default_stage = PRECISIONS[known.precision]
    stage = default_stage if known.zero_stage is None else known.zero_stage
    ds_config.write_text(json.dumps({**section, "zero_optimization": {"stage": stage}}))
    flags = (
        default_flags(shape, str(ds_config), known.warmup + known.iterations) + precision_flags + overrides
    )
    config = build_config(parse_args(flags), world_size_from_env(), VOCAB)
    distributed = initialize_distributed()
    context = parallel_context_for(config.parallel)
    built = build_engine(config, context, gpt_model_provider)
    batch = config.batch
    micro_batches = batch.gradient_accumulation_steps
    seq = config.model.seq_length
    generator = torch.Generator().manual_seed(context.data_rank)
    samples = torch.randint(0, VOCAB, (micro_batches, batch.micro_batch_size, seq + 1), generator=generator)

    def micro_batch_iterator():
        for index in range(micro_batches):
            yield make_batch({"text": samples[index]}, distributed.device, -1, False, context)

    def step():
        if built.is_pipeline:
            return pipeline_train_step(built.engine, micro_batch_iterator(), built.clipper)
        return train_step(built.engine, micro_batch_iterator(), micro_batches, built.clipper)

    seconds, result = median_step_seconds(step, known.warmup, known.iterations)
    if known.profile:
        report = profile_steps(step, PROFILED_STEPS)
        if dist.get_rank() == 0:
            print(report, flush=True)
    world = dist.get_world_size()
    tokens_per_second = batch.global_batch_size * seq / seconds
    per_gpu = tokens_per_second / world
    peak = float(os.environ.get("PEAK_TFLOPS", "989"))
    tflops = per_gpu * flops_per_token(config.model) / 1e12
    memory = torch.cuda.max_memory_allocated() / 2**30
    memories = [torch.zeros(1, device=distributed.device) for _ in range(world)]
    dist.all_gather(memories, torch.tensor([memory], device=distributed.device))
    if dist.get_rank() == 0:
        layout = f"T={context.tensor_size} P={context.pipeline_size} D={batch.data_parallel_size}"
        precision = known.precision + (f"+fp8-{config.fp8.format}" if config.fp8 else "")
        print(
            f"RESULT ours-{known.model} {layout} {precision} zero={stage} gpus={world} seq={seq} "
            f"mbs={batch.micro_batch_size} "
            f"gbs={batch.global_batch_size} step_ms={seconds * 1000:.1f} tok/s={tokens_per_second:,.0f} "
            f"tok/s/gpu={per_gpu:,.0f} TFLOP/s/gpu={tflops:.1f} MFU={100 * tflops / peak:.1f}% "
            f"peakmem={max(m.item() for m in memories):.1f}GiB loss={result.loss.item():.3f}",
            flush=True,
        )
    shutdown_distributed()


if __name__ == "__main__":
    main()
