"""Model FLOPs for the TFLOP/s figure of the log line."""

from __future__ import annotations

from megatron.config.schema import ModelConfig


def flops_per_token(model: ModelConfig, recompute: bool = False) -> float:
    """Matmul FLOPs of one token's forward and backward, as Megatron counts them (2 per multiply-add: the QKV,
    output and MLP projections, the attention scores and values, the logits; x3 for forward plus backward,
    x4 with full recomputation), with the FFN width taken as configured rather than assumed to be 4h."""
    layers, hidden, seq = model.num_layers, model.hidden_size, model.seq_length
    ffn_ratio = model.ffn_hidden_size / (4 * hidden)
    per_layer = 2 * (4 * hidden * hidden * (1 + 2 * ffn_ratio) + 2 * seq * hidden)
    logits = 2 * hidden * model.padded_vocab_size
    passes = 4 if recompute else 3
    return passes * (layers * per_layer + logits)
