"""The generator every text-generation test drives, through the one fixture ``text_generator``: the
library's own generator over a tiny randomly initialised GPT (64 positions, fp32) and the bundled GPT-2
BPE tokenizer."""

from __future__ import annotations

import pytest

from megatron.config.schema import ModelConfig
from megatron.data.tokenizer import build_tokenizer
from megatron.model import GPTModel
from megatron.text_generation.generator import ModelTextGenerator
from tests.data.corpora import MERGES, VOCAB

TINY_GPT = ModelConfig(
    num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=64,
    max_position_embeddings=64, padded_vocab_size=8192, attention_dropout=0.0, hidden_dropout=0.0,
)  # fmt: skip


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES, None)


@pytest.fixture(scope="session")
def text_generator(tokenizer) -> ModelTextGenerator:
    return ModelTextGenerator(GPTModel(TINY_GPT, seed=7), tokenizer)
