"""Our GPT's weights as HuggingFace ``GPT2LMHeadModel`` weights, and back.

The two models compute the same function: pre-LN blocks, learned positions, GeLU with the tanh
approximation (HF's ``gelu_new``), attention scaled by ``1/sqrt(head_dim)``, output layer tied to the word
embedding. Only the storage differs, in three ways:

* names: ``language_model.encoder.layers.N.mlp.dense_h_to_4h`` is ``transformer.h.N.mlp.c_fc``, and so on
  (:data:`LAYER_NAMES`);
* HF's ``Conv1D`` keeps its weight as ``[in, out]``, the transpose of ``nn.Linear``'s ``[out, in]``;
* the fused QKV projection: ours lays its outputs out per head, ``[heads, (q, k, v), head_dim]`` (so that a
  tensor-parallel chunk holds whole heads), HF's as ``[(q, k, v), heads, head_dim]``.

The vocabulary: our embedding has ``padded_vocab_size`` rows, the tokenizer's size rounded up (see
``megatron.config.build.pad_vocab_size``). The padding rows are never an input nor a target, so export trims
them when the tokenizer's size is known, and import appends zero rows to reach the padded size.

Everything here is a pure function of state dicts (no files), so it is tested directly against
``GPTModel`` and ``GPT2LMHeadModel``; ``tools/convert_checkpoint_to_hf.py`` does the reading and writing.
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
POSITION_EMBEDDINGS = "language_model.embedding.position_embeddings.weight"
LAYER = "language_model.encoder.layers.{}."
FINAL_LAYERNORM = "language_model.encoder.final_layernorm."
QKV = "self_attention.query_key_value"

HF_PREFIX = "transformer."
HF_LAYER = "transformer.h.{}."
HF_LM_HEAD = "lm_head.weight"

# Our name inside a layer -> HF's name inside ``transformer.h.N``, and whether the weight is a Conv1D
# (stored transposed). The QKV weight is also reordered (see :func:`qkv_to_hf`).
LAYER_NAMES = {
    "input_layernorm": ("ln_1", False),
    QKV: ("attn.c_attn", True),
    "self_attention.dense": ("attn.c_proj", True),
    "post_attention_layernorm": ("ln_2", False),
    "mlp.dense_h_to_4h": ("mlp.c_fc", True),
    "mlp.dense_4h_to_h": ("mlp.c_proj", True),
}
# GeLU variants that are the tanh approximation our MLP computes (they differ only in float rounding).
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
# Buffers that older HF GPT-2 checkpoints carry (the causal mask and its fill value): nothing to convert.
HF_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def qkv_to_hf(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Our fused QKV weight ``[3h, h]`` or bias ``[3h]``, its outputs reordered as HF's ``[q | k | v]``."""
    rest = tensor.shape[1:]
    return tensor.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(tensor.shape)


def qkv_from_hf(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`qkv_to_hf`: HF's ``[q | k | v]`` outputs laid out per head."""
    rest = tensor.shape[1:]
    return tensor.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(tensor.shape)


def gpt2_config(
    model_config: ModelConfig, vocab_size: int, eod_token_id: int | None = None, **extra
) -> transformers.GPT2Config:
    """The ``GPT2Config`` of our model's shape. ``eod_token_id`` becomes HF's bos/eos id (GPT-2 uses its
    ``<|endoftext|>`` for both); unknown, they are left unset rather than pointing at a wrong token."""
    return transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=model_config.max_position_embeddings,
        n_embd=model_config.hidden_size,
        n_layer=model_config.num_layers,
        n_head=model_config.num_attention_heads,
        n_inner=model_config.ffn_hidden_size,
        activation_function="gelu_new",
        resid_pdrop=model_config.hidden_dropout,
        embd_pdrop=model_config.hidden_dropout,
        attn_pdrop=model_config.attention_dropout,
        layer_norm_epsilon=model_config.layernorm_epsilon,
        initializer_range=model_config.init_method_std,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eod_token_id,
        eos_token_id=eod_token_id,
        architectures=["GPT2LMHeadModel"],
        **extra,
    )


