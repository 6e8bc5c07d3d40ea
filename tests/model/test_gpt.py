"""The GPT module on its own: Megatron's parameter names, tied embeddings, causality, init and the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron.config.schema import ModelConfig
from megatron.model import GPTModel


def small_config(**overrides) -> ModelConfig:
    fields = dict(
        num_layers=3, hidden_size=32, num_attention_heads=4, ffn_hidden_size=128, seq_length=16,
        max_position_embeddings=16, padded_vocab_size=128, attention_dropout=0.0, hidden_dropout=0.0,
    )  # fmt: skip
    return ModelConfig(**{**fields, **overrides})


def test_parameter_names_follow_megatron():
    names = set(GPTModel(small_config()).state_dict())
    for expected in (
        "language_model.embedding.word_embeddings.weight",
        "language_model.embedding.position_embeddings.weight",
        "language_model.encoder.layers.0.input_layernorm.weight",
        "language_model.encoder.layers.0.self_attention.query_key_value.weight",
        "language_model.encoder.layers.0.self_attention.dense.bias",
        "language_model.encoder.layers.2.post_attention_layernorm.bias",
        "language_model.encoder.layers.2.mlp.dense_h_to_4h.weight",
        "language_model.encoder.layers.2.mlp.dense_4h_to_h.weight",
        "language_model.encoder.final_layernorm.weight",
    ):
        assert expected in names, expected
    assert not any("lm_head" in name or "output_layer" in name for name in names), "output must be tied"


def test_logits_use_the_input_embedding():
    torch.manual_seed(0)
    model = GPTModel(small_config())
    tokens = torch.randint(0, 128, (2, 16))
    hidden = model.language_model(tokens)
    expected = hidden @ model.language_model.embedding.word_embeddings.weight.T
    torch.testing.assert_close(model(tokens), expected)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPTModel(small_config()).eval()
    tokens = torch.randint(0, 128, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 128
    torch.testing.assert_close(model(tokens)[:, :10], model(changed)[:, :10])
    assert not torch.allclose(model(tokens)[:, 10:], model(changed)[:, 10:])


def test_attention_matches_explicit_softmax_attention():
    torch.manual_seed(0)
    config = small_config()
    attention = GPTModel(config).language_model.encoder.layers[0].self_attention
    hidden = torch.randn(2, 16, 32)
    mixed = attention.query_key_value(hidden).view(2, 16, 4, 24)
    query, key, value = (t.transpose(1, 2) for t in mixed.split(8, dim=-1))
    scores = query @ key.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.triu(torch.ones(16, 16, dtype=torch.bool), 1), float("-inf"))
    context = (scores.softmax(-1) @ value).transpose(1, 2).reshape(2, 16, 32)
    torch.testing.assert_close(attention(hidden), attention.dense(context), rtol=1e-5, atol=1e-5)


def test_output_projections_use_scaled_init():
    torch.manual_seed(0)
    config = small_config(num_layers=8, hidden_size=256, num_attention_heads=8, ffn_hidden_size=1024)
    layer = GPTModel(config).language_model.encoder.layers[0]
    scaled = config.init_method_std / math.sqrt(2 * config.num_layers)
    assert layer.self_attention.dense.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.mlp.dense_4h_to_h.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.mlp.dense_h_to_4h.weight.std().item() == pytest.approx(config.init_method_std, rel=0.05)
    assert torch.count_nonzero(layer.mlp.dense_h_to_4h.bias) == 0


def test_loss_is_masked_token_mean_cross_entropy():
    torch.manual_seed(0)
    model = GPTModel(small_config())
    tokens, labels = torch.randint(0, 128, (2, 16)), torch.randint(0, 128, (2, 16))
    mask = (torch.rand(2, 16) > 0.3).float()
    per_token = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten(), reduction="none")
    torch.testing.assert_close(model(tokens, labels), per_token.mean())
    torch.testing.assert_close(model(tokens, labels, mask), (per_token * mask.flatten()).sum() / mask.sum())


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = GPTModel(small_config(attention_dropout=0.2, hidden_dropout=0.2))
    tokens = torch.randint(0, 128, (2, 16))
    assert not torch.allclose(model(tokens), model(tokens))
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))
