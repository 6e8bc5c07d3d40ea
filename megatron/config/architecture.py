"""The decoder variants of Megatron-DeepSpeed's LLaMA recipes: their flags, and the model fields they set.

Names and meanings are Megatron-DeepSpeed's (with Megatron-LM's spellings where the two differ): rotary
position embeddings, SwiGLU, RMSNorm, no linear biases, an output layer of its own, grouped-query attention.
The model code reads the resulting :class:`~megatron.config.schema.ModelConfig` fields only; every check
that depends on the parallel layout is made here, before any process starts.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("layernorm", "rmsnorm")
POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope")
# Megatron's SwiGLU width when --ffn-hidden-size is not given: 2/3 of 4h (three matrices instead of two
# keep the parameter count), rounded down to a multiple of 64.
SWIGLU_FFN_MULTIPLE = 64


def add_architecture_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("architecture (LLaMA-style variants)")
    group.add_argument(
        "--use-rotary-position-embeddings",
        action="store_true",
        help="Rotary position embeddings on query and key (HF LLaMA's layout). As in Megatron-DeepSpeed the "
        "learned absolute position table stays unless --no-position-embedding is given.",
    )
    group.add_argument(
        "--position-embedding-type",
        choices=POSITION_EMBEDDING_TYPES,
        default=None,
        help="Megatron-LM's form: rope (rotary only) or learned_absolute (the table only, the default).",
    )
    group.add_argument(
        "--no-position-embedding",
        dest="add_position_embedding",
        action="store_false",
        help="No learned absolute position table.",
    )
    group.add_argument(
        "--rotary-percent",
        type=float,
        default=1.0,
        help="Fraction of each head's channels that rotate (the first ones). Default 1.0.",
    )
    group.add_argument(
        "--rotary-position-embeddings-theta",
        "--rotary-base",
        dest="rotary_base",
        type=float,
        default=10000.0,
        help="RoPE base (theta). Default 10000.",
    )
    group.add_argument(
        "--swiglu",
        action="store_true",
        help="Gated SiLU MLP. Without --ffn-hidden-size its width is 2/3 x 4h rounded down to a multiple "
        "of 64, as in Megatron.",
    )
    group.add_argument("--normalization", choices=NORMALIZATIONS, default="layernorm", help="Norm layers.")
    group.add_argument(
        "--disable-bias-linear",
        dest="add_bias_linear",
        action="store_false",
        help="No biases in the attention and MLP linear layers.",
    )
    group.add_argument(
        "--untie-embeddings-and-output-weights",
        action="store_true",
        help="An output layer of its own instead of the input embedding's transpose.",
    )
    group.add_argument(
        "--num-key-value-heads",
        type=int,
        default=None,
        help="Key/value heads for grouped-query attention (1: multi-query). Default: --num-attention-heads.",
    )
    scaling = group.add_mutually_exclusive_group()
    scaling.add_argument(
        "--no-query-key-layer-scaling",
        dest="apply_query_key_layer_scaling",
        action="store_false",
        default=None,
        help="Accepted; the attention softmax runs in float32 here either way (see the log).",
    )
    scaling.add_argument(
        "--apply-query-key-layer-scaling",
        dest="apply_query_key_layer_scaling",
        action="store_true",
        help="Accepted; the attention softmax runs in float32 here either way (see the log).",
    )


def swiglu_ffn_hidden_size(hidden_size: int) -> int:
    return int(4 * hidden_size * 2 / 3) // SWIGLU_FFN_MULTIPLE * SWIGLU_FFN_MULTIPLE


def architecture_fields(args: argparse.Namespace, model_type: str) -> dict[str, Any]:
    """The ModelConfig fields of the variant flags, checked on their own (layout checks: below)."""
    rotary = args.use_rotary_position_embeddings or args.position_embedding_type == "rope"
    if args.use_rotary_position_embeddings and args.position_embedding_type == "learned_absolute":
        raise ConfigError(
            "--use-rotary-position-embeddings with --position-embedding-type learned_absolute: choose one "
            "(--position-embedding-type rope is rotary without the learned table)."
        )
    learned = args.add_position_embedding and args.position_embedding_type != "rope"
    if not 0.0 < args.rotary_percent <= 1.0:
        raise ConfigError(f"--rotary-percent {args.rotary_percent}: give a fraction in (0, 1].")
    if args.rotary_base <= 0:
        raise ConfigError(f"--rotary-position-embeddings-theta {args.rotary_base}: give a positive base.")
    heads, kv_heads = args.num_attention_heads, args.num_key_value_heads
    if kv_heads is not None and (kv_heads <= 0 or heads % kv_heads):
        raise ConfigError(
            f"--num-key-value-heads {kv_heads} does not divide --num-attention-heads {heads}: every "
            "key/value head serves the same number of query heads. Choose a divisor of the head count."
        )
    fields = dict(
        learned_position_embeddings=learned,
        rotary_position_embeddings=rotary,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        swiglu=args.swiglu,
        normalization=args.normalization,
        add_bias_linear=args.add_bias_linear,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        num_key_value_heads=kv_heads,
    )
    if args.apply_query_key_layer_scaling is not None:
        flag = "--apply" if args.apply_query_key_layer_scaling else "--no"
        logger.info(
            "%s-query-key-layer-scaling: no effect here; attention scores are scaled by 1/sqrt(head size) "
            "inside SDPA, whose softmax accumulates in float32 (Megatron's layer scaling guards an fp16 "
            "softmax against overflow)",
            flag,
        )
    changed = [flag for flag, value in _variant_flags(args).items() if value]
    if model_type != "gpt" and changed:
        raise ConfigError(
            f"{', '.join(changed)}: these decoder variants are for pretrain_gpt.py; "
            f"pretrain_{model_type}.py builds Megatron's {model_type.upper()} as it is. Drop them."
        )
    return fields


def _variant_flags(args: argparse.Namespace) -> dict[str, bool]:
    return {
        "--use-rotary-position-embeddings": args.use_rotary_position_embeddings,
        "--position-embedding-type": args.position_embedding_type is not None,
        "--no-position-embedding": not args.add_position_embedding,
        "--swiglu": args.swiglu,
        "--normalization rmsnorm": args.normalization == "rmsnorm",
        "--disable-bias-linear": not args.add_bias_linear,
        "--untie-embeddings-and-output-weights": args.untie_embeddings_and_output_weights,
        "--num-key-value-heads": args.num_key_value_heads is not None,
    }


def check_attention_split(num_kv_heads: int, tensor_size: int, ulysses_size: int) -> None:
    """Key/value heads are split over the tensor-parallel ranks with their query heads, then over the
    Ulysses ranks by its all-to-all; both need whole heads on every rank."""
    if num_kv_heads % tensor_size:
        raise ConfigError(
            f"--num-key-value-heads {num_kv_heads} with --tensor-model-parallel-size {tensor_size}: each "
            "rank holds whole key/value heads with their query heads, so the key/value heads must be a "
            "multiple of T (replicating them over more ranks is not supported). Lower T or raise the heads."
        )
    if (num_kv_heads // tensor_size) % ulysses_size:
        raise ConfigError(
            f"--num-key-value-heads {num_kv_heads} over --tensor-model-parallel-size {tensor_size} leaves "
            f"{num_kv_heads // tensor_size} per rank, which DeepSpeed-Ulysses' all-to-all cannot split over "
            f"--ds-sequence-parallel-size {ulysses_size}. Choose sizes that divide them."
        )


def model_flags(model: ModelConfig) -> list[str]:
    """The ``pretrain_gpt.py`` flags that build ``model`` (say, one imported from HuggingFace)."""
    flags = [
        "--num-layers", str(model.num_layers), "--hidden-size", str(model.hidden_size),
        "--num-attention-heads", str(model.num_attention_heads),
        "--ffn-hidden-size", str(model.ffn_hidden_size),
        "--max-position-embeddings", str(model.max_position_embeddings),
        "--layernorm-epsilon", f"{model.layernorm_epsilon:g}",
    ]  # fmt: skip
    if model.kv_channels is not None:
        flags += ["--kv-channels", str(model.kv_channels)]
    if model.rotary_position_embeddings:
        flags += (
            ["--position-embedding-type", "rope"]
            if not model.learned_position_embeddings
            else ["--use-rotary-position-embeddings"]
        )
        flags += ["--rotary-position-embeddings-theta", f"{model.rotary_base:g}"]
    elif not model.learned_position_embeddings:
        flags.append("--no-position-embedding")
    if model.rotary_percent != 1.0:
        flags += ["--rotary-percent", f"{model.rotary_percent:g}"]
    if model.num_key_value_heads is not None:
        flags += ["--num-key-value-heads", str(model.num_key_value_heads)]
    switches = {
        "--swiglu": model.swiglu,
        "--disable-bias-linear": not model.add_bias_linear,
        "--untie-embeddings-and-output-weights": model.untie_embeddings_and_output_weights,
    }
    flags += [flag for flag, on in switches.items() if on]
    if model.normalization != "layernorm":
        flags += ["--normalization", model.normalization]
    return flags
