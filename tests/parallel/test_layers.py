"""Tensor-parallel layers against the unsharded ``torch.nn`` modules built from the same seed.

The two-rank cases run once, in two real processes with gloo (``tp_worker.py``); each test then compares one
case with its single-process reference here.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron.parallel import (
    ColumnParallelLinear,
    ParallelContext,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_parallel_region,
    gather_from_tensor_parallel_region,
    megatron_group_ranks,
    reduce_from_tensor_parallel_region,
    scatter_to_tensor_parallel_region,
    vocab_parallel_cross_entropy,
)
from tests.launch import free_port
from tests.parallel import tp_worker
from tests.parallel.tp_worker import BATCH, FFN, HIDDEN, SEQ, STD, VOCAB, WEIGHT_SEED, full_tensor, tokens

WORLD = 2
TOLERANCE = dict(rtol=1e-6, atol=1e-6)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda m: f"{what}: {m}")


def halves(dim: int) -> list[slice]:
    return [slice(rank * dim // WORLD, (rank + 1) * dim // WORLD) for rank in range(WORLD)]


# ----- single-process references, drawing the weights in the same order as the parallel layers -----


def reference_linear(in_features: int, out_features: int, std: float) -> nn.Linear:
    weight = torch.empty(out_features, in_features)
    nn.init.normal_(weight, mean=0.0, std=std)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init must not shift the seeded draws
        layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def reference_column() -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = reference_linear(HIDDEN, FFN, STD)
    with torch.no_grad():
        layer.bias.copy_(full_tensor(1, FFN))
    hidden = full_tensor(2, BATCH, SEQ, HIDDEN).requires_grad_()
    output = layer(hidden)
    (output * full_tensor(3, BATCH, SEQ, FFN)).sum().backward()
    return {"output": output.detach(), "input_grad": hidden.grad, "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad}  # fmt: skip


def reference_row() -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = reference_linear(FFN, HIDDEN, STD)
    with torch.no_grad():
        layer.bias.copy_(full_tensor(1, HIDDEN))
    hidden = full_tensor(2, BATCH, SEQ, FFN).requires_grad_()
    output = layer(hidden)
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    return {"output": output.detach(), "input_grad": hidden.grad, "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad}  # fmt: skip


def reference_embedding() -> dict[str, torch.Tensor]:
    torch.manual_seed(WEIGHT_SEED)
    layer = nn.Embedding(VOCAB, HIDDEN, _weight=torch.empty(VOCAB, HIDDEN).normal_(0.0, STD))
    output = layer(tokens(5))
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    return {"output": output.detach(), "weight_grad": layer.weight.grad}


def reference_cross_entropy() -> dict[str, torch.Tensor]:
    logits = (full_tensor(6, BATCH, SEQ, VOCAB) * 3.0).requires_grad_()
    losses = F.cross_entropy(logits.flatten(0, 1), tokens(5).flatten(), reduction="none").view(BATCH, SEQ)
    (losses * full_tensor(7, BATCH, SEQ)).sum().backward()
    return {"losses": losses.detach(), "logits_grad": logits.grad}


# ----- two ranks -----


@pytest.fixture(scope="module")
def tp2(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run every two-rank case once; returns each rank's results."""
    out_dir = tmp_path_factory.mktemp("tp2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # read by the children when they import torch
        workers = torch.multiprocessing.start_processes(
            tp_worker.main, args=(WORLD, free_port(), str(out_dir)), nprocs=WORLD, join=False,
            start_method="spawn",
        )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while not workers.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("tensor-parallel workers did not finish within 120 s (a collective hung?)")
    finally:
        for process in workers.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
def test_context_follows_megatron_rank_order(tp2):
    for rank, results in enumerate(tp2):
        assert results["context_tp2"] == {
            "tensor_rank": rank, "tensor_size": 2, "data_rank": 0, "data_size": 1,
            "pipeline_rank": 0, "pipeline_size": 1, "tensor_rank_sum": 1, "data_rank_sum": rank,
        }  # fmt: skip
        assert results["context_tp1"] == {
            "tensor_rank": 0, "tensor_size": 1, "data_rank": rank, "data_size": 2,
            "pipeline_rank": 0, "pipeline_size": 1, "tensor_rank_sum": rank, "data_rank_sum": 1,
        }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", ["column", "column_gathered"])
def test_column_parallel_linear_matches_linear(tp2, case):
    reference = reference_column()
    for rank, shard in enumerate(halves(FFN)):
        results = tp2[rank][case]
        expected_output = (
            reference["output"] if case == "column_gathered" else reference["output"][..., shard]
        )
        assert_equal(results["output"], expected_output, f"rank {rank} output")
        assert_equal(results["input_grad"], reference["input_grad"], f"rank {rank} input grad")
        assert_equal(results["weight_grad"], reference["weight_grad"][shard], f"rank {rank} weight grad")
        assert_equal(results["bias_grad"], reference["bias_grad"][shard], f"rank {rank} bias grad")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["row", "row_scattered"])
