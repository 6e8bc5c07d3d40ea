"""One decoding step (a token per row through the whole model) captured as a CUDA graph and replayed.

A decoding step of a billion-parameter model at small batches is bound by the host: each of its hundreds
of kernels takes longer to launch from Python than to run. Replaying a captured graph launches them all at
once. A graph replays fixed kernels on fixed buffers, so the step runs on a :class:`StaticKVCache`, whose
position lives on the device, with an input buffer for the tokens and the graph's own output buffer for the
logits. Capturing costs a few warm-up forwards; the captured steps are kept by batch size and cache length
(rounded up to :data:`LENGTH_BUCKET`) and reused by later generations of the same shape.

Used on one CUDA device without tensor parallelism and without MoE layers (whose routing sizes its buffers
from the data); elsewhere decoding runs eagerly, and :func:`decoding_path` says which path runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from megatron.model.kv_cache import StaticKVCache
from megatron.model.moe import MoEMLP

# Cache lengths are rounded up to a multiple of this, so that nearby lengths share a captured step.
LENGTH_BUCKET = 128
# Captured steps kept at once; each holds a key/value cache of its shape.
KEPT_GRAPHS = 2
# Eager forwards before capture (cuBLAS and the allocator settle on a side stream, as CUDA graphs require).
WARMUP_FORWARDS = 2


def decoding_path(model: torch.nn.Module, tensor_size: int) -> str:
    """``"cuda-graph"`` when a decoding step can be captured for ``model``, else why it runs eagerly."""
    if model.output_weight.device.type != "cuda":
        return "eager (not on a CUDA device)"
    if tensor_size > 1:
        return "eager (tensor parallelism)"
    if any(isinstance(module, MoEMLP) for module in model.modules()):
        return "eager (MoE layers)"
    return "cuda-graph"


class CapturedDecodeStep:
    """``model`` reading one token per row at the cache's position, captured; call it with the tokens
    (``[batch, 1]``) to get the logits of the next position (``[batch, vocab]``, valid until the next
    call)."""

    def __init__(self, model: torch.nn.Module, cache: StaticKVCache):
        self.cache = cache
        device = cache.position.device
        self.tokens = torch.zeros(cache.batch, 1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_FORWARDS):
                model(self.tokens, kv_cache=cache)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model(self.tokens, kv_cache=cache)[:, -1]
        cache.reset()  # the warm-up forwards wrote and advanced

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


class DecodeGraphs:
    """The captured decoding steps of one model, by (batch, cache length), the most recent
    :data:`KEPT_GRAPHS` kept."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._steps: OrderedDict[tuple[int, int], CapturedDecodeStep] = OrderedDict()

    def step_for(self, batch: int, length: int, kv_heads: int) -> CapturedDecodeStep:
        """A captured step whose reset cache holds ``batch`` rows of at least ``length`` positions."""
        bucket = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
        config = self.model.config
        bucket = min(bucket, max(length, config.max_position_embeddings))
        key = (batch, bucket)
        step = self._steps.pop(key, None)
        if step is None:
            while len(self._steps) >= KEPT_GRAPHS:
                self._steps.popitem(last=False)
            weight = self.model.output_weight
            cache = StaticKVCache(
                config.num_layers, batch, bucket, kv_heads, config.head_dim, weight.dtype, weight.device
            )
            step = CapturedDecodeStep(self.model, cache)
        else:
            step.cache.reset()
        self._steps[key] = step
        return step
