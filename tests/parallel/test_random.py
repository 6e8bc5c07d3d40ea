"""The per-rank random stream: nested regions continue it, and recomputation replays what it drew."""

from __future__ import annotations

import pytest
import torch

from megatron.parallel.context import ParallelContext
from megatron.parallel.random import (
    configure_recomputation,
    heads_are_split,
    recompute,
    seed_tensor_parallel_rng,
    tensor_parallel_rng,
)
from megatron.training.rng import stage_seed


@pytest.fixture
def seeded_streams(single_process_group):
    configure_recomputation(ParallelContext.single(), None)
    seed_tensor_parallel_rng(11, ParallelContext.single())
    torch.manual_seed(3)


def test_a_nested_region_continues_the_stream(seeded_streams):
    """Attention dropout inside a sequence-parallel region: the inner draws must not repeat the outer's."""
    with tensor_parallel_rng():
        outer = torch.rand(64)
        with tensor_parallel_rng():
            inner = torch.rand(64)
        after = torch.rand(64)
    seed_tensor_parallel_rng(11, ParallelContext.single())
    with tensor_parallel_rng():
        expected = torch.rand(3 * 64)
    torch.testing.assert_close(torch.cat([outer, inner, after]), expected, rtol=0, atol=0)


def test_the_stream_is_apart_from_the_default_generator(seeded_streams):
    default_before = torch.get_rng_state()
    with tensor_parallel_rng():
        in_stream = torch.rand(64)
    assert torch.equal(torch.get_rng_state(), default_before)
    assert not torch.equal(in_stream, torch.rand(64))


def test_recomputation_replays_draws_of_a_joined_stream(seeded_streams):
    """A recomputed block that joined the enclosing stream draws the same mask again in backward, so the
    gradient is the mask of the forward pass."""

    def masked(x: torch.Tensor) -> torch.Tensor:
        with tensor_parallel_rng():
            return x * (torch.rand_like(x) < 0.5)

    x = torch.ones(256, requires_grad=True)
    with tensor_parallel_rng():
        y = recompute(masked, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach(), rtol=0, atol=0)
    assert 0 < int(y.sum()) < 256


def test_split_heads_need_the_per_rank_stream():
    assert not heads_are_split(ParallelContext.single())


def test_pipeline_stages_draw_apart():
    """Before, every stage drew the same dropout masks for its layers as the first stage did for its own."""
    assert stage_seed(1234, 0) == 1234
    assert len({stage_seed(1234, rank) for rank in range(4)}) == 4