def test_row_parallel_linear_matches_linear(tp2, case):
    reference = reference_row()
    for rank, shard in enumerate(halves(FFN)):
        results = tp2[rank][case]
        expected_input_grad = (
            reference["input_grad"][..., shard] if case == "row" else reference["input_grad"]
        )
        assert_equal(results["output"], reference["output"], f"rank {rank} output")
        assert_equal(results["input_grad"], expected_input_grad, f"rank {rank} input grad")
        assert_equal(results["weight_grad"], reference["weight_grad"][:, shard], f"rank {rank} weight grad")
        assert_equal(results["bias_grad"], reference["bias_grad"], f"rank {rank} bias grad")


@pytest.mark.slow
def test_mlp_block_matches_unsharded(tp2):
    torch.manual_seed(WEIGHT_SEED)
    up, down = reference_linear(HIDDEN, FFN, STD), reference_linear(FFN, HIDDEN, STD / 2)
    with torch.no_grad():
        up.bias.copy_(full_tensor(1, FFN))
        down.bias.copy_(full_tensor(4, HIDDEN))
    hidden = full_tensor(2, BATCH, SEQ, HIDDEN).requires_grad_()
    output = down(F.gelu(up(hidden), approximate="tanh"))
    (output * full_tensor(3, BATCH, SEQ, HIDDEN)).sum().backward()
    for rank, shard in enumerate(halves(FFN)):
        results = tp2[rank]["mlp"]
        assert_equal(results["output"], output.detach(), f"rank {rank} output")
        assert_equal(results["input_grad"], hidden.grad, f"rank {rank} input grad")
        assert_equal(results["up_weight_grad"], up.weight.grad[shard], f"rank {rank} up weight grad")
        assert_equal(results["up_bias_grad"], up.bias.grad[shard], f"rank {rank} up bias grad")
        assert_equal(results["down_weight_grad"], down.weight.grad[:, shard], f"rank {rank} down weight grad")
        assert_equal(results["down_bias_grad"], down.bias.grad, f"rank {rank} down bias grad")


@pytest.mark.slow
def test_vocab_parallel_embedding_matches_embedding(tp2):
    reference = reference_embedding()
    assert (tokens(5) < VOCAB // 2).any() and (tokens(5) >= VOCAB // 2).any(), "both shards must be hit"
    for rank, shard in enumerate(halves(VOCAB)):
        results = tp2[rank]["embedding"]
        assert_equal(results["output"], reference["output"], f"rank {rank} output")
        assert_equal(results["weight_grad"], reference["weight_grad"][shard], f"rank {rank} weight grad")


@pytest.mark.slow
def test_vocab_parallel_cross_entropy_matches_cross_entropy(tp2):
    reference = reference_cross_entropy()
    for rank, shard in enumerate(halves(VOCAB)):
        results = tp2[rank]["cross_entropy"]
        assert_equal(results["losses"], reference["losses"], f"rank {rank} losses")
        assert_equal(results["logits_grad"], reference["logits_grad"][..., shard], f"rank {rank} logits grad")


@pytest.mark.slow
def test_each_rank_holds_half_of_each_weight(tp2):
    full = {"column": FFN * HIDDEN, "row": FFN * HIDDEN, "embedding": VOCAB * HIDDEN}
    for results in tp2:
        for name, numel in full.items():
            assert results["sizes"][f"{name}_numel"] == numel // 2, name
            # The slice must not keep the full tensor's storage alive behind it.
            assert results["sizes"][f"{name}_storage_bytes"] == numel // 2 * 4, name


# ----- the rank layout, for worlds too large to launch here -----


def test_group_ranks_follow_megatron_example():
    # Megatron-LM's own example: 16 GPUs, 2-way tensor, 4-way pipeline parallelism.
    layout = megatron_group_ranks(world_size=16, tensor_size=2, pipeline_size=4)
    assert layout.tensor == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.data == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert layout.pipeline == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]


