"""Our LLaMA-style GPT against HF's LlamaForCausalLM: the same logits (float32, 1e-5) after converting
either way, for grouped-query, multi-query and multi-head attention, tied and untied outputs, biases and a
head size of its own."""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megatron.checkpointing.hf_llama import from_llama, to_llama  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.config.schema import ModelConfig  # noqa: E402
from megatron.model import GPTModel  # noqa: E402

VOCAB = 100  # the tokenizer's; the model pads it to 128


def llama_config(**overrides) -> ModelConfig:
    fields = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, ffn_hidden_size=96,
        seq_length=16, max_position_embeddings=16, padded_vocab_size=128, attention_dropout=0.0,
        hidden_dropout=0.0, layernorm_epsilon=1e-6, learned_position_embeddings=False,
        rotary_position_embeddings=True, rotary_base=500.0, swiglu=True, normalization="rmsnorm",
        add_bias_linear=False, untie_embeddings_and_output_weights=True,
    )  # fmt: skip
    return ModelConfig(**{**fields, **overrides})


VARIANTS = {
    "gqa-untied": {},
    "mha-tied": {"num_key_value_heads": None, "untie_embeddings_and_output_weights": False},
    "mqa-biases": {"num_key_value_heads": 1, "add_bias_linear": True},
    "own-head-size": {"kv_channels": 8},
}


def random_biases(model: torch.nn.Module) -> None:
    """Biases start at zero; give them values so that a misplaced one shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)


def our_logits(model: GPTModel, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens)[..., :VOCAB]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_gives_hf_the_same_logits(variant):
    config = llama_config(**VARIANTS[variant])
    torch.manual_seed(0)
    ours = GPTModel(config).eval()
    random_biases(ours)
    hf_config, hf_state = to_llama(ours.state_dict(), config, vocab_size=VOCAB)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(hf_state, strict=True)
    tokens = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, our_logits(ours, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_import_gives_us_the_same_logits(variant):
    config = llama_config(**VARIANTS[variant])
    hf_config, _ = to_llama(GPTModel(config).state_dict(), config, vocab_size=VOCAB)
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    random_biases(hf)
    state_dict, imported = from_llama(hf.state_dict(), hf_config, make_vocab_size_divisible_by=128)
    assert imported == dataclasses.replace(
        config, seq_length=16, init_method_std=hf_config.initializer_range, attention_dropout=0.0
    )
    ours = GPTModel(imported).eval()
    ours.load_state_dict(state_dict, strict=True)
    tokens = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(our_logits(ours, tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"learned_position_embeddings": True}, "a learned position table"),
        ({"rotary_percent": 0.5}, "--rotary-percent 0.5"),
        ({"swiglu": False, "ffn_hidden_size": 128}, "a GeLU MLP"),
        ({"normalization": "layernorm"}, "LayerNorm"),
    ],
)
def test_models_llama_cannot_compute_are_refused(overrides, reason):
    config = llama_config(**overrides)
    with pytest.raises(ConfigError, match=reason):
        to_llama(GPTModel(config).state_dict(), config)
