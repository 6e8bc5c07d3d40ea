"""The key/value cache of incremental decoding: each layer's keys and values of the tokens seen so far, so
that a new token attends to them without running the prompt again.

Preallocated once per batch for the longest sequence it may reach, ``[batch, max_length, kv heads, head
dim]`` per layer with this rank's key/value heads only: under grouped-query attention the cache holds the
shared heads, not one copy per query head. The cache's ``length`` counts the cached positions; the model
reads it as the position of its first new token and advances it after each forward. An attention layer
hands its new query, key and value to its layer's cache, which stores them and attends.

Two kinds. :class:`KVCache` counts on the host and attends to the filled positions only.
:class:`StaticKVCache` counts on the device and, one token at a time, attends to every position under a
mask: each decoding step then runs the same kernels on the same buffers, whatever the position, which is
what a captured CUDA graph needs (:mod:`megatron.text_generation.decode_graph`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def layer_buffers(
    num_layers: int,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    allocate: Callable[..., torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's key and value buffers, ``shape`` each, made by ``allocate`` (``torch.empty``, or
    ``torch.zeros`` where masked positions are read)."""
    return [
        (allocate(shape, dtype=dtype, device=device), allocate(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]


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

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Store the new tokens' ``key``/``value`` (``[batch, new, kv heads, head dim]``) after the cached
        ones, and return the causal attention of ``query`` over all of them."""
        start, end = self.offset, self.offset + key.shape[1]
        if end > self.keys.shape[1]:
            raise ValueError(f"the key/value cache holds {self.keys.shape[1]} positions; {end} were asked")
        self.keys[:, start:end] = key
        self.values[:, start:end] = value
        return cached_attention(query, self.keys[:, :end], self.values[:, :end], start)


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
        self._length = CachedLength()
        self.max_length = max_length
        buffers = layer_buffers(
            num_layers, (batch, max_length, kv_heads, head_dim), dtype, device, torch.empty
        )
        self.layers = [LayerKVCache(self._length, keys, values) for keys, values in buffers]

    @property
    def length(self) -> int:
        return self._length.value

    def advance(self, tokens: int) -> None:
        self._length.value += tokens


class StaticLayerKVCache:
    """One attention layer's part of a :class:`StaticKVCache`."""

    def __init__(self, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        self._position = position
        self.keys, self.values = keys, values
        self._key_positions = torch.arange(keys.shape[1], device=keys.device)

    @property
    def offset(self) -> torch.Tensor:
        return self._position

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Several new tokens fill the cache from position 0 (the prompt) and attend causally among
        themselves; one new token is written at the device-held position and attends to every cached
        position up to it, the later ones masked. Masked positions hold zeros or finished values, never
        NaN, so that they add nothing (the buffers start zeroed)."""
        new = key.shape[1]
        if new > 1:
            self.keys[:, :new] = key
            self.values[:, :new] = value
            return cached_attention(query, key, value, 0)
        index = self._position.view(1)
        self.keys.index_copy_(1, index, key)
        self.values.index_copy_(1, index, value)
        mask = (self._key_positions <= self._position).view(1, 1, 1, -1)
        context = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            self.keys.transpose(1, 2),
            self.values.transpose(1, 2),
            attn_mask=mask,
            enable_gqa=key.shape[2] != query.shape[2],
        )
        return context.transpose(1, 2)


class StaticKVCache:
    """A cache whose length lives on the device (a 0-d long tensor) and whose buffers never move: the
    prompt's forward must come first, from position 0 (:meth:`reset` rewinds it), then one token per
    forward."""

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
        self.batch = batch
        self.max_length = max_length
        self.position = torch.zeros((), dtype=torch.long, device=device)
        buffers = layer_buffers(
            num_layers, (batch, max_length, kv_heads, head_dim), dtype, device, torch.zeros
        )
        self.layers = [StaticLayerKVCache(self.position, keys, values) for keys, values in buffers]

    @property
    def length(self) -> torch.Tensor:
        return self.position

    def advance(self, tokens: int) -> None:
        self.position.add_(tokens)

    def reset(self) -> None:
        """Back to an empty cache: position 0, zeroed buffers (no value of an earlier batch can be NaN
        under the mask)."""
        self.position.zero_()
        for layer in self.layers:
            layer.keys.zero_()
            layer.values.zero_()


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