def test_group_ranks_without_pipeline_stride_data_by_tensor_size():
    layout = megatron_group_ranks(world_size=8, tensor_size=2, ulysses_size=2)
    assert layout.tensor == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.ulysses == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.data == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.sequence_data == [[0, 2, 4, 6], [1, 3, 5, 7]]
    layout = megatron_group_ranks(world_size=8, tensor_size=4)
    assert layout.tensor == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.data == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_group_ranks_reject_a_world_the_sizes_do_not_divide():
    with pytest.raises(ValueError, match="--tensor-model-parallel-size"):
        megatron_group_ranks(world_size=6, tensor_size=4)


# ----- one process, no torch.distributed -----


@pytest.fixture
def no_collectives(monkeypatch: pytest.MonkeyPatch) -> ParallelContext:
    """A size-1 context, with every collective made to fail so that none can hide in the size-1 path."""

    def refuse(*args, **kwargs):
        raise AssertionError("a collective was called with a tensor-parallel size of 1")

    for name in ("all_reduce", "all_gather", "get_world_size", "get_rank", "new_group"):
        monkeypatch.setattr(dist, name, refuse)
    return ParallelContext.single()


def test_size_one_mappings_are_identity(no_collectives):
    hidden = full_tensor(2, BATCH, SEQ, HIDDEN).requires_grad_()
    for mapping in (
        copy_to_tensor_parallel_region,
        reduce_from_tensor_parallel_region,
        scatter_to_tensor_parallel_region,
        gather_from_tensor_parallel_region,
    ):
        hidden.grad = None
        output = mapping(hidden, no_collectives.tensor_group)
        output.backward(full_tensor(3, BATCH, SEQ, HIDDEN))
        assert torch.equal(output, hidden), mapping.__name__
        assert torch.equal(hidden.grad, full_tensor(3, BATCH, SEQ, HIDDEN)), mapping.__name__


def test_size_one_linear_layers_equal_torch_linear(no_collectives):
    torch.manual_seed(WEIGHT_SEED)
    column = ColumnParallelLinear(HIDDEN, FFN, no_collectives, STD, gather_output=True)
    row = RowParallelLinear(FFN, HIDDEN, no_collectives, STD, input_is_parallel=False)
    torch.manual_seed(WEIGHT_SEED)
    column_ref, row_ref = reference_linear(HIDDEN, FFN, STD), reference_linear(FFN, HIDDEN, STD)
    with torch.no_grad():
        column_ref.bias.zero_()
        row_ref.bias.zero_()
    assert torch.equal(column.weight, column_ref.weight) and torch.equal(row.weight, row_ref.weight)

    hidden = full_tensor(2, BATCH, SEQ, HIDDEN)
    parallel_input, reference_input = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    output = row(F.gelu(column(parallel_input)))
    expected = row_ref(F.gelu(column_ref(reference_input)))
    output.sum().backward()
    expected.sum().backward()
    assert_equal(output, expected, "output")
    assert_equal(parallel_input.grad, reference_input.grad, "input grad")
    for parallel, reference in ((column, column_ref), (row, row_ref)):
        for name in ("weight", "bias"):
            assert_equal(getattr(parallel, name).grad, getattr(reference, name).grad, f"{name} grad")


