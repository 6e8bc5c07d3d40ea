"""The GPT module on its own: Megatron's parameter names, tied embeddings, causality, init and the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron.config.schema import ModelConfig
from megatron.model import GPTModel
from megatron.model.transformer import ParallelTransformerLayer
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import seed_tensor_parallel_rng


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
    seed_tensor_parallel_rng(0, ParallelContext.single())
    model = GPTModel(small_config(attention_dropout=0.2, hidden_dropout=0.2))
    tokens = torch.randint(0, 128, (2, 16))
    assert not torch.allclose(model(tokens), model(tokens))
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))


def test_initialisation_depends_on_seed_and_layer_number_only():
    """What lets a pipeline stage that builds only its own layers match a single process."""
    config = small_config()
    model = GPTModel(config, seed=5)
    torch.manual_seed(123)  # the default generator plays no part
    alone = ParallelTransformerLayer(config, ParallelContext.single(), layer_number=2, seed=5)
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(model.transformer_layers[2].state_dict()[name], tensor, rtol=0, atol=0)
    other_seed = GPTModel(config, seed=6)
    assert not torch.equal(other_seed.word_embeddings_weight, model.word_embeddings_weight)
    assert not torch.equal(
        model.transformer_layers[0].mlp.dense_h_to_4h.weight, alone.mlp.dense_h_to_4h.weight
    )
