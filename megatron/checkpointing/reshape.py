"""Merging and re-splitting model weights across tensor-parallel layouts, and re-padding the vocabulary.

Everything here works on state dicts under Megatron's names (those of ``GPTModel(...).state_dict()``) and
knows nothing of files: :mod:`megatron.checkpointing.layout` reads and writes them.

Tensor-parallel shards are contiguous chunks of the full tensor along one dimension (see
:mod:`megatron.parallel.layers`): the fused QKV output is laid out per head (``[heads, (q, k, v),
head_dim]``), so a plain chunk along dimension 0 hands each rank whole heads and merging is plain
concatenation. :data:`TENSOR_PARALLEL_DIMS` names the split parameters; the test suite checks it against
the ``partition_dim`` every parallel layer records on its parameters, so the two cannot drift apart.

Vocabulary padding: the word embedding (tied to the output layer) has ``padded_vocab_size`` rows, the
tokenizer's vocabulary rounded up to a multiple of ``--make-vocab-size-divisible-by`` x T. When T changes,
that multiple may change, and the rows are then cut or extended with zero rows at the end, as the target
run expects. Only padding rows are ever cut: rows past the tokenizer's vocabulary are never an input token
nor a target, so the logits of real tokens do not change. The loss can move slightly, as the softmax
normaliser also sums over padding rows (a zero row adds exp(0) per appended row; a cut row takes its own
term away). The tokenizer's size is not stored in checkpoints, so the new padded size comes from it when
known (``true_vocab_size``, or the tokenizer files named in the saved config), and otherwise only when every
tokenizer size consistent with the saved padding gives the same answer.
"""

from __future__ import annotations

import copy
import functools
import logging
import os

import torch

from megatron.config.build import pad_vocab_size
from megatron.config.errors import ConfigError
from megatron.parallel.layers import merge_shards, shard_of

logger = logging.getLogger(__name__)

WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"

# Name suffix -> the dimension along which tensor-parallel ranks hold contiguous chunks. Parameters not
# listed are replicated on every tensor-parallel rank.
TENSOR_PARALLEL_DIMS = {
    "word_embeddings.weight": 0,
    "output_layer.weight": 0,
    "self_attention.query_key_value.weight": 0,
    "self_attention.query_key_value.bias": 0,
    "self_attention.dense.weight": 1,
    "mlp.dense_h_to_4h.weight": 0,
    "mlp.dense_h_to_4h.bias": 0,
    "mlp.dense_4h_to_h.weight": 1,
}
# BERT's and T5's additions: the output bias (vocabulary-split like the embedding) and T5's cross-attention.
# Kept apart so that GPT's universal-checkpoint patterns (built from the table above) all match a parameter.
MASKED_LM_PARALLEL_DIMS = {
    "lm_head.bias": 0,
    "inter_attention.query.weight": 0,
    "inter_attention.query.bias": 0,
    "inter_attention.key_value.weight": 0,
    "inter_attention.key_value.bias": 0,
    "inter_attention.dense.weight": 1,
}
# Vocabulary-sized parameters besides the word embedding: padded and cut with it.
VOCAB_BIASES = ("lm_head.bias",)
OUTPUT_LAYER = "language_model.output_layer.weight"
# Fused projections of several parts (see megatron.parallel.layers): SwiGLU's [gate; up].
SWIGLU_STRIDED = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")

TARGET_T_FLAG = "--target-tensor-parallel-size"
TARGET_P_FLAG = "--target-pipeline-parallel-size"
TRUE_VOCAB_FLAG = "--true-vocab-size"


def tensor_parallel_dim(name: str) -> int | None:
    """The dimension ``name`` is split along across tensor-parallel ranks, or None when it is replicated."""
    for suffix, dim in (*TENSOR_PARALLEL_DIMS.items(), *MASKED_LM_PARALLEL_DIMS.items()):
        if name == suffix or name.endswith("." + suffix):
            return dim
    return None


def partition_stride(name: str, model: dict) -> int:
    """In how many parts ``name`` is split across ranks (2 for SwiGLU's [gate; up], else 1), for the
    saved model config ``model``."""
    swiglu = model.get("swiglu", False)
    return 2 if swiglu and any(name.endswith("." + suffix) for suffix in SWIGLU_STRIDED) else 1


