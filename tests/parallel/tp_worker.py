"""One rank of the tensor-parallel tests: runs every case on its shard and saves what it saw.

The parent test builds the unsharded ``torch.nn`` reference from the same seeds and compares, so this file
only computes; nothing here asserts between collectives, where a failure on one rank would hang the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.parallel import (
    ColumnParallelLinear,
    ParallelContext,
    RowParallelLinear,
    VocabParallelEmbedding,
    build_parallel_context,
    vocab_parallel_cross_entropy,
)

BATCH, SEQ, HIDDEN, FFN, VOCAB = 3, 5, 8, 12, 16
STD = 0.5
WEIGHT_SEED = 1234


def full_tensor(seed: int, *shape: int) -> torch.Tensor:
    """The same tensor on every rank and in the parent, independent of the global generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _grads(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}_grad": p.grad.detach().clone() for name, p in layer.named_parameters()}


def column_case(context: ParallelContext, gather_output: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = ColumnParallelLinear(HIDDEN, FFN, context, STD, gather_output=gather_output)
    shard = context.tensor_shard(FFN, "FFN")
    with torch.no_grad():
        layer.bias.copy_(full_tensor(1, FFN)[shard])
    hidden = full_tensor(2, BATCH, SEQ, HIDDEN).requires_grad_()
    upstream = full_tensor(3, BATCH, SEQ, FFN)
    output = layer(hidden)
    (output * (upstream if gather_output else upstream[..., shard])).sum().backward()
    return {"output": output.detach(), "input_grad": hidden.grad, **_grads(layer)}


def row_case(context: ParallelContext, input_is_parallel: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = RowParallelLinear(FFN, HIDDEN, context, STD, input_is_parallel=input_is_parallel)
    with torch.no_grad():
        layer.bias.copy_(full_tensor(1, HIDDEN))
    full_input = full_tensor(2, BATCH, SEQ, FFN)
    hidden = full_input[..., context.tensor_shard(FFN, "FFN")] if input_is_parallel else full_input
    hidden = hidden.clone().requires_grad_()
    output = layer(hidden)
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    return {"output": output.detach(), "input_grad": hidden.grad, **_grads(layer)}


def mlp_case(context: ParallelContext) -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    up = ColumnParallelLinear(HIDDEN, FFN, context, STD)
    down = RowParallelLinear(FFN, HIDDEN, context, STD / 2)
    with torch.no_grad():
        up.bias.copy_(full_tensor(1, FFN)[context.tensor_shard(FFN, "FFN")])
        down.bias.copy_(full_tensor(4, HIDDEN))
    hidden = full_tensor(2, BATCH, SEQ, HIDDEN).requires_grad_()
    output = down(F.gelu(up(hidden), approximate="tanh"))
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    return {
        "output": output.detach(),
        "input_grad": hidden.grad,
        **{f"up_{k}": v for k, v in _grads(up).items()},
        **{f"down_{k}": v for k, v in _grads(down).items()},
    }


def embedding_case(context: ParallelContext) -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = VocabParallelEmbedding(VOCAB, HIDDEN, context, STD)
    output = layer(tokens(5))
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    return {"output": output.detach(), **_grads(layer)}


def cross_entropy_case(context: ParallelContext) -> dict[str, torch.Tensor]:
    logits = full_tensor(6, BATCH, SEQ, VOCAB) * 3.0
    shard = logits[..., context.tensor_shard(VOCAB, "VOCAB")].clone().requires_grad_()
    losses = vocab_parallel_cross_entropy(shard, tokens(5), context)
    (losses * full_tensor(7, BATCH, SEQ)).sum().backward()
    return {"losses": losses.detach(), "logits_grad": shard.grad}


def weight_sizes(context: ParallelContext) -> dict[str, int]:
    sizes = {}
    for name, layer in (
        ("column", ColumnParallelLinear(HIDDEN, FFN, context, STD)),
        ("row", RowParallelLinear(FFN, HIDDEN, context, STD)),
        ("embedding", VocabParallelEmbedding(VOCAB, HIDDEN, context, STD)),
    ):
        sizes[f"{name}_numel"] = layer.weight.numel()
        sizes[f"{name}_storage_bytes"] = layer.weight.untyped_storage().nbytes()
    return sizes


def context_fields(context: ParallelContext) -> dict[str, int]:
    fields = {
        key: getattr(context, key)
        for key in ("tensor_rank", "tensor_size", "data_rank", "data_size", "pipeline_rank", "pipeline_size")
    }
    # Prove the groups really connect the ranks they claim to: the sum of global ranks over each group.
    for kind, group in (("tensor", context.tensor_group), ("data", context.data_group)):
        total = torch.tensor([float(dist.get_rank())])
        if group is not None:
            dist.all_reduce(total, group=group)
        fields[f"{kind}_rank_sum"] = int(total.item())
    return fields


def main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        tp2 = build_parallel_context(tensor_size=2)
        tp1 = build_parallel_context(tensor_size=1)
        results = {
            "context_tp2": context_fields(tp2),
            "context_tp1": context_fields(tp1),
            "column": column_case(tp2, gather_output=False),
            "column_gathered": column_case(tp2, gather_output=True),
            "row": row_case(tp2, input_is_parallel=True),
            "row_scattered": row_case(tp2, input_is_parallel=False),
            "mlp": mlp_case(tp2),
            "embedding": embedding_case(tp2),
            "cross_entropy": cross_entropy_case(tp2),
            "sizes": weight_sizes(tp2),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
