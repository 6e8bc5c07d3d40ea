"""Our BERT's weights as HuggingFace ``MegatronBertForPreTraining`` / ``MegatronBertForMaskedLM`` weights.

HF's MegatronBert computes what Megatron's BERT computes (see :mod:`megatron.model.bert`): no embedding
LayerNorm, pre-LN layers, a final LayerNorm, the pooler and the two heads. Only names differ, plus:

* the fused QKV projection, ours per head ``[heads, (q, k, v), head_dim]``, is split into HF's separate
  ``query``/``key``/``value`` projections;
* the vocabulary: padding rows past the tokenizer's size are cut from the word embedding and from the
  masked-LM bias (``cls.predictions.bias``, which HF ties to the decoder's bias; the decoder weight is tied
  to the word embedding).

Pure functions of state dicts; ``tools/convert_checkpoint_to_hf.py`` reads and writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch
import transformers

from megatron.checkpointing.hf_gpt2 import qkv_to_hf
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig

logger = logging.getLogger(__name__)

EMBEDDING = "language_model.embedding."
LAYER = "language_model.encoder.layers.{}."
HF_LAYER = "bert.encoder.layer.{}."
QKV = "self_attention.query_key_value"

# Our name -> HF's, outside the layers.
TOP_LEVEL_NAMES = {
    f"{EMBEDDING}position_embeddings": "bert.embeddings.position_embeddings",
    f"{EMBEDDING}tokentype_embeddings": "bert.embeddings.token_type_embeddings",
    "language_model.encoder.final_layernorm": "bert.encoder.ln",
    "language_model.pooler.dense": "bert.pooler.dense",
    "lm_head.dense": "cls.predictions.transform.dense",
    "lm_head.layernorm": "cls.predictions.transform.LayerNorm",
    "binary_head": "cls.seq_relationship",
}
# Our name inside layer N -> HF's inside ``bert.encoder.layer.N`` (the QKV is split, see above).
LAYER_NAMES = {
    "input_layernorm": "attention.ln",
    "self_attention.dense": "attention.output.dense",
    "post_attention_layernorm": "ln",
    "mlp.dense_h_to_4h": "intermediate.dense",
    "mlp.dense_4h_to_h": "output.dense",
}
# Parts that exist only with the sentence-order (binary) head.
BINARY_HEAD_PARTS = ("language_model.pooler.dense", "binary_head")


def megatron_bert_config(
    model_config: ModelConfig,
    vocab_size: int,
    binary_head: bool,
    pad_token_id: int = 0,
) -> transformers.MegatronBertConfig:
    if model_config.head_dim * model_config.num_attention_heads != model_config.hidden_size:
        raise ConfigError(
            f"--kv-channels {model_config.kv_channels} x {model_config.num_attention_heads} heads is not "
            f"--hidden-size {model_config.hidden_size}: MegatronBert in transformers has no separate head "
            "size, so this model does not convert."
        )
    return transformers.MegatronBertConfig(
        vocab_size=vocab_size,
        hidden_size=model_config.hidden_size,
        num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_attention_heads,
        intermediate_size=model_config.ffn_hidden_size,
        hidden_act="gelu_new" if model_config.openai_gelu else "gelu",
        hidden_dropout_prob=model_config.hidden_dropout,
        attention_probs_dropout_prob=model_config.attention_dropout,
        max_position_embeddings=model_config.max_position_embeddings,
        type_vocab_size=2,
        initializer_range=model_config.init_method_std,
        layer_norm_eps=model_config.layernorm_epsilon,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        architectures=["MegatronBertForPreTraining" if binary_head else "MegatronBertForMaskedLM"],
    )


def to_megatron_bert(
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab_size: int | None = None,
    pad_token_id: int = 0,
) -> tuple[transformers.MegatronBertConfig, dict[str, torch.Tensor]]:
    """HF's config and state dict from our full (tensor-parallel size 1) BERT state dict; ``vocab_size``
    (the tokenizer's) cuts the padding rows, None keeps them."""
    remaining = dict(state_dict)
    word = _pop(remaining, f"{EMBEDDING}word_embeddings.weight")
    bias = _pop(remaining, "lm_head.bias")
    padded = word.shape[0]
    if padded != model_config.padded_vocab_size or bias.shape[0] != padded:
        raise ConfigError(
            f"the word embedding has {padded} rows and lm_head.bias {bias.shape[0]} entries, but the model "
            f"config says padded_vocab_size {model_config.padded_vocab_size}; pass the full (merged) state "
            "dict of this model."
        )
    vocab_size = vocab_size or padded
    if not 0 < vocab_size <= padded:
        raise ConfigError(
            f"--vocab-size {vocab_size}: must be between 1 and the checkpoint's {padded} embedding rows."
        )
    binary_head = "binary_head.weight" in remaining
    hf = {
        "bert.embeddings.word_embeddings.weight": word[:vocab_size].clone(),
        "cls.predictions.bias": bias[:vocab_size].clone(),
    }
    for ours, theirs in TOP_LEVEL_NAMES.items():
        if ours in BINARY_HEAD_PARTS and not binary_head:
            continue
        for kind in ("weight", "bias"):
            if ours.endswith("_embeddings") and kind == "bias":
                continue
            hf[f"{theirs}.{kind}"] = _pop(remaining, f"{ours}.{kind}")
    heads = model_config.num_attention_heads
    for layer in range(model_config.num_layers):
        ours, theirs = LAYER.format(layer), HF_LAYER.format(layer)
        for kind in ("weight", "bias"):
            qkv = qkv_to_hf(_pop(remaining, f"{ours}{QKV}.{kind}"), heads)
            for part, tensor in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
                hf[f"{theirs}attention.self.{part}.{kind}"] = tensor.contiguous()
            for name, hf_name in LAYER_NAMES.items():
                hf[f"{theirs}{hf_name}.{kind}"] = _pop(remaining, f"{ours}{name}.{kind}")
    if remaining:
        raise ConfigError(
            f"the state dict has parameters MegatronBert has no place for "
            f"({', '.join(sorted(remaining)[:4])}); it is not a {model_config.num_layers}-layer BERT of "
            "this toolkit."
        )
    config = megatron_bert_config(model_config, vocab_size, binary_head, pad_token_id)
    return config, hf


def _pop(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise ConfigError(
            f"the state dict has no {name}; it is not a complete BERT of the shape its config describes."
        ) from None


def save_pretrained(
    save_dir: str,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab_size: int | None,
    tokenizer=None,
) -> str:
    """Write a folder ``MegatronBertForPreTraining.from_pretrained`` (or ``...ForMaskedLM``) loads:
    ``config.json``, ``model.safetensors`` and, given the training run's BERT tokenizer, its ``vocab.txt``
    with a ``tokenizer_config.json`` for ``BertTokenizer``."""
    from safetensors.torch import save_file

    pad = tokenizer.pad if tokenizer is not None else 0
    hf_config, hf_state = to_megatron_bert(state_dict, model_config, vocab_size, pad)
    os.makedirs(save_dir, exist_ok=True)
    hf_config.dtype = hf_state["bert.embeddings.word_embeddings.weight"].dtype
    hf_config.save_pretrained(save_dir)
    tensors = {name: tensor.contiguous() for name, tensor in hf_state.items()}
    save_file(tensors, os.path.join(save_dir, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None and hasattr(tokenizer, "vocab_file"):
        shutil.copyfile(tokenizer.vocab_file, os.path.join(save_dir, "vocab.txt"))
        tokenizer_config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": tokenizer.lower_case,
            "model_max_length": model_config.max_position_embeddings,
        }
        with open(os.path.join(save_dir, "tokenizer_config.json"), "w") as handle:
            json.dump(tokenizer_config, handle, indent=2)
    logger.info(
        "wrote %s: %s, %d layers, hidden %d, vocabulary %d",
        save_dir,
        hf_config.architectures[0],
        hf_config.num_hidden_layers,
        hf_config.hidden_size,
        hf_config.vocab_size,
    )
    return save_dir
