"""``--pretrained-checkpoint``: the language model of a ``pretrain_bert.py`` checkpoint, for finetuning.

The checkpoint may be saved in any tensor/pipeline layout: it is merged over its ranks
(:func:`megatron.checkpointing.layout.read_full_model`), its vocabulary re-padded for this run's
tensor-parallel size and split again for this rank. The masked-LM and sentence-order heads are dropped,
as Megatron-LM drops them; a checkpoint trained without the binary head has no pooler, which then starts
from its initialisation like the task head. The weights go into the model before DeepSpeed's engine is
built, so every ZeRO stage partitions the pretrained values.
"""

from __future__ import annotations

import logging

from torch import nn

from megatron.checkpointing import reshape
from megatron.checkpointing.layout import FullModel, has_bert_heads, read_full_model
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig
from megatron.parallel.context import ParallelContext

logger = logging.getLogger("megatron")

LANGUAGE_MODEL = "language_model."
POOLER = "language_model.pooler."
# Model fields the finetuning flags must give as the pretraining run had them.
_SHAPE_FIELDS = {
    "num_layers": "--num-layers",
    "hidden_size": "--hidden-size",
    "num_attention_heads": "--num-attention-heads",
    "ffn_hidden_size": "--ffn-hidden-size",
    "kv_channels": "--kv-channels",
    "max_position_embeddings": "--max-position-embeddings",
}


def read_pretrained(path: str, model: ModelConfig, vocab_size: int) -> FullModel:
    """The merged checkpoint, checked before any process group starts: a BERT of this run's shape, with an
    embedding that holds the tokenizer's ``vocab_size`` tokens."""
    full = read_full_model(path)
    if not has_bert_heads(full.config):
        kind = (full.config.get("masked_lm") or {}).get("model_type") or "gpt"
        raise ConfigError(
            f"--pretrained-checkpoint {path} is a {kind.upper()} checkpoint; finetuning takes a "
            "pretrain_bert.py checkpoint."
        )
    saved = full.config["model"]
    differences = [
        f"{flag} {getattr(model, field)} (flags) vs {saved.get(field)} (checkpoint)"
        for field, flag in _SHAPE_FIELDS.items()
        if saved.get(field) != getattr(model, field)
    ]
    if differences:
        raise ConfigError(
            f"--pretrained-checkpoint {path} is another model: {'; '.join(differences)}. Give the "
            "pretraining run's model flags."
        )
    rows = full.state_dict[reshape.WORD_EMBEDDINGS].shape[0]
    if vocab_size > rows:
        raise ConfigError(
            f"--pretrained-checkpoint {path}: the tokenizer has {vocab_size} tokens, the checkpoint's "
            f"embedding {rows} rows; give the --vocab-file the model was pretrained with."
        )
    return full


def load_pretrained(model: nn.Module, full: FullModel, context: ParallelContext, path: str) -> None:
    """Put this rank's part of the pretrained language model into ``model`` (a :class:`BertClassifier`)."""
    state = {name: tensor for name, tensor in full.state_dict.items() if name.startswith(LANGUAGE_MODEL)}
    state = reshape.repad_vocab(state, model.config.padded_vocab_size)
    shard = reshape.split_tensor_parallel(state, context.tensor_size, full.config["model"])[
        context.tensor_rank
    ]
    missing, unexpected = model.load_state_dict(shard, strict=False)
    fresh = [name for name in missing if not name.startswith("classification_head.")]
    if unexpected or any(not name.startswith(POOLER) for name in fresh):
        raise ConfigError(
            f"--pretrained-checkpoint {path}: its weights do not fit this BERT (missing "
            f"{sorted(fresh)[:3]}, unexpected {sorted(unexpected)[:3]})."
        )
    dropped = sorted({name.split(".")[0] for name in full.state_dict if not name.startswith(LANGUAGE_MODEL)})
    logger.info(
        "pretrained BERT from %s (iteration %d, saved with tensor-parallel %d, pipeline-parallel %d): "
        "language model loaded%s; dropped: %s; the classification head starts from its initialisation",
        path, full.iteration, full.tensor_size, full.pipeline_size,
        ", pooler initialised (the checkpoint has none)" if fresh else "", ", ".join(dropped) or "nothing",
    )  # fmt: skip
