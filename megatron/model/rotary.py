"""Rotary position embeddings (RoPE) on query and key, in the layout HF's ``LlamaForCausalLM`` uses.

Each head's first ``rotary_dim`` channels turn as ``x cos + rotate_half(x) sin``, where ``rotate_half``
swaps the two halves of those channels (negating the second): Megatron-DeepSpeed's form and HF LLaMA's, so
query and key weights convert without any permutation. The angles are computed in float32 from the
positions each rank holds: all of them where the sequence is whole in attention (sequence parallelism
gathers it first), this rank's contiguous part under DeepSpeed-Ulysses, where attention's all-to-all comes
after the rotation.
"""

from __future__ import annotations

import torch
from torch import nn

from megatron.config.schema import ModelConfig
from megatron.parallel.context import ParallelContext


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies itself to ``[batch, sequence, heads, head_dim]`` query and key tensors."""

    def __init__(self, config: ModelConfig, context: ParallelContext):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).float() / self.rotary_dim
        # Not a checkpointed parameter: it follows from the config (HF keeps it out of state dicts too).
        self.register_buffer("inv_freq", 1.0 / config.rotary_base**exponents, persistent=False)
        self.ulysses_rank = context.ulysses_rank
        self.ulysses_size = context.ulysses_size

    def angles(
        self, seq_length: int, device: torch.device, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, ``[sequence, 1, rotary_dim]``, for this rank's positions; ``offset``: the position
        of the first one (the tokens already in a key/value cache), on the host or on the device."""
        start = offset + (self.ulysses_rank * seq_length if self.ulysses_size > 1 else 0)
        positions = torch.arange(seq_length, device=device, dtype=torch.float32) + start
        freqs = torch.outer(positions, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return emb.cos(), emb.sin()

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.angles(query.shape[1], query.device, offset)
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        turning, passing = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        turned = turning * cos + rotate_half(turning) * sin
        return torch.cat((turned, passing), dim=-1) if passing.shape[-1] else turned

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary_dim}"
