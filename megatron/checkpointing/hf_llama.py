"""Our LLaMA-style GPT's weights as HuggingFace ``LlamaForCausalLM`` weights, and back.

A model with rotary positions (on every channel), RMSNorm and SwiGLU computes what ``LlamaForCausalLM``
computes: the rotary layout is HF's (``megatron.model.rotary``), so query and key weights need no
permutation. The storage differs in names and in three fused tensors:

* the QKV projection: ours ``[kv heads, (q x groups, k, v), head_dim]`` rows, HF's separate ``q_proj``,
  ``k_proj`` and ``v_proj``;
* SwiGLU's first projection: ours ``[gate; up]``, HF's ``gate_proj`` and ``up_proj``;
* the vocabulary: our tables have ``padded_vocab_size`` rows; export cuts the padding rows when the
  tokenizer's size is known, import appends zero rows.

Biases (``attention_bias`` / ``mlp_bias`` in HF's config) and a tied output (``tie_word_embeddings``)
convert too. Mistral configs import as well (full attention here: the same model for sequences no longer
than its ``sliding_window``). Pure functions of state dicts; ``tools/convert_checkpoint_to_hf.py`` does
the files.
"""

from __future__ import annotations

import logging

import torch
import transformers

from megatron.config.build import pad_vocab_size
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig

logger = logging.getLogger(__name__)

WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"
OUTPUT_LAYER = "language_model.output_layer.weight"
LAYER = "language_model.encoder.layers.{}."
FINAL_NORM = "language_model.encoder.final_layernorm.weight"
QKV = "self_attention.query_key_value"
GATE_UP = "mlp.dense_h_to_4h"

HF_EMBEDDINGS = "model.embed_tokens.weight"
HF_LM_HEAD = "lm_head.weight"
HF_NORM = "model.norm.weight"
HF_LAYER = "model.layers.{}."
# Our name inside a layer -> HF's, for the tensors that map one to one.
LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "self_attention.dense.bias": "self_attn.o_proj.bias",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    "mlp.dense_4h_to_h.bias": "mlp.down_proj.bias",
}
LLAMA_TYPES = ("llama", "mistral")


def is_llama_style(model_config: ModelConfig) -> bool:
    """Whether a checkpoint of this config exports as ``LlamaForCausalLM`` (rather than GPT-2)."""
    return (
        model_config.swiglu
        or model_config.normalization == "rmsnorm"
        or model_config.rotary_position_embeddings
    )


def check_exportable(model_config: ModelConfig) -> None:
    refusals = [
        (model_config.learned_position_embeddings, "a learned position table (LLaMA has rotary positions "
         "only; train with --no-position-embedding or --position-embedding-type rope)"),
        (not model_config.rotary_position_embeddings, "no rotary position embeddings"),
        (model_config.rotary_percent != 1.0, f"--rotary-percent {model_config.rotary_percent} (LLaMA "
         "rotates every channel)"),
        (not model_config.swiglu, "a GeLU MLP (LLaMA's is SwiGLU)"),
        (model_config.normalization != "rmsnorm", "LayerNorm (LLaMA's is RMSNorm)"),
    ]  # fmt: skip
    found = [reason for refused, reason in refusals if refused]
    if found:
        raise ConfigError(
            f"this checkpoint has {'; '.join(found)}: LlamaForCausalLM cannot compute that model, so an "
            "export would change its outputs."
        )


def llama_config(
    model_config: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_config.hidden_size,
        intermediate_size=model_config.ffn_hidden_size,
        num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_attention_heads,
        num_key_value_heads=model_config.kv_heads,
        head_dim=model_config.head_dim,
        hidden_act="silu",
        max_position_embeddings=model_config.max_position_embeddings,
        initializer_range=model_config.init_method_std,
        rms_norm_eps=model_config.layernorm_epsilon,
        rope_theta=model_config.rotary_base,
        attention_bias=model_config.add_bias_linear,
        mlp_bias=model_config.add_bias_linear,
        attention_dropout=model_config.attention_dropout,
        tie_word_embeddings=not model_config.untie_embeddings_and_output_weights,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        architectures=["LlamaForCausalLM"],
    )


