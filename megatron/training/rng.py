"""Seeding and the RNG state that a checkpoint carries, so a resumed run draws the same dropout masks.

The state includes the per-tensor-parallel-rank stream (:mod:`megatron.parallel.random`), under Megatron's
key name ``rng_tracker_states``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from megatron.parallel.random import set_tensor_parallel_rng_state, tensor_parallel_rng_state

PIPELINE_STAGE_SEED_STRIDE = 100


def stage_seed(seed: int, pipeline_rank: int) -> int:
    """The seed of a pipeline stage's random streams (Megatron's offset of 100 per stage), so that stages
    draw different dropout masks; weights are initialised from generators of their own."""
    return seed + PIPELINE_STAGE_SEED_STRIDE * pipeline_rank


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict:
    """Only tensors and plain Python values, so checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "random_rng_state": random.getstate(),
        "np_rng_state": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": tensor_parallel_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["random_rng_state"])
    kind, keys, position, has_gauss, cached_gaussian = state["np_rng_state"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch_rng_state"])
    set_tensor_parallel_rng_state(state["rng_tracker_states"])
    if "cuda_rng_state" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
