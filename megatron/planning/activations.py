"""The bytes the forward pass keeps for the backward, per transformer layer and for the loss.

Korthikanti et al. (2022) count s*b*h*(34 + 5*a*s/h) bytes per layer for Megatron's kernels of the time.
This toolkit's forward differs: torch's SDPA (flash or memory-efficient kernels) keeps the query, key,
value, output and a float32 log-sum-exp per head and row, never the a*s*s scores, and its dropout
replays a seed instead of keeping a mask. So the count here follows ``megatron/model/transformer.py``
tensor by tensor (each storage once; views of one tensor share it):

- LayerNorm keeps its input and float32 mean and rstd; RMSNorm (``megatron.parallel.layers.RMSNorm``)
  keeps a float32 copy of its input, its float32 rstd and its normalised output (the weight's multiply).
- Each linear layer keeps its input: the norm's output (gathered to the full sequence under sequence
  parallelism), the attention output, the MLP's activation output.
- The fused QKV projection's output stays alive through the value view; rotary embeddings add the turned
  query and key and their cos/sin tables; SDPA adds its output and log-sum-exp; DeepSpeed-Ulysses its
  all-to-all's output before the output projection.
- GeLU keeps its input; SwiGLU its [gate; up] input, silu(gate) and the product.
- Dropout keeps a one-byte mask per element (CUDA's ``native_dropout``).
- Under torch.autocast (fp32 weights) the residual stream and the norms stay fp32, and each linear keeps
  the bf16 copy of its weight that autocast made.

T divides what lives on the split heads and MLP columns; sequence parallelism also divides what lives on
the residual stream (norm inputs, dropout masks) but not the gathered inputs of the column-parallel
linears. "selective" recomputes the attention core (megatron.parallel.random.recompute around SDPA):
DeepSpeed's checkpoint keeps the core's inputs and the output projection keeps its output, so what is
saved is only the log-sum-exp (and Ulysses' inner output). "full" keeps each recomputed chunk's input.
"""

from __future__ import annotations

from dataclasses import replace

from megatron.config.schema import ModelConfig
from megatron.planning.layout import Layout
from megatron.planning.params import attention_parameters, mlp_parameters

FLOAT32 = 4
MASK = 1  # one bool per element of a CUDA dropout mask


def _local_tokens(layout: Layout, micro_batch: int, seq_length: int) -> int:
    """Tokens of one micro batch on one rank outside attention (Ulysses splits the sequence)."""
    return micro_batch * seq_length // layout.ulysses


def norm_bytes(model: ModelConfig, tokens: int, residual: int) -> int:
    """What one norm keeps for ``tokens`` rows of the residual stream (``residual``: its element size, which
    RMSNorm's normalised output has too)."""
    hidden = model.hidden_size
    if model.normalization == "rmsnorm":
        return FLOAT32 * tokens * hidden + FLOAT32 * tokens + residual * tokens * hidden
    return residual * tokens * hidden + 2 * FLOAT32 * tokens


def layer_activation_bytes(
    model: ModelConfig,
    layout: Layout,
    value: int,
    residual: int | None = None,
    dropout: bool = True,
    recompute: str | None = None,
    autocast: bool = False,
) -> int:
    """Bytes one transformer layer keeps for one micro batch (``layout.micro_batch_size``) on one rank.

    ``value``: bytes per element of the activations (2 in bf16/fp16, 4 in fp32); ``residual``: of the
    residual stream (fp32 under autocast; ``value`` when None). ``dropout``: the hidden dropout is active
    (its masks are kept). ``recompute``: the layout's when None. ``autocast``: fp32 weights under
    torch.autocast, whose bf16 copies of the layer's matrices the linears keep for their backward.
    """
    residual = residual or value
    recompute = recompute or layout.recompute
    tensor = layout.tensor_parallel
    split = tensor if layout.sequence_parallel else 1
    tokens = _local_tokens(layout, layout.micro_batch_size, model.seq_length)
    if recompute == "full":
        return residual * tokens * model.hidden_size // split
    hidden, head_dim = model.hidden_size, model.head_dim
    query = model.num_attention_heads * head_dim // tensor
    key = model.kv_heads * head_dim // tensor
    ffn = model.ffn_hidden_size // tensor
    stream = tokens // split  # rows of the residual stream on this rank

    saved = 2 * norm_bytes(model, stream, residual)
    saved += 2 * value * tokens * hidden  # the norms' outputs, as the QKV and first MLP linears keep them
    saved += value * tokens * (query + 2 * key)  # the QKV output, alive through the value view
    if model.rotary_position_embeddings:
        tables = 2 if value == FLOAT32 else 4  # cos/sin cast once for the query and once for the key
        saved += (
            value * tokens * (query + key)
            + tables * value * model.seq_length // layout.ulysses * model.rotary_dim
        )
    if recompute != "selective":
        saved += FLOAT32 * tokens * model.num_attention_heads // tensor  # SDPA's log-sum-exp
    saved += value * tokens * query  # the attention output, the output projection's input
    if layout.ulysses > 1 and recompute != "selective":
        saved += value * tokens * query  # SDPA's output before the all-to-all back
    if model.swiglu:
        saved += value * tokens * 4 * ffn  # [gate; up], silu(gate), silu(gate) * up
    else:
        saved += value * tokens * 2 * ffn  # GeLU's input and output
    if dropout and model.hidden_dropout > 0:
        saved += 2 * MASK * stream * hidden
    if autocast:
        matrices = replace(model, add_bias_linear=False)
        saved += value * (attention_parameters(matrices, tensor) + mlp_parameters(matrices, tensor))
    return saved


def stage_extra_bytes(
    model: ModelConfig, layout: Layout, value: int, first: bool, last: bool, dropout: bool
) -> int:
    """Per micro batch, what the stage keeps outside its transformer layers: the embedding's dropout mask on
    the first stage, the final norm and the logits' input on the last (the logits themselves are
    :func:`logits_bytes`)."""
    split = layout.tensor_parallel if layout.sequence_parallel else 1
    tokens = _local_tokens(layout, layout.micro_batch_size, model.seq_length)
    extra = 0
    if first and dropout and model.hidden_dropout > 0:
        extra += MASK * tokens * model.hidden_size // split
    if last:
        extra += norm_bytes(model, tokens // split, value) + value * tokens * model.hidden_size
    return extra


def logits_bytes(model: ModelConfig, layout: Layout, value: int) -> int:
    """The loss's peak, on the last stage: the ``[b, s, V/T]`` logits and the float32 tensors the cross
    entropy holds at once. With T = 1 (``language_model_loss``) the logits, their float32 copy and
    log-softmax's output; with T > 1 (``megatron/parallel/cross_entropy.py``) the logits, the float32
    copy, the shifted logits and their exponentials (turned into the softmax in place). In fp32 the copy
    is the logits themselves."""
    tokens = _local_tokens(layout, layout.micro_batch_size, model.seq_length)
    elements = tokens * model.padded_vocab_size // layout.tensor_parallel
    float_copies = (1 if layout.tensor_parallel == 1 else 2) + (value != FLOAT32)
    return elements * (value + FLOAT32 * float_copies)
