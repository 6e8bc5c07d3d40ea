"""Model FLOPs for the TFLOP/s figure of the log line."""

from __future__ import annotations

from megatron.config.schema import ModelConfig


def flops_per_token(model: ModelConfig, recompute: bool = False) -> float:
    """Matmul FLOPs of one token's forward and backward, as Megatron counts them (2 per multiply-add: the
    query/key/value, output and MLP projections, the attention scores and values, the logits; x3 for forward
    plus backward, x4 with full recomputation), with the model's own widths: key/value heads for
    grouped-query attention, SwiGLU's third matrix, the FFN width as configured rather than assumed 4h."""
    hidden, seq = model.hidden_size, model.seq_length
    query, key_value = model.num_attention_heads * model.head_dim, model.kv_heads * model.head_dim
    mlp_matrices = 3 if model.swiglu else 2
    multiply_adds = (
        hidden * (query + 2 * key_value)  # fused QKV projection
        + query * hidden  # attention output projection
        + mlp_matrices * hidden * model.ffn_hidden_size
        + 2 * seq * query  # scores and the weighted values
    )
    logits = 2 * hidden * model.padded_vocab_size
    passes = 4 if recompute else 3
    return passes * (model.num_layers * 2 * multiply_adds + logits)