def test_size_one_embedding_and_cross_entropy_equal_torch(no_collectives):
    torch.manual_seed(WEIGHT_SEED)
    embedding = VocabParallelEmbedding(VOCAB, HIDDEN, no_collectives, STD)
    assert_equal(embedding(tokens(5)), reference_embedding()["output"], "embedding output")

    logits = (full_tensor(6, BATCH, SEQ, VOCAB) * 3.0).requires_grad_()
    losses = vocab_parallel_cross_entropy(logits, tokens(5), no_collectives)
    (losses * full_tensor(7, BATCH, SEQ)).sum().backward()
    reference = reference_cross_entropy()
    assert_equal(losses, reference["losses"], "losses")
    assert_equal(logits.grad, reference["logits_grad"], "logits grad")


def test_embedding_lookup_in_fp32_sums_a_bf16_tables_gradient_in_fp32(no_collectives):
    """--embedding-weights-in-fp32: a token seen many times gets its gradient summed in fp32 and rounded
    once (the bf16 lookup's backward rounds as it sums, and differs)."""
    torch.manual_seed(WEIGHT_SEED)
    repeated = torch.zeros(4096, dtype=torch.long)
    repeated[::3] = 1
    output_grad = torch.randn(4096, HIDDEN).bfloat16()
    summed_in_fp32 = torch.zeros(VOCAB, HIDDEN).index_add_(0, repeated, output_grad.float()).bfloat16()
    gradients = {}
    for lookup_in_fp32 in (False, True):
        embedding = VocabParallelEmbedding(VOCAB, HIDDEN, no_collectives, STD, lookup_in_fp32=lookup_in_fp32)
        embedding.bfloat16()
        output = embedding(repeated)
        assert output.dtype == torch.bfloat16
        assert torch.equal(output, embedding.weight.detach()[repeated])
        output.backward(output_grad)
        gradients[lookup_in_fp32] = embedding.weight.grad
    assert torch.equal(gradients[True], summed_in_fp32)
    assert not torch.equal(gradients[False], summed_in_fp32)


def test_cross_entropy_keeps_the_logits_dtype_for_the_gradient(no_collectives):
    logits = (full_tensor(6, BATCH, SEQ, VOCAB) * 3.0).bfloat16().requires_grad_()
    losses = vocab_parallel_cross_entropy(logits, tokens(5), no_collectives)
    losses.sum().backward()
    assert losses.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16


def test_parameters_are_marked_for_clipping_decay_and_conversion(no_collectives):
    column = ColumnParallelLinear(HIDDEN, FFN, no_collectives, STD)
    row = RowParallelLinear(FFN, HIDDEN, no_collectives, STD)
    embedding = VocabParallelEmbedding(VOCAB, HIDDEN, no_collectives, STD)
    marks = {
        name: (p.tensor_model_parallel, p.partition_dim, p.partition_stride)
        for layer_name, layer in (("column", column), ("row", row), ("embedding", embedding))
        for name, p in ((f"{layer_name}.{n}", p) for n, p in layer.named_parameters())
    }
    assert marks == {
        "column.weight": (True, 0, 1), "column.bias": (True, 0, 1),
        "row.weight": (True, 1, 1), "row.bias": (False, -1, 1),
        "embedding.weight": (True, 0, 1),
    }  # fmt: skip


def test_sizes_the_tensor_parallel_size_does_not_divide_are_rejected():
    context = ParallelContext(
        tensor_rank=0, tensor_size=2, tensor_group=None, data_rank=0, data_size=1, data_group=None
    )
    with pytest.raises(ValueError, match=r"ColumnParallelLinear out_features \(7\)"):
        ColumnParallelLinear(HIDDEN, 7, context, STD)
    with pytest.raises(ValueError, match=r"VocabParallelEmbedding num_embeddings \(15\)"):
        VocabParallelEmbedding(15, HIDDEN, context, STD)
