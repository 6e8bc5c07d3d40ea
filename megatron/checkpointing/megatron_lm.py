"""A model as Megatron-LM's single ``model_optim_rng.pt`` (tensor and pipeline size 1, checkpoint version 3).

That is the file HuggingFace's ``convert_megatron_gpt2_checkpoint.py`` turns into a ``GPT2LMHeadModel``, and
the one Megatron-LM keeps in ``DIR/release/mp_rank_00/`` (or ``DIR/iter_NNNNNNN/mp_rank_00/``) next to a
``latest_checkpointed_iteration.txt``. Megatron-LM nests the weights by module, each level holding what the
module's ``state_dict_for_save_checkpoint`` returns::

    model
      language_model
        embedding   {"word_embeddings": {"weight"}, "position_embeddings": {"weight"}}
        encoder     the transformer's own state dict: "layers.N.input_layernorm.weight", ...,
                    "final_layernorm.weight", "final_layernorm.bias"

BERT adds ``language_model.pooler`` (``{"dense.weight", ...}``) and, beside ``language_model``, ``lm_head``
(``{"dense.weight", "layernorm.weight", "bias", ...}``) and ``binary_head`` (``{"weight", "bias"}``), which
HuggingFace's ``convert_megatron_bert_checkpoint.py`` reads. Our parameter names are Megatron's, so the
nesting is a split of each name at the right dots, and the fused QKV is already in version 3's per-head
layout. ``args`` is an ``argparse.Namespace`` as Megatron pickles it,
holding the fields converters read: the shape, the GeLU flavour and the tokenizer. The file therefore needs
``torch.load(weights_only=False)``, as every Megatron-LM checkpoint does.
"""

from __future__ import annotations

import argparse
import os

import torch

from megatron.config.schema import ModelConfig

CHECKPOINT_VERSION = 3.0
LANGUAGE_MODEL = "language_model."
EMBEDDING = "language_model.embedding."
ENCODER = "language_model.encoder."


def megatron_lm_args(
    model_config: ModelConfig,
    data_config: dict | None = None,
    iteration: int = 0,
    extra_args: dict | None = None,
) -> argparse.Namespace:
    """The training arguments Megatron-LM would have saved for this model (``extra_args`` added).

    ``openai_gelu`` True with ``bias_gelu_fusion`` False says "tanh GeLU" (HF maps it to ``gelu_new``);
    False is Megatron's default, the exact erf GeLU (our BERT and T5).
    """
    data = data_config or {}
    tokenizer_type = data.get("tokenizer_type", "GPT2BPETokenizer")
    tokenizer_name_or_path = None
    if tokenizer_type == "HFTokenizer":
        # Megatron-DeepSpeed's name for a tokenizer that transformers loads from a folder.
        tokenizer_type = "PretrainedFromHF"
        model_path = data.get("tokenizer_model")
        if model_path and not os.path.isdir(model_path):
            model_path = os.path.dirname(model_path)
        tokenizer_name_or_path = model_path
    return argparse.Namespace(
        num_layers=model_config.num_layers,
        hidden_size=model_config.hidden_size,
        ffn_hidden_size=model_config.ffn_hidden_size,
        num_attention_heads=model_config.num_attention_heads,
        kv_channels=model_config.head_dim,
        seq_length=model_config.seq_length,
        max_position_embeddings=model_config.max_position_embeddings,
        padded_vocab_size=model_config.padded_vocab_size,
        make_vocab_size_divisible_by=model_config.make_vocab_size_divisible_by,
        init_method_std=model_config.init_method_std,
        attention_dropout=model_config.attention_dropout,
        hidden_dropout=model_config.hidden_dropout,
        layernorm_epsilon=model_config.layernorm_epsilon,
        openai_gelu=model_config.openai_gelu,
        bias_gelu_fusion=False,
        apply_residual_connection_post_layernorm=False,
        untie_embeddings_and_output_weights=False,
        position_embedding_type="learned_absolute",
        add_position_embedding=True,
        add_bias_linear=True,
        swiglu=False,
        normalization="LayerNorm",
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        tokenizer_type=tokenizer_type,
        tokenizer_name_or_path=tokenizer_name_or_path,
        vocab_file=data.get("vocab_file"),
        merge_file=data.get("merge_file"),
        iteration=iteration,
        **(extra_args or {}),
    )


def masked_lm_args(masked_lm: dict | None) -> dict:
    """The arguments Megatron saves for BERT (``bert_binary_head``) and T5 (lengths, sentinels)."""
    if not masked_lm:
        return {}
    if masked_lm["model_type"] == "bert":
        return {"bert_binary_head": masked_lm["binary_head"], "num_tokentypes": 2}
    return {
        "decoder_seq_length": masked_lm["decoder_seq_length"],
        "vocab_extra_ids": masked_lm["vocab_extra_ids"],
    }


def megatron_lm_checkpoint(
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    data_config: dict | None = None,
    iteration: int = 0,
    extra_args: dict | None = None,
) -> dict:
    """The contents of ``model_optim_rng.pt`` for our full (tensor-parallel size 1) state dict."""
    embedding: dict[str, dict[str, torch.Tensor]] = {}
    language_model: dict[str, dict] = {"embedding": embedding}
    model: dict[str, dict] = {"language_model": language_model}
    for name, tensor in state_dict.items():
        if name.startswith(EMBEDDING):
            module, _, kind = name[len(EMBEDDING) :].rpartition(".")
            embedding.setdefault(module, {})[kind] = tensor
        elif name.startswith(LANGUAGE_MODEL):  # encoder, pooler: flat, as their own state dicts
            part, _, rest = name[len(LANGUAGE_MODEL) :].partition(".")
            language_model.setdefault(part, {})[rest] = tensor
        else:  # BERT's heads
            head, _, rest = name.partition(".")
            model.setdefault(head, {})[rest] = tensor
    return {
        "args": megatron_lm_args(model_config, data_config, iteration, extra_args),
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": iteration,
        "model": model,
    }


def write_megatron_lm(
    path: str,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    data_config: dict | None = None,
    iteration: int = 0,
    extra_args: dict | None = None,
) -> str:
    """Write ``model_optim_rng.pt`` at ``path`` (folders created); returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    checkpoint = megatron_lm_checkpoint(
        {name: tensor.contiguous() for name, tensor in state_dict.items()},
        model_config,
        data_config,
        iteration,
        extra_args,
    )
    temporary = f"{path}.tmp"
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)
    return path