def merge_tensor_parallel(shards: list[dict[str, torch.Tensor]], model: dict) -> dict[str, torch.Tensor]:
    """The full state dict from the state dicts of tensor ranks 0..T-1 (same keys on every rank), of the
    model whose saved config is ``model``."""
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            different = sorted(set(shard) ^ set(names))
            raise ConfigError(
                f"tensor-parallel rank {rank} of the checkpoint holds other parameters than rank 0 "
                f"({', '.join(different[:4])}); the checkpoint mixes files of different models."
            )
    merged = {}
    for name in names:
        pieces = [shard[name] for shard in shards]
        dim = tensor_parallel_dim(name)
        if dim is None:
            if any(piece.shape != pieces[0].shape for piece in pieces):
                raise ConfigError(
                    f"{name} should be replicated over the tensor-parallel ranks but has shapes "
                    f"{[tuple(piece.shape) for piece in pieces]}; the checkpoint mixes different models."
                )
            if not all(torch.equal(piece, pieces[0]) for piece in pieces[1:]):
                logger.warning("%s differs between tensor-parallel ranks; taking rank 0's copy", name)
            merged[name] = pieces[0]
        else:
            merged[name] = merge_shards(pieces, dim, partition_stride(name, model))
    return merged


def split_tensor_parallel(
    state_dict: dict[str, torch.Tensor], tensor_size: int, model: dict
) -> list[dict[str, torch.Tensor]]:
    """The state dicts of tensor ranks 0..T-1 of the model whose saved config is ``model``. Chunks are
    copies: a view would save the whole tensor."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tensor_size)]
    for name, tensor in state_dict.items():
        dim = tensor_parallel_dim(name)
        if dim is None:
            for shard in shards:
                shard[name] = tensor
            continue
        stride = partition_stride(name, model)
        if tensor.shape[dim] % (tensor_size * stride):
            raise ConfigError(
                f"{name} has {tensor.shape[dim]} entries along its split dimension {dim}, not divisible by "
                f"{TARGET_T_FLAG} {tensor_size}{f' x {stride} parts' if stride > 1 else ''}; choose a size "
                "that divides it."
            )
        length = tensor.shape[dim] // (tensor_size * stride)
        for rank, shard in enumerate(shards):
            shard[name] = shard_of(tensor, slice(rank * length, (rank + 1) * length), dim, stride)
    return shards


def check_target_layout(model: dict, tensor_size: int, pipeline_size: int) -> None:
    """The target sizes must split the saved model (``config["model"]``) the way training would."""
    if tensor_size < 1 or pipeline_size < 1:
        flag, size = (TARGET_T_FLAG, tensor_size) if tensor_size < 1 else (TARGET_P_FLAG, pipeline_size)
        raise ConfigError(f"{flag} {size}: must be >= 1.")
    heads, ffn, layers = model["num_attention_heads"], model["ffn_hidden_size"], model["num_layers"]
    if heads % tensor_size:
        raise ConfigError(
            f"{TARGET_T_FLAG} {tensor_size} does not divide the checkpoint's {heads} attention heads "
            "(--num-attention-heads): each tensor-parallel rank holds whole heads. Choose a divisor of "
            f"{heads}."
        )
    kv_heads = model.get("num_key_value_heads")
    if kv_heads and kv_heads % tensor_size:
        raise ConfigError(
            f"{TARGET_T_FLAG} {tensor_size} does not divide the checkpoint's {kv_heads} key/value heads "
            "(--num-key-value-heads): each tensor-parallel rank holds whole key/value heads. Choose a "
            f"divisor of {kv_heads}."
        )
    if ffn % tensor_size:
        raise ConfigError(
            f"{TARGET_T_FLAG} {tensor_size} does not divide the checkpoint's --ffn-hidden-size {ffn}: the "
            "MLP is split evenly over the tensor-parallel ranks. Choose a divisor of it."
        )
    if pipeline_size > layers:
        raise ConfigError(
            f"{TARGET_P_FLAG} {pipeline_size} is more than the checkpoint's {layers} transformer layers "
            "(--num-layers): each pipeline stage needs at least one. Use at most that many stages."
        )


def padded_vocab_candidates(
    padded_vocab_size: int, divisible_by: int, source_tensor: int, target_tensor: int
) -> list[int]:
    """Every padded size the target layout could need, over all tokenizer sizes that the source layout
    pads to ``padded_vocab_size``."""
    lowest = max(1, padded_vocab_size - divisible_by * source_tensor + 1)
    return sorted(
        {pad_vocab_size(size, divisible_by, target_tensor) for size in range(lowest, padded_vocab_size + 1)}
    )


def true_vocab_size_from_config(config: dict) -> int | None:
    """The tokenizer's vocabulary size, when the tokenizer files the training run named still exist."""
    data = config.get("data", {})
    files = (data.get("vocab_file"), data.get("merge_file"), data.get("tokenizer_model"))
    if not any(files) or not all(os.path.exists(path) for path in files if path):
        return None
    return _tokenizer_vocab_size(data.get("tokenizer_type", "GPT2BPETokenizer"), *files)


