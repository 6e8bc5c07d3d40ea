"""Random streams that differ across tensor-parallel ranks, and recomputation that replays them.

Dropout on activations that are replicated over the tensor-parallel ranks must draw the same mask on every
rank (the default generator, seeded alike everywhere); dropout on activations that are split across them
(attention heads, sequence-parallel regions) must draw different masks, from a second stream seeded per
rank. DeepSpeed's RNG tracker holds that second stream, and ``deepspeed.checkpointing.checkpoint`` restores
both streams when it recomputes a layer, so dropout masks are identical in the recomputation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import deepspeed
import torch
from deepspeed.runtime.activation_checkpointing import checkpointing as ds_checkpointing

from megatron.parallel.context import ParallelContext

TENSOR_PARALLEL_SEED_OFFSET = 2718
# Whether this process is inside tensor_parallel_rng() (one process runs one model, one thread at a time).
_rank_stream_active = False


def init_generator(seed: int, *path: int) -> torch.Generator:
    """A generator for initialising one part of the model (``path`` e.g. (layer number,)).

    Seeding each part on its own makes the weights independent of construction order, so a pipeline stage
    that builds only its own layers gets the same weights as a single process that builds them all.
    """
    value = seed
    for part in path:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def seed_tensor_parallel_rng(seed: int, context: ParallelContext) -> None:
    """(Re)start the per-rank stream; the default generator is seeded by the caller, alike on all ranks."""
    tracker = ds_checkpointing.get_cuda_rng_tracker()
    tracker.reset()
    # Distinct for every rank that holds different heads or a different part of the sequence.
    stream = context.ulysses_rank * context.tensor_size + context.tensor_rank
    tracker.add(
        ds_checkpointing._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + TENSOR_PARALLEL_SEED_OFFSET + stream
    )


def heads_are_split(context: ParallelContext) -> bool:
    """Whether attention heads are spread over ranks (tensor parallelism or DeepSpeed-Ulysses), so that
    attention dropout must draw from the per-rank stream. With whole heads on every rank the default
    stream serves: it is seeded alike on the data-parallel replicas, as the per-rank stream would be."""
    return context.tensor_size > 1 or context.ulysses_size > 1


@contextmanager
def tensor_parallel_rng(active: bool = True) -> Iterator[None]:
    """Run the block with the per-rank stream (for dropout on split activations); ``active`` False (no
    dropout in the block) runs it as it is, so that evaluation and dropout-free models need no seeding.

    Re-entering while the stream is already active (attention dropout inside a sequence-parallel region)
    keeps drawing from it: DeepSpeed's tracker would restart the inner block from the state the outer one
    began with, and the two regions would reuse the same random numbers.
    """
    global _rank_stream_active
    if not active or _rank_stream_active:
        yield
        return
    tracker = ds_checkpointing.get_cuda_rng_tracker()
    if ds_checkpointing._MODEL_PARALLEL_RNG_TRACKER_NAME not in tracker.get_states():
        raise RuntimeError(
            "the tensor-parallel RNG stream is not seeded: call seed_tensor_parallel_rng() first"
        )
    with tracker.fork():
        _rank_stream_active = True
        try:
            yield
        finally:
            _rank_stream_active = False


@torch.compiler.disable
def run_in_rank_stream(function: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """``function`` under :func:`tensor_parallel_rng`, always eager: swapping the generator's state cannot
    be traced, so a compiled caller breaks its graph here once instead of at every state access inside."""
    with tensor_parallel_rng():
        return function(*args, **kwargs)


def tensor_parallel_rng_state() -> dict:
    return ds_checkpointing.get_cuda_rng_tracker().get_states()


def set_tensor_parallel_rng_state(states: dict) -> None:
    ds_checkpointing.get_cuda_rng_tracker().set_states(states)


def configure_recomputation(context: ParallelContext, ds_config: Mapping[str, Any] | None) -> None:
    """Tell DeepSpeed's checkpointing the layout; with ``ds_config`` its ``activation_checkpointing`` options
    (activation partitioning, CPU offload) apply, as with Megatron-DeepSpeed's
    ``--deepspeed-activation-checkpointing``."""
    deepspeed.checkpointing.configure(context, deepspeed_config=dict(ds_config) if ds_config else None)


@torch.compiler.disable
def recompute(function: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``function(*args)`` whose activations are dropped and recomputed in backward, RNG streams replayed.

    Whether the per-rank stream was active is replayed too, so that a block that joined an enclosing
    stream in the forward pass (see :func:`tensor_parallel_rng`) joins it again when recomputed. Always
    eager (DeepSpeed's checkpoint saves and restores generator states); compiled modules inside it still
    run compiled.
    """
    joined_stream = _rank_stream_active

    def replay(*inputs: torch.Tensor) -> torch.Tensor:
        global _rank_stream_active
        outer, _rank_stream_active = _rank_stream_active, joined_stream
        try:
            return function(*inputs)
        finally:
            _rank_stream_active = outer

    return deepspeed.checkpointing.checkpoint(replay, *args)
