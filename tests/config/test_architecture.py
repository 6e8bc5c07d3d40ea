"""The LLaMA-style flags: what they set, Megatron's defaults and meanings, and the errors before launch."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from megatron.config.architecture import architecture_fields, model_flags
from megatron.config.arguments import parse_args
from megatron.config.errors import ConfigError
from tests.config.recipe import build

LLAMA = {
    "--use-rotary-position-embeddings": True, "--no-position-embedding": True, "--swiglu": True,
    "--normalization": "rmsnorm", "--disable-bias-linear": True,
    "--untie-embeddings-and-output-weights": True, "--num-key-value-heads": "4",
}  # fmt: skip


def test_llama_recipe_flags_set_the_variants(tmp_path):
    model = build(tmp_path, LLAMA).model
    assert model.rotary_position_embeddings and not model.learned_position_embeddings
    assert model.rotary_dim == 64 and model.rotary_base == 10000.0
    assert (model.swiglu, model.normalization, model.add_bias_linear) == (True, "rmsnorm", False)
    assert model.untie_embeddings_and_output_weights and model.kv_heads == 4
    # Megatron's SwiGLU width: int(2/3 x 4h) rounded down to a multiple of 64 (1024 -> 2730 -> 2688).
    assert model.ffn_hidden_size == 2688


def test_rotary_keeps_the_learned_table_unless_told_as_megatron_deepspeed_does(tmp_path):
    both = build(tmp_path, {"--use-rotary-position-embeddings": True}).model
    assert both.rotary_position_embeddings and both.learned_position_embeddings
    rope = build(tmp_path, {"--position-embedding-type": "rope", "--rotary-percent": "0.5"}).model
    assert rope.rotary_position_embeddings and not rope.learned_position_embeddings and rope.rotary_dim == 32
    assert build(tmp_path, {"--norm-epsilon": "1e-6"}).model.layernorm_epsilon == 1e-6


def test_query_key_layer_scaling_is_accepted_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="megatron"):
        model = build(tmp_path, {"--no-query-key-layer-scaling": True}).model
    assert model == build(tmp_path).model
    assert "--no-query-key-layer-scaling: no effect here" in caplog.text


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"--num-key-value-heads": "5"}, "--num-key-value-heads 5 does not divide --num-attention-heads 16"),
        (
            {"--num-key-value-heads": "2", "--tensor-model-parallel-size": "4"},
            "--num-key-value-heads 2 with --tensor-model-parallel-size 4: .* multiple of T",
        ),
        (
            {"--num-key-value-heads": "4", "--ds-sequence-parallel-size": "8"},
            "leaves 4 per rank, which DeepSpeed-Ulysses' all-to-all cannot split over --ds-sequence-parallel",
        ),
        ({"--rotary-percent": "0"}, r"--rotary-percent 0.0: give a fraction in \(0, 1\]"),
        ({"--use-rotary-position-embeddings": True, "--rotary-percent": "0.3"}, "leaves 19: .* must be even"),
        (
            {"--use-rotary-position-embeddings": True, "--position-embedding-type": "learned_absolute"},
            "choose one",
        ),
    ],
)
def test_errors_name_the_flags(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes)


def test_bert_and_t5_refuse_the_decoder_variants():
    args = parse_args(["--num-attention-heads", "16", "--swiglu", "--normalization", "rmsnorm"])
    with pytest.raises(ConfigError, match="--swiglu, --normalization rmsnorm: .*pretrain_bert.py"):
        architecture_fields(args, "bert")
    assert architecture_fields(args, "gpt")["swiglu"]


def test_model_flags_rebuild_the_model(tmp_path):
    """The flag line the import tool prints builds the model it describes."""
    original = build(
        tmp_path, {**LLAMA, "--kv-channels": "32", "--rotary-position-embeddings-theta": "5e5"}
    ).model
    line = model_flags(original)
    printed = {
        flag: True if index + 1 == len(line) or line[index + 1].startswith("--") else line[index + 1]
        for index, flag in enumerate(line)
        if flag.startswith("--")
    }
    changes = {**{key: None for key in LLAMA}, **printed}
    rebuilt = build(tmp_path, changes).model
    assert rebuilt == dataclasses.replace(original, seq_length=rebuilt.seq_length)