@functools.lru_cache(maxsize=4)
def _tokenizer_vocab_size(
    tokenizer_type: str, vocab_file: str | None, merge_file: str | None, tokenizer_model: str | None
) -> int | None:
    """Cached: a training run asks at every checkpoint (:mod:`megatron.checkpointing.universal`)."""
    from megatron.data.tokenizer import build_tokenizer

    try:
        return build_tokenizer(tokenizer_type, vocab_file, merge_file, tokenizer_model).vocab_size
    except ConfigError as error:
        logger.warning("cannot rebuild the training run's tokenizer (%s)", error)
        return None


def target_padded_vocab_size(
    config: dict, source_tensor: int, target_tensor: int, true_vocab_size: int | None = None
) -> int:
    """The embedding rows a run with ``target_tensor`` ranks builds (``pad_vocab_size`` of the tokenizer).

    ``true_vocab_size`` (the tokenizer's size) decides it when given. Otherwise the saved padding decides it
    when every tokenizer size it allows gives the same answer (always so when T is unchanged); failing
    that, the tokenizer named in the saved config is rebuilt when its files exist, and else this is an error
    asking for the size.
    """
    model = config["model"]
    padded, divisible_by = model["padded_vocab_size"], model["make_vocab_size_divisible_by"]
    source = f"{TRUE_VOCAB_FLAG} {true_vocab_size}"
    if true_vocab_size is None:
        candidates = padded_vocab_candidates(padded, divisible_by, source_tensor, target_tensor)
        if len(candidates) == 1:
            return candidates[0]
        true_vocab_size = true_vocab_size_from_config(config)
        source = f"the tokenizer named in the checkpoint's config ({true_vocab_size} tokens)"
        if true_vocab_size is None:
            raise ConfigError(
                f"the checkpoint's embedding has {padded} rows (the tokenizer's vocabulary padded for "
                f"tensor-parallel size {source_tensor}); with {TARGET_T_FLAG} {target_tensor} it needs one "
                f"of {candidates} rows depending on the tokenizer's size, which the checkpoint does not "
                "store (nor are the tokenizer files its config names readable here). Pass "
                f"{TRUE_VOCAB_FLAG} with the tokenizer's vocabulary size."
            )
    saved_padding = pad_vocab_size(true_vocab_size, divisible_by, source_tensor)
    if saved_padding != padded:
        raise ConfigError(
            f"{source} does not match the checkpoint: with --make-vocab-size-divisible-by {divisible_by} and "
            f"tensor-parallel size {source_tensor} it pads to {saved_padding} rows, the checkpoint has "
            f"{padded}. Pass {TRUE_VOCAB_FLAG} with the size of the tokenizer the model was trained with."
        )
    return pad_vocab_size(true_vocab_size, divisible_by, target_tensor)


def repad_vocab(state_dict: dict[str, torch.Tensor], padded_vocab_size: int) -> dict[str, torch.Tensor]:
    """The state dict with the word embedding (and an untied output layer, or BERT's or T5's
    ``lm_head.bias``) cut or zero-extended at the end to ``padded_vocab_size`` rows.

    The caller guarantees (:func:`target_padded_vocab_size`) that only padding rows are cut.
    """
    rows = state_dict[WORD_EMBEDDINGS].shape[0]
    if rows == padded_vocab_size:
        return state_dict
    logger.info("vocabulary padding: %d -> %d embedding rows", rows, padded_vocab_size)
    resized = {
        name: _resized_rows(tensor, padded_vocab_size)
        for name, tensor in state_dict.items()
        if name in (WORD_EMBEDDINGS, OUTPUT_LAYER, *VOCAB_BIASES)
    }
    return {**state_dict, **resized}


def _resized_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] >= rows:
        return tensor[:rows].clone()
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def converted_config(config: dict, tensor_size: int, pipeline_size: int, padded_vocab_size: int) -> dict:
    """The saved config as the target layout's run builds it: parallel sizes and padded vocabulary."""
    config = copy.deepcopy(config)
    parallel = config["parallel"]
    data_parallel = config.get("batch", {}).get("data_parallel_size", 1)
    parallel["tensor_model_parallel_size"] = tensor_size
    parallel["pipeline_model_parallel_size"] = pipeline_size
    parallel["sequence_parallel"] = bool(parallel.get("sequence_parallel")) and tensor_size > 1
    if pipeline_size > 1:
        parallel["use_pipeline_engine"] = True
    ulysses = parallel.get("ds_sequence_parallel_size", 1)
    parallel["world_size"] = tensor_size * pipeline_size * ulysses * data_parallel
    config["model"]["padded_vocab_size"] = padded_vocab_size
    return config
