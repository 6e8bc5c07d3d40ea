"""Run by ``torchrun`` in tests: a few training steps of a tiny GPT in one parallel layout.

It builds everything through the library (flags -> config, parallel context, ``build_engine`` with the
entry point's model provider, ``train_step``/``pipeline_train_step``), feeds the same synthetic global
batches whatever the layout, records the loss and gradient norm of every step and the full (gathered)
gradients of the first step under Megatron's parameter names, and rank 0 of each pipeline stage writes them
to ``OUT.stageN.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.build import build_config, world_size_from_env  # noqa: E402
from megatron.parallel.context import ParallelContext, parallel_context_for  # noqa: E402
from megatron.parallel.layers import merge_shards  # noqa: E402
from megatron.training.distributed import all_reduce_mean, initialize_distributed  # noqa: E402
from megatron.training.engine import build_engine  # noqa: E402
from megatron.training.step import make_batch  # noqa: E402
from pretrain_gpt import gpt_model_provider  # noqa: E402

VOCAB = 96  # padded to 128 by --make-vocab-size-divisible-by 64 x T


def canonical_name(name: str, is_pipeline: bool, num_layers: int) -> str:
    """Megatron's name of a parameter of the plain model or of a pipeline stage ("3.mlp", "tied_modules")."""
    if not is_pipeline:
        return name
    prefix, rest = name.split(".", 1)
    if prefix == "tied_modules":  # the embedding, shared by the first and last stage
        return f"language_model.{rest}"
    index = int(prefix)
    if 1 <= index <= num_layers:
        return f"language_model.encoder.layers.{index - 1}.{rest}"
    if index == num_layers + 2:  # an untied output layer
        return f"language_model.output_layer.{rest}"
    return f"language_model.encoder.final_layernorm.{rest}"


def gather_full(tensor: torch.Tensor, param: torch.nn.Parameter, context: ParallelContext) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False) or context.tensor_size == 1:
        return tensor.detach().clone()
    pieces = [torch.empty_like(tensor) for _ in range(context.tensor_size)]
    dist.all_gather(pieces, tensor.contiguous(), group=context.tensor_group)
    return merge_shards(pieces, param.partition_dim, param.partition_stride)


def synthetic_samples(global_batch: int, seq_length: int, steps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(99)
    return torch.randint(0, VOCAB, (steps, global_batch, seq_length + 1), generator=generator)


def main() -> None:
    out = sys.argv[1]
    if os.environ.get("INDUCTOR_FALLBACK_RANDOM") == "1":
        # Compiled dropout draws through torch's eager random ops, in program order: the masks of eager mode.
        torch._inductor.config.fallback_random = True
    args = parse_args(sys.argv[2:])
    config = build_config(args, world_size_from_env(), VOCAB)
    distributed = initialize_distributed()
    context = parallel_context_for(config.parallel)
    built = build_engine(config, context, gpt_model_provider)
    engine = built.engine
    batch = config.batch
    micro_batches = batch.gradient_accumulation_steps
    steps = config.duration.train_iters
    samples = synthetic_samples(batch.global_batch_size, config.model.seq_length, steps)

    captured: dict[str, torch.Tensor] = {}
    optimizer = engine.optimizer
    original_step = optimizer.step

    def capture_then_step(*step_args, **step_kwargs):
        if not captured:
            for name, param in engine.module.named_parameters():
                if built.is_pipeline and context.pipeline_rank > 0 and name.startswith("tied_modules"):
                    continue  # the last stage's copy of the embedding (its position table is unused there)
                key = canonical_name(name, built.is_pipeline, config.model.num_layers)
                if param.grad is not None:
                    captured[key] = gather_full(param.grad, param, context)
        return original_step(*step_args, **step_kwargs)

    optimizer.step = capture_then_step

    losses, grad_norms = [], []
    for step in range(steps):
        # This rank's share of the global batch, as the sampler deals it: micro batch m of data rank d.
        chunks = samples[step].view(micro_batches, context.data_size, batch.micro_batch_size, -1)
        mine = chunks[:, context.data_rank]
        batches = iter(
            make_batch({"text": mine[m]}, distributed.device, eod=-1, eod_mask_loss=False, context=context)
            for m in range(micro_batches)
        )
        result = built.train_step(batches, micro_batches)
        losses.append(all_reduce_mean(result.loss).item())
        grad_norms.append(None if result.grad_norm is None else float(result.grad_norm))
    if context.tensor_rank == 0 and context.data_rank == 0 and context.ulysses_rank == 0:
        record = {"losses": losses, "grad_norms": grad_norms, "grads": captured}
        torch.save(record, f"{out}.stage{context.pipeline_rank}.pt")
    dist.barrier()


if __name__ == "__main__":
    main()
