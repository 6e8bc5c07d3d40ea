"""What the planner chooses among: one way to spread a model and its batch over GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Recompute = Literal["none", "selective", "full"]
# How the weights are kept: "bf16"/"fp16": half-precision weights with fp32 master copies in DeepSpeed's
# optimizer (the ds_config's bf16 / fp16 sections); "autocast": fp32 weights, the forward under
# torch.autocast in bf16 (the ds_config's torch_autocast section); "fp32": no mixed precision.
Precision = Literal["bf16", "fp16", "autocast", "fp32"]


@dataclass(frozen=True)
class Layout:
    """One candidate: the process grid (T x Ulysses x D x P ranks, Megatron's order), the ZeRO stage, the
    batch split and the memory savers. ``sequence_parallel`` is Megatron's (over the T ranks);
    ``ulysses`` is DeepSpeed-Ulysses' sequence-parallel degree."""

    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    zero_stage: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    recompute: Recompute = "none"
    offload_optimizer: bool = False
    offload_parameters: bool = False
    sequence_parallel: bool = False
    ulysses: int = 1
    expert_parallel: int = 1

    @property
    def num_gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel * self.ulysses

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel
