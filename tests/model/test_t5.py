"""T5: Megatron's names and head size, a causal decoder, an encoder read under its padding mask."""

from __future__ import annotations

import pytest
import torch

from megatron.checkpointing import reshape
from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.t5 import T5Model
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import configure_recomputation


def small_config(**overrides) -> ModelConfig:
    settings = dict(
        num_layers=2, hidden_size=32, num_attention_heads=4, kv_channels=12, ffn_hidden_size=48,
        seq_length=16, max_position_embeddings=16, padded_vocab_size=64, attention_dropout=0.0,
        hidden_dropout=0.0, openai_gelu=False,
    )  # fmt: skip
    return ModelConfig(**{**settings, **overrides})


def model() -> T5Model:
    t5 = T5Model(small_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in t5.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return t5.eval()


def batch():
    generator = torch.Generator().manual_seed(1)
    encoder = torch.randint(0, 60, (2, 16), generator=generator)
    decoder = torch.randint(0, 60, (2, 8), generator=generator)
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, 9:] = 0
    return encoder, decoder, padding


def test_megatron_names_and_kv_channels():
    state = T5Model(small_config()).state_dict()
    # --kv-channels 12 x 4 heads: projections of 48, not the hidden size 32.
    assert state["language_model.encoder.layers.0.self_attention.query_key_value.weight"].shape == (144, 32)
    assert state["language_model.decoder.layers.1.inter_attention.query.weight"].shape == (48, 32)
    assert state["language_model.decoder.layers.1.inter_attention.key_value.weight"].shape == (96, 32)
    assert state["language_model.decoder.layers.1.inter_attention.dense.weight"].shape == (32, 48)
    for name in (
        "language_model.embedding.word_embeddings.weight",
        "language_model.embedding.position_embeddings.weight",
        "language_model.encoder.final_layernorm.weight",
        "language_model.decoder.layers.0.post_inter_attention_layernorm.weight",
        "language_model.decoder.final_layernorm.bias",
        "lm_head.bias",
    ):
        assert name in state, name
    assert not any("tokentype" in name for name in state)


def test_split_dimensions_of_t5_parameters_are_the_converters():
    for name, param in T5Model(small_config()).named_parameters():
        expected = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        assert reshape.tensor_parallel_dim(name) == expected, name


def test_decoder_is_causal_and_encoder_padding_is_ignored():
    t5 = model()
    encoder, decoder, padding = batch()
    with torch.no_grad():
        logits = t5(encoder, decoder, padding)
        later = decoder.clone()
        later[:, 5:] = 3
        assert torch.allclose(t5(encoder, later, padding)[:, :5], logits[:, :5], atol=1e-6)
        assert not torch.allclose(t5(encoder, later, padding)[:, 5:], logits[:, 5:])
        padded = encoder.clone()
        padded[1, 9:] = 5
        changed = t5(padded, decoder, padding)
        assert torch.allclose(changed, logits, atol=1e-6)
        padded[0, 3] = 5  # a real token of sample 0: its outputs change
        assert not torch.allclose(t5(padded, decoder, padding)[0], logits[0])
    assert logits.shape == (2, 8, 64)


def test_loss_is_the_masked_mean_of_the_decoder_predictions():
    t5 = model()
    encoder, decoder, padding = batch()
    labels = torch.randint(0, 60, decoder.shape, generator=torch.Generator().manual_seed(3))
    loss_mask = torch.ones(decoder.shape)
    loss_mask[1, 4:] = 0
    with torch.no_grad():
        loss = t5(encoder, decoder, padding, labels, loss_mask)
        logits = t5(encoder, decoder, padding)
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(loss, (losses * loss_mask.reshape(-1)).sum() / loss_mask.sum())


@pytest.mark.parametrize(
    "recompute",
    [
        RecomputeConfig("full", "uniform", 1),
        RecomputeConfig("full", "block", 1),
        RecomputeConfig("selective"),
    ],
)
def test_recomputation_gives_the_same_gradients(single_process_group, recompute):
    """Encoder and decoder layers recomputed in backward (the decoder's encoder input passed explicitly, so
    its gradient reaches the encoder) give the plain model's loss and gradients."""
    configure_recomputation(ParallelContext.single(), None)
    encoder, decoder, padding = batch()
    labels = torch.randint(0, 60, decoder.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for config in (RecomputeConfig(), recompute):
        t5 = T5Model(small_config(), recompute=config)
        loss = t5(encoder, decoder, padding, labels, torch.ones(decoder.shape))
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in t5.named_parameters()}))
    (plain_loss, plain), (loss, grads) = results
    torch.testing.assert_close(loss, plain_loss)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    assert plain["language_model.encoder.layers.0.self_attention.query_key_value.weight"].abs().sum() > 0