def split_qkv(tensor: torch.Tensor, model_config: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Our fused QKV weight (or bias) as HF's q, k and v projections."""
    kv_heads, groups = model_config.kv_heads, model_config.num_attention_heads // model_config.kv_heads
    rest = tensor.shape[1:]
    grouped = tensor.reshape(kv_heads, groups + 2, model_config.head_dim, *rest)
    query = grouped[:, :groups].reshape(-1, *rest)
    return query, grouped[:, groups].reshape(-1, *rest), grouped[:, groups + 1].reshape(-1, *rest)


def fuse_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, model_config: ModelConfig):
    """The inverse of :func:`split_qkv`."""
    kv_heads, head_dim = model_config.kv_heads, model_config.head_dim
    rest = query.shape[1:]
    query = query.reshape(kv_heads, -1, head_dim, *rest)
    parts = (query, key.reshape(kv_heads, 1, head_dim, *rest), value.reshape(kv_heads, 1, head_dim, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def to_llama(
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> tuple[transformers.LlamaConfig, dict[str, torch.Tensor]]:
    """``LlamaForCausalLM``'s config and state dict from our full (tensor-parallel size 1) state dict;
    ``vocab_size`` (the tokenizer's) cuts the padding rows."""
    check_exportable(model_config)
    remaining = dict(state_dict)
    padded = model_config.padded_vocab_size
    vocab_size = padded if vocab_size is None else vocab_size
    if not 0 < vocab_size <= padded:
        raise ConfigError(
            f"--vocab-size {vocab_size}: must be between 1 and the checkpoint's {padded} embedding rows."
        )
    hf = {HF_EMBEDDINGS: _pop(remaining, WORD_EMBEDDINGS)[:vocab_size].clone()}
    if model_config.untie_embeddings_and_output_weights:
        hf[HF_LM_HEAD] = _pop(remaining, OUTPUT_LAYER)[:vocab_size].clone()
    else:
        hf[HF_LM_HEAD] = hf[HF_EMBEDDINGS]  # tied: HF's state dict lists it, save_pretrained stores it once
    bias_kinds = ("weight", "bias") if model_config.add_bias_linear else ("weight",)
    for layer in range(model_config.num_layers):
        ours, theirs = LAYER.format(layer), HF_LAYER.format(layer)
        for kind in bias_kinds:
            query, key, value = split_qkv(_pop(remaining, f"{ours}{QKV}.{kind}"), model_config)
            for name, tensor in (("q_proj", query), ("k_proj", key), ("v_proj", value)):
                hf[f"{theirs}self_attn.{name}.{kind}"] = tensor.contiguous()
            gate, up = _pop(remaining, f"{ours}{GATE_UP}.{kind}").chunk(2)
            hf[f"{theirs}mlp.gate_proj.{kind}"] = gate.contiguous()
            hf[f"{theirs}mlp.up_proj.{kind}"] = up.contiguous()
        for name, hf_name in LAYER_NAMES.items():
            if name.endswith("bias") and not model_config.add_bias_linear:
                continue
            hf[f"{theirs}{hf_name}"] = _pop(remaining, f"{ours}{name}")
    hf[HF_NORM] = _pop(remaining, FINAL_NORM)
    if remaining:
        raise ConfigError(
            f"the state dict has parameters LLaMA has no place for ({', '.join(sorted(remaining)[:4])}); "
            f"it is not a {model_config.num_layers}-layer model of this config."
        )
    return llama_config(model_config, vocab_size, bos_token_id, eos_token_id), hf


def model_config_from_llama(hf_config, make_vocab_size_divisible_by: int = 128) -> ModelConfig:
    """Our ``ModelConfig`` for a LLaMA (or Mistral) config; refuses what our model does not compute."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in LLAMA_TYPES:
        raise ConfigError(
            f"the HF model is of type {model_type!r} (config.json 'model_type'); LLaMA-style import takes "
            f"{' or '.join(LLAMA_TYPES)}."
        )
    rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", None) or 10000.0)
    refusals = [
        (hf_config.hidden_act != "silu", f"hidden_act {hf_config.hidden_act!r} (SwiGLU here is SiLU-gated)"),
        (rope_type != "default", f"rope scaling {rope_type!r} (plain RoPE here)"),
        (getattr(hf_config, "pretraining_tp", 1) != 1, "pretraining_tp != 1"),
    ]
    unsupported = [reason for refused, reason in refusals if refused]
    if unsupported:
        raise ConfigError(
            f"the {model_type} config has {'; '.join(unsupported)}: this toolkit's model cannot compute it, "
            "so converting it would change its outputs."
        )
    window = getattr(hf_config, "sliding_window", None)
    if window is not None and window < hf_config.max_position_embeddings:
        logger.warning(
            "sliding_window %d: attention here is full causal attention, the same model for sequences of "
            "up to %d tokens; train with --seq-length %d or less to keep it so.",
            window,
            window,
            window,
        )
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    bias = bool(getattr(hf_config, "attention_bias", False))
    if bias != bool(getattr(hf_config, "mlp_bias", False)):
        raise ConfigError(
            "the config has attention_bias and mlp_bias set differently; this toolkit's "
            "--disable-bias-linear covers both, so only models with both or neither convert."
        )
    return ModelConfig(
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        num_attention_heads=heads,
        ffn_hidden_size=hf_config.intermediate_size,
        seq_length=hf_config.max_position_embeddings,
        max_position_embeddings=hf_config.max_position_embeddings,
        padded_vocab_size=pad_vocab_size(hf_config.vocab_size, make_vocab_size_divisible_by, 1),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        init_method_std=hf_config.initializer_range,
        attention_dropout=float(getattr(hf_config, "attention_dropout", 0.0)),
        hidden_dropout=0.0,
        layernorm_epsilon=hf_config.rms_norm_eps,
        kv_channels=head_dim if head_dim * heads != hf_config.hidden_size else None,
        learned_position_embeddings=False,
        rotary_position_embeddings=True,
        rotary_base=float(rope_theta),
        swiglu=True,
        normalization="rmsnorm",
        add_bias_linear=bias,
        untie_embeddings_and_output_weights=not hf_config.tie_word_embeddings,
        num_key_value_heads=kv_heads if kv_heads != heads else None,
    )


def from_llama(
    hf_state_dict: dict[str, torch.Tensor], hf_config, make_vocab_size_divisible_by: int = 128
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Our full (tensor-parallel size 1) state dict and ``ModelConfig`` from a LLaMA model's weights."""
    model_config = model_config_from_llama(hf_config, make_vocab_size_divisible_by)
    remaining = {
        name: tensor for name, tensor in hf_state_dict.items() if not name.endswith("rotary_emb.inv_freq")
    }
    what = "the LLaMA weights"
    padded = model_config.padded_vocab_size
    ours = {WORD_EMBEDDINGS: _padded(_pop(remaining, HF_EMBEDDINGS, what), padded)}
    lm_head = remaining.pop(HF_LM_HEAD, None)
    if not model_config.untie_embeddings_and_output_weights and lm_head is not None:
        if not torch.equal(lm_head, hf_state_dict[HF_EMBEDDINGS]):
            raise ConfigError(
                f"config.json ties the output to the embedding but {HF_LM_HEAD} differs from "
                f"{HF_EMBEDDINGS}: the weights and config.json are of different models."
            )
    if model_config.untie_embeddings_and_output_weights:
        if lm_head is None:
            raise ConfigError(f"the LLaMA weights have no {HF_LM_HEAD} but config.json unties it.")
        ours[OUTPUT_LAYER] = _padded(lm_head, padded)
    bias_kinds = ("weight", "bias") if model_config.add_bias_linear else ("weight",)
    for layer in range(model_config.num_layers):
        our_layer, hf_layer = LAYER.format(layer), HF_LAYER.format(layer)
        for kind in bias_kinds:
            query, key, value = (_pop(remaining, f"{hf_layer}self_attn.{name}.{kind}", what)
                                 for name in ("q_proj", "k_proj", "v_proj"))  # fmt: skip
            ours[f"{our_layer}{QKV}.{kind}"] = fuse_qkv(query, key, value, model_config)
            gate = _pop(remaining, f"{hf_layer}mlp.gate_proj.{kind}", what)
            ours[f"{our_layer}{GATE_UP}.{kind}"] = torch.cat(
                [gate, _pop(remaining, f"{hf_layer}mlp.up_proj.{kind}", what)]
            )
        for name, hf_name in LAYER_NAMES.items():
            if name.endswith("bias") and not model_config.add_bias_linear:
                continue
            ours[f"{our_layer}{name}"] = _pop(remaining, f"{hf_layer}{hf_name}", what)
    ours[FINAL_NORM] = _pop(remaining, HF_NORM, what)
    if remaining:
        raise ConfigError(
            f"the LLaMA weights have parameters this model has no place for "
            f"({', '.join(sorted(remaining)[:4])}); config.json says {model_config.num_layers} layers."
        )
    return ours, model_config


def _padded(table: torch.Tensor, rows: int) -> torch.Tensor:
    return (
        torch.cat([table, table.new_zeros(rows - table.shape[0], table.shape[1])])
        if rows > table.shape[0]
        else table
    )


def _pop(state: dict[str, torch.Tensor], name: str, what: str = "the state dict") -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise ConfigError(
            f"{what} has no {name}; it is not a complete model of the shape its config describes."
        ) from None
