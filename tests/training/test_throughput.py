"""The FLOP count behind the log line's TFLOP/s: Megatron's formula for GPT, and for the LLaMA-style shapes
the multiply-adds of the model's own matrices."""

from __future__ import annotations

import pytest

from megatron.model import GPTModel
from megatron.training.throughput import flops_per_token
from tests.checkpointing.test_hf_llama import llama_config
from tests.model.test_gpt import small_config


def test_gpt_count_is_megatrons_formula():
    config = small_config(num_layers=3, hidden_size=32, ffn_hidden_size=128, seq_length=16)
    layers, hidden, seq, vocab = 3, 32, 16, config.padded_vocab_size
    megatron = 72 * layers * hidden**2 * (1 + seq / (6 * hidden) + vocab / (12 * layers * hidden))
    assert flops_per_token(config) == pytest.approx(megatron)
    assert flops_per_token(config, recompute=True) == pytest.approx(megatron * 4 / 3)


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 1}, {"kv_channels": 8}])
def test_llama_count_is_the_matrices_of_the_model(overrides):
    """6 FLOPs per weight of every matrix a token goes through (forward and backward), plus attention's
    scores and values, which have no weights: 2 x seq x query width multiply-adds per layer."""
    config = llama_config(**overrides)
    model = GPTModel(config)
    weights = sum(
        param.numel()
        for name, param in model.named_parameters()
        if param.dim() == 2 and "embedding" not in name  # the input embedding is a lookup, not a matmul
    )
    attention = config.num_layers * 2 * config.seq_length * config.num_attention_heads * config.head_dim
    assert flops_per_token(config) == pytest.approx(6 * weights + 6 * attention)