def to_gpt2(
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab_size: int | None = None,
    eod_token_id: int | None = None,
) -> tuple[transformers.GPT2Config, dict[str, torch.Tensor]]:
    """``GPT2LMHeadModel``'s config and state dict (``lm_head.weight`` is the word embedding, tied) from our
    full (tensor-parallel size 1) state dict.

    ``vocab_size`` is the tokenizer's size: the padding rows past it are cut. Without it HF gets the padded
    vocabulary, which works but lets ``generate`` sample padding ids.
    """
    if model_config.head_dim * model_config.num_attention_heads != model_config.hidden_size:
        raise ConfigError(
            f"--kv-channels {model_config.kv_channels} x {model_config.num_attention_heads} heads is not "
            f"--hidden-size {model_config.hidden_size}: GPT-2 has no separate head size, so this model does "
            "not convert."
        )
    remaining = dict(state_dict)
    word = _pop(remaining, WORD_EMBEDDINGS)
    padded = word.shape[0]
    if padded != model_config.padded_vocab_size:
        raise ConfigError(
            f"{WORD_EMBEDDINGS} has {padded} rows but the model config says padded_vocab_size "
            f"{model_config.padded_vocab_size}; pass the full (merged) state dict of this model."
        )
    if vocab_size is None:
        vocab_size = padded
    if not 0 < vocab_size <= padded:
        raise ConfigError(
            f"--vocab-size {vocab_size}: must be between 1 and the checkpoint's {padded} embedding rows "
            "(the tokenizer's vocabulary size, which the padded vocabulary was rounded up from)."
        )
    word = word[:vocab_size].clone() if vocab_size < padded else word
    heads = model_config.num_attention_heads
    hf = {f"{HF_PREFIX}wte.weight": word, f"{HF_PREFIX}wpe.weight": _pop(remaining, POSITION_EMBEDDINGS)}
    for layer in range(model_config.num_layers):
        ours, theirs = LAYER.format(layer), HF_LAYER.format(layer)
        for name, (hf_name, conv1d) in LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                tensor = _pop(remaining, f"{ours}{name}.{kind}")
                if name == QKV:
                    tensor = qkv_to_hf(tensor, heads)
                if conv1d and kind == "weight":
                    tensor = tensor.t().contiguous()
                hf[f"{theirs}{hf_name}.{kind}"] = tensor
    for kind in ("weight", "bias"):
        hf[f"{HF_PREFIX}ln_f.{kind}"] = _pop(remaining, f"{FINAL_LAYERNORM}{kind}")
    if remaining:
        raise ConfigError(
            f"the state dict has parameters GPT-2 has no place for ({', '.join(sorted(remaining)[:4])}); "
            f"it is not a {model_config.num_layers}-layer GPT of this toolkit."
        )
    hf[HF_LM_HEAD] = word
    return gpt2_config(model_config, vocab_size, eod_token_id), hf


