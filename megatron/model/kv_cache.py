"""The key/value cache of incremental decoding: each layer's keys and values of the tokens seen so far, so
that a new token attends to them without running the prompt again.

Preallocated once per batch for the longest sequence it may reach, ``[batch, max_length, kv heads, head
dim]`` per layer with this rank's key/value heads only: under grouped-query attention the cache holds the
shared heads, not one copy per query head. ``length`` counts the cached positions; the model reads it as
the position of its first new token and advances it after each forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CachedLength:
    """The number of cached positions, shared by a cache and its layers. A holder of its own rather than a
    reference from each layer back to the :class:`KVCache`: such a cycle would keep a finished batch's
    cache allocated until Python's cycle collector happens to run."""

    def __init__(self) -> None:
        self.value = 0


class LayerKVCache:
    """One attention layer's cached keys and values."""

    def __init__(self, length: CachedLength, keys: torch.Tensor, values: torch.Tensor):
        self._length = length
        self.keys, self.values = keys, values

    @property
    def offset(self) -> int:
        return self._length.value

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' ``key``/``value`` (``[batch, new, kv heads, head dim]``) after the cached
        ones and return all of them so far."""
        start, end = self.offset, self.offset + key.shape[1]
        if end > self.keys.shape[1]:
            raise ValueError(f"the key/value cache holds {self.keys.shape[1]} positions; {end} were asked")
        self.keys[:, start:end] = key
        self.values[:, start:end] = value
        return self.keys[:, :end], self.values[:, :end]


class KVCache:
    """Every layer's :class:`LayerKVCache` for one batch of sequences."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        max_length: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch, max_length, kv_heads, head_dim)
        self._length = CachedLength()
        self.max_length = max_length
        self.layers = [
            LayerKVCache(
                self._length,
                torch.empty(shape, dtype=dtype, device=device),
                torch.empty(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]

    @property
    def length(self) -> int:
        return self._length.value

    def advance(self, tokens: int) -> None:
        self._length.value += tokens


def cached_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, offset: int
) -> torch.Tensor:
    """Causal attention of ``query`` (``[batch, new, heads, head dim]``, positions ``offset`` on) over the
    cached and new ``key``/``value`` (``[batch, offset + new, kv heads, head dim]``), batch-first, no
    dropout. SDPA's own causal mask aligns queries with the first keys, which is right only without a
    cache; one new token attends to every key, and several past a cache get the shifted mask."""
    queries, keys = query.shape[1], key.shape[1]
    mask = None
    causal = offset == 0
    if not causal and queries > 1:
        positions = torch.arange(offset, offset + queries, device=query.device)
        mask = torch.arange(keys, device=query.device)[None, :] <= positions[:, None]
    context = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=mask,
        is_causal=causal and queries > 1,
        enable_gqa=key.shape[2] != query.shape[2],
    )
    return context.transpose(1, 2)