def model_config_from_gpt2(hf_config, make_vocab_size_divisible_by: int = 128) -> ModelConfig:
    """Our ``ModelConfig`` for a GPT-2 config; refuses GPT-2 variants our model does not compute."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "gpt2":
        raise ConfigError(
            f"the HF model is of type {model_type!r} (config.json 'model_type'); only GPT-2 models "
            "('gpt2', GPT2LMHeadModel) convert to this toolkit's GPT."
        )
    refusals = [
        (hf_config.activation_function not in TANH_GELUS, f"activation_function "
         f"{hf_config.activation_function!r} (this GPT computes the tanh GeLU, {' / '.join(TANH_GELUS)})"),
        (not hf_config.scale_attn_weights, "scale_attn_weights false (this GPT scales by 1/sqrt(head_dim))"),
        (hf_config.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx true"),
        (hf_config.add_cross_attention, "add_cross_attention true (this GPT is decoder-only)"),
        (hf_config.n_embd % hf_config.n_head != 0, f"n_embd {hf_config.n_embd} not divisible by n_head "
         f"{hf_config.n_head}"),
    ]  # fmt: skip
    unsupported = [reason for refused, reason in refusals if refused]
    if unsupported:
        raise ConfigError(
            f"the GPT-2 config has {'; '.join(unsupported)}: this toolkit's GPT cannot compute that model, "
            "so converting it would change its outputs."
        )
    if not 0 < hf_config.vocab_size:
        raise ConfigError(f"the GPT-2 config's vocab_size is {hf_config.vocab_size}; it must be positive.")
    return ModelConfig(
        num_layers=hf_config.n_layer,
        hidden_size=hf_config.n_embd,
        num_attention_heads=hf_config.n_head,
        ffn_hidden_size=hf_config.n_inner or 4 * hf_config.n_embd,
        seq_length=hf_config.n_positions,
        max_position_embeddings=hf_config.n_positions,
        padded_vocab_size=pad_vocab_size(hf_config.vocab_size, make_vocab_size_divisible_by, 1),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        init_method_std=hf_config.initializer_range,
        attention_dropout=hf_config.attn_pdrop,
        hidden_dropout=hf_config.resid_pdrop,
        layernorm_epsilon=hf_config.layer_norm_epsilon,
    )


def from_gpt2(
    hf_state_dict: dict[str, torch.Tensor], hf_config, make_vocab_size_divisible_by: int = 128
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Our full (tensor-parallel size 1) state dict and ``ModelConfig`` from a GPT-2 model's weights.

    Takes the keys of ``GPT2LMHeadModel`` or of ``GPT2Model`` (no ``transformer.`` prefix). The word
    embedding gets zero rows appended up to a multiple of ``make_vocab_size_divisible_by``, as a training run
    with ``--make-vocab-size-divisible-by`` and tensor-parallel size 1 pads it.
    """
    model_config = model_config_from_gpt2(hf_config, make_vocab_size_divisible_by)
    remaining = {
        name.removeprefix(HF_PREFIX): tensor
        for name, tensor in hf_state_dict.items()
        if not name.endswith(HF_IGNORED_SUFFIXES)
    }
    word = _pop(remaining, "wte.weight", what="the GPT-2 weights")
    lm_head = remaining.pop(HF_LM_HEAD, None)
    if lm_head is not None and not torch.equal(lm_head, word):
        raise ConfigError(
            f"the GPT-2 weights have an {HF_LM_HEAD} different from transformer.wte.weight; this GPT ties "
            "its output layer to the word embedding, so untied GPT-2 models do not convert."
        )
    if word.shape[0] != hf_config.vocab_size:
        raise ConfigError(
            f"transformer.wte.weight has {word.shape[0]} rows but config.json says vocab_size "
            f"{hf_config.vocab_size}; the weights and config.json are of different models."
        )
    padding = model_config.padded_vocab_size - word.shape[0]
    if padding:
        word = torch.cat([word, word.new_zeros(padding, word.shape[1])])
    heads = model_config.num_attention_heads
    ours = {WORD_EMBEDDINGS: word, POSITION_EMBEDDINGS: _pop(remaining, "wpe.weight", "the GPT-2 weights")}
    for layer in range(model_config.num_layers):
        our_layer, hf_layer = LAYER.format(layer), HF_LAYER.format(layer).removeprefix(HF_PREFIX)
        for name, (hf_name, conv1d) in LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                tensor = _pop(remaining, f"{hf_layer}{hf_name}.{kind}", "the GPT-2 weights")
                if conv1d and kind == "weight":
                    tensor = tensor.t()
                if name == QKV:
                    tensor = qkv_from_hf(tensor, heads)
                ours[f"{our_layer}{name}.{kind}"] = tensor.contiguous()
    for kind in ("weight", "bias"):
        ours[f"{FINAL_LAYERNORM}{kind}"] = _pop(remaining, f"ln_f.{kind}", "the GPT-2 weights")
    if remaining:
        raise ConfigError(
            f"the GPT-2 weights have parameters this GPT has no place for "
            f"({', '.join(sorted(remaining)[:4])}); config.json says n_layer {hf_config.n_layer}."
        )
    return ours, model_config


def _pop(state: dict[str, torch.Tensor], name: str, what: str = "the state dict") -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise ConfigError(
            f"{what} has no {name}; it is not a complete model of the shape its config describes."
        ) from None
