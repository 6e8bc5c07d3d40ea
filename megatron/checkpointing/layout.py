"""The checkpoint layout on disk, and whole models read from and written to it in any tensor/pipeline layout.

This is the one module that knows the file names DeepSpeed's engines write for Megatron-DeepSpeed models::

    DIR/latest                                  "global_stepN" (DeepSpeed reads it)
    DIR/latest_checkpointed_iteration.txt       "N" (Megatron's tools read it)
    DIR/global_stepN/mp_rank_XX_model_states.pt per (stage, tensor rank), XX = stage x T + tensor rank:
        DeepSpeed's keys and our client state; with P = 1 also "module", the rank's GPTModel state dict
    DIR/global_stepN/layer_LL-model_TT-model_states.pt   P > 1 only: pipeline layer LL of tensor rank TT
        (0: embedding, 1..L: transformer layers, L + 1: final LayerNorm; the tied output layer L + 2 on the
        last stage is not saved, DeepSpeed copies it from the first stage on loading; BERT adds its heads,
        L + 3)
    DIR/global_stepN/zero_pp_rank_D_mp_rank_XX_optim_states.pt   ZeRO optimizer shards
    DIR/global_stepN/layer_M_expert_E_mp_rank_XX_model_states.pt   MoE only: expert E of MoE layer M

Every model-state file loads with ``torch.load(weights_only=True)``: DeepSpeed's keys are plain values and
tensors, and the client state holds the RNG state as tensors (:mod:`megatron.training.rng`); files written
before that held numpy arrays, which are allowed by name. Only the ZeRO optimizer files need
``weights_only=False`` (they pickle DeepSpeed classes); nothing here reads them.

A converted checkpoint (:func:`write_model_checkpoint`) carries weights and progress counters only: no
optimizer files and no RNG state (both are per rank and belong to the source layout), and a marker
``converted_from`` in its client state so that loading knows to take the module alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass

import numpy as np
import torch

from megatron.checkpointing import reshape
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig
from megatron.model.gpt_pipe import TIED_EMBEDDING

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3.0
LATEST_TAG_FILENAME = "latest"
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
CONVERTED_FROM = "converted_from"
# Where the pipeline layers' keys live in the full model, by pipeline layer index (transformer layers are
# 1..L, between the two).
EMBEDDING_PREFIX = "language_model.embedding."
LAYER_PREFIX = "language_model.encoder.layers.{}."
FINAL_LAYERNORM_PREFIX = "language_model.encoder.final_layernorm."
OUTPUT_LAYER_PREFIX = "language_model.output_layer."
# BERT's heads layer keeps the full model's names (``lm_head.``, ``binary_head.``,
# ``language_model.pooler.``), so it takes whatever the layers before it leave.
BERT_HEADS_PREFIX = ""


def checkpoint_tag(iteration: int) -> str:
    return f"global_step{iteration}"


def model_rank(pipeline_rank: int, tensor_rank: int, tensor_size: int) -> int:
    """DeepSpeed numbers model-state files by the rank in the tensor x pipeline group."""
    return pipeline_rank * tensor_size + tensor_rank


def model_states_name(rank: int) -> str:
    return f"mp_rank_{rank:02d}_model_states.pt"


def zero3_model_states_name(data_rank: int, rank: int) -> str:
    """Under ZeRO stage 3 every data-parallel rank writes its own model-state file."""
    return f"zero_pp_rank_{data_rank}_{model_states_name(rank)}"


def optim_states_name(data_rank: int, rank: int, bf16_optimizer: bool = False) -> str:
    """The ZeRO optimizer shard of one data-parallel rank (DeepSpeed's ``bf16_`` prefix: its bf16 optimizer
    without ZeRO, stage 0 with ``--bf16``)."""
    return f"{'bf16_' if bf16_optimizer else ''}zero_pp_rank_{data_rank}_mp_rank_{rank:02d}_optim_states.pt"


def layer_states_name(layer_index: int, tensor_rank: int) -> str:
    return f"layer_{layer_index:02d}-model_{tensor_rank:02d}-model_states.pt"


# DeepSpeed's MoE files (M counts the MoE layers, E is the global expert) hold the experts' weights under
# their full model names; the module state leaves them out. Tensor rank 0's: MoE runs without tensor
# parallelism here.
EXPERT_STATES_NAME = re.compile(r"layer_\d+_expert_\d+_mp_rank_00_model_states\.pt")


def has_bert_heads(config: dict) -> bool:
    """Whether the saved run (``config``, the saved ``dataclasses.asdict(Config)``) is a BERT, whose
    pipeline has a heads layer (:mod:`megatron.model.bert_pipe`)."""
    return (config.get("masked_lm") or {}).get("model_type") == "bert"


def has_output_layer(config: dict) -> bool:
    """Whether the saved run's output layer is a weight of its own
    (``--untie-embeddings-and-output-weights``), the GPT pipeline's last layer (``gpt_pipe``)."""
    return bool(config["model"].get("untie_embeddings_and_output_weights", False))


def pipeline_layer_prefixes(
    num_layers: int, bert_heads: bool = False, output_layer: bool = False
) -> list[tuple[int, str]]:
    """(pipeline layer index, full-model key prefix) of every pipeline layer that has a file, in the order
    the keys are taken (BERT's heads, or an untied output layer, last)."""
    layers = [(number + 1, LAYER_PREFIX.format(number)) for number in range(num_layers)]
    prefixes = [(0, EMBEDDING_PREFIX), *layers, (num_layers + 1, FINAL_LAYERNORM_PREFIX)]
    if bert_heads:
        prefixes.append((num_layers + 3, BERT_HEADS_PREFIX))
    if output_layer:
        prefixes.append((num_layers + 2, OUTPUT_LAYER_PREFIX))
    return prefixes


def layer_prefixes_of(config: dict) -> list[tuple[int, str]]:
    """:func:`pipeline_layer_prefixes` of the saved run ``config``."""
    return pipeline_layer_prefixes(
        config["model"]["num_layers"], has_bert_heads(config), has_output_layer(config)
    )


def engine_parameter_prefixes(config: dict) -> list[tuple[str, str]]:
    """(Megatron prefix, pipeline prefix) of every part of the model: the names DeepSpeed's engine gives
    parameters (in optimizer shards, universal checkpoints) are Megatron's with P = 1 and the
    ``PipelineModule``'s with P > 1 (``tied_modules.embedding.``, then ``<layer index>.``)."""
    return [
        (prefix, f"tied_modules.{TIED_EMBEDDING}." if index == 0 else f"{index}.")
        for index, prefix in layer_prefixes_of(config)
    ]


def required_files(tensor_size: int, pipeline_size: int, prefixes: list[tuple[int, str]]) -> list[str]:
    """The model-state files (names inside the tag folder) a checkpoint of this layout consists of, the
    pipeline's layers being ``prefixes`` (:func:`layer_prefixes_of`)."""
    names = [
        model_states_name(model_rank(stage, tensor, tensor_size))
        for stage in range(pipeline_size)
        for tensor in range(tensor_size)
    ]
    if pipeline_size > 1:
        names += [layer_states_name(index, tensor) for index, _ in prefixes for tensor in range(tensor_size)]
    return names


def read_latest_tag(load_dir: str) -> str:
    if not os.path.isdir(load_dir):
        raise ConfigError(f"checkpoint folder {load_dir} does not exist; pass the folder training saved to.")
    latest = os.path.join(load_dir, LATEST_TAG_FILENAME)
    if not os.path.isfile(latest):
        raise ConfigError(
            f"{load_dir} has no '{LATEST_TAG_FILENAME}' file naming a checkpoint; pass the folder training "
            "saved to (--save), or write the tag (e.g. global_step1000) into that file."
        )
    with open(latest) as handle:
        return handle.read().strip()


def write_atomically(path: str, text: str) -> None:
    """Readers see the old file or the new one, never a partial one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _numpy_globals() -> list:
    """What the numpy RNG state of older client states unpickles through: arrays, dtypes, scalars."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(kind)) for kind in (np.uint32, np.int64, np.float64)]
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar, *dtypes]


def load_file(path: str) -> dict:
    """One model-state file, read with ``weights_only=True``; a missing or damaged file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"checkpoint file {path} is missing: the checkpoint is incomplete, or its folder holds another "
            "layout. Point at a complete checkpoint (its 'latest' file names the tag folder)."
        )
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ConfigError(
            f"checkpoint file {path} cannot be read ({type(error).__name__}: {error}); it is truncated or "
            "damaged. Use an earlier checkpoint, or write an earlier tag into the folder's 'latest' file."
        ) from error


@dataclass
class FullModel:
    """A whole model, merged over its tensor and pipeline ranks, with what training needs to continue.

    ``state_dict`` has the names of ``GPTModel(...).state_dict()`` and the saved padded vocabulary;
    ``config`` is the saved ``dataclasses.asdict(Config)``; ``tensor_size``/``pipeline_size`` are the layout
    it was saved in. ``lr_scheduler`` is the LR schedule's state (counted in samples, layout-independent).
    """

    state_dict: dict[str, torch.Tensor]
    config: dict
    iteration: int
    consumed_train_samples: int
    consumed_valid_samples: int
    tensor_size: int
    pipeline_size: int
    skipped_iterations: int = 0
    lr_scheduler: dict | None = None
    consumed_train_tokens: int | None = None

    def model_config(self) -> ModelConfig:
        """The saved model config; keys this version does not know are left out."""
        names = {field.name for field in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{key: value for key, value in self.config["model"].items() if key in names})


def read_client_state(load_dir: str, tag: str | None = None) -> dict:
    """The client state of model-state file 0 (the same counters and config on every rank)."""
    folder = os.path.join(load_dir, tag or read_latest_tag(load_dir))
    first = os.path.join(folder, model_states_name(0))
    if not os.path.isfile(first) and os.path.isfile(os.path.join(folder, zero3_model_states_name(0, 0))):
        raise ConfigError(
            f"{folder} was saved with ZeRO stage 3, which keeps the weights in the optimizer shards only; "
            "converting it is not supported. Resume it in its own layout and save it again with "
            "--zero-stage 1 or 2 (or 0), then convert that checkpoint."
        )
    client = load_file(first)
    config = client.get("config")
    if not isinstance(config, dict) or "parallel" not in config:
        raise ConfigError(
            f"{first} holds no training config (client state 'config'): it was not written by this toolkit's "
            "pretrain_gpt.py, so its model shape and layout are unknown."
        )
    return client


def read_full_model(load_dir: str, tag: str | None = None) -> FullModel:
    """Merge the model saved in ``load_dir`` (the tag named by ``latest`` unless ``tag`` is given)."""
    tag = tag or read_latest_tag(load_dir)
    folder = os.path.join(load_dir, tag)
    client = read_client_state(load_dir, tag)
    config = client["config"]
    tensor_size = config["parallel"]["tensor_model_parallel_size"]
    pipeline_size = config["parallel"]["pipeline_model_parallel_size"]
    prefixes = layer_prefixes_of(config)
    needed = required_files(tensor_size, pipeline_size, prefixes)
    missing = [name for name in needed if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ConfigError(
            f"checkpoint file {os.path.join(folder, missing[0])} is missing ({len(missing)} of the files a "
            f"tensor-parallel {tensor_size}, pipeline-parallel {pipeline_size} checkpoint needs are): the "
            "checkpoint is incomplete. Point at a complete checkpoint."
        )
    shards = [_read_tensor_rank(folder, tensor, pipeline_size, prefixes) for tensor in range(tensor_size)]
    return FullModel(
        state_dict=reshape.merge_tensor_parallel(shards, config["model"]),
        config=config,
        iteration=int(client["iteration"]),
        consumed_train_samples=int(client["consumed_train_samples"]),
        consumed_valid_samples=int(client["consumed_valid_samples"]),
        tensor_size=tensor_size,
        pipeline_size=pipeline_size,
        skipped_iterations=int(client.get("skipped_iterations", 0)),
        lr_scheduler=client.get("lr_scheduler"),
        consumed_train_tokens=client.get("tokens"),
    )


def read_expert_weights(load_dir: str, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Every expert of a MoE checkpoint, under the model's parameter names; empty without experts."""
    folder = os.path.join(load_dir, tag or read_latest_tag(load_dir))
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(os.listdir(folder)):
        if EXPERT_STATES_NAME.fullmatch(name):
            weights.update(load_file(os.path.join(folder, name)))
    return weights


def _read_tensor_rank(
    folder: str, tensor: int, pipeline_size: int, prefixes: list[tuple[int, str]]
) -> dict[str, torch.Tensor]:
    """One tensor rank's weights under the full model's names, from all its pipeline stages."""
    if pipeline_size == 1:
        path = os.path.join(folder, model_states_name(tensor))
        module = load_file(path).get("module")
        if not isinstance(module, dict):
            raise ConfigError(f"{path} holds no model weights ('module'); the checkpoint is damaged.")
        return dict(module)
    state = {}
    for index, prefix in prefixes:
        layer = load_file(os.path.join(folder, layer_states_name(index, tensor)))
        state.update({prefix + key: value for key, value in layer.items()})
    return state


def write_model_checkpoint(
    save_dir: str,
    full: FullModel,
    tensor_size: int,
    pipeline_size: int,
    true_vocab_size: int | None = None,
) -> str:
    """Write ``full`` as a checkpoint of the target layout; returns the tag folder.

    The per-layer files of a pipeline checkpoint do not depend on how layers are partitioned into stages,
    so any ``--pipeline-partition-method`` loads them; each (stage, tensor rank) gets its ``mp_rank`` file
    with the client state. ``true_vocab_size`` is the tokenizer's size, needed only when the padded
    vocabulary of the target T cannot be told otherwise (see :mod:`megatron.checkpointing.reshape`).
    The trackers are written last, so an interrupted conversion is never taken for a checkpoint.
    """
    model = full.config["model"]
    reshape.check_target_layout(model, tensor_size, pipeline_size)
    masked_lm = full.config.get("masked_lm") or {}
    if masked_lm.get("model_type") == "t5" and pipeline_size > 1:
        raise ConfigError(
            f"{reshape.TARGET_P_FLAG} {pipeline_size}: the checkpoint is a T5, which trains without "
            "pipeline parallelism (GPT and BERT only); use 1."
        )
    padded = reshape.target_padded_vocab_size(full.config, full.tensor_size, tensor_size, true_vocab_size)
    repadded = reshape.repad_vocab(full.state_dict, padded)
    shards = reshape.split_tensor_parallel(repadded, tensor_size, model)
    tag = checkpoint_tag(full.iteration)
    folder = os.path.join(save_dir, tag)
    if os.path.isdir(folder) and os.listdir(folder):
        raise ConfigError(
            f"{folder} already exists and is not empty; write the converted checkpoint to a new folder "
            "(--save-dir) so that files of two layouts never mix."
        )
    os.makedirs(folder, exist_ok=True)
    client = _client_state(full, tensor_size, pipeline_size, padded)
    if pipeline_size == 1:
        for tensor, shard in enumerate(shards):
            torch.save({**client, "module": shard}, os.path.join(folder, model_states_name(tensor)))
    else:
        for tensor, shard in enumerate(shards):
            _write_pipeline_layers(folder, shard, tensor, layer_prefixes_of(full.config))
        for stage in range(pipeline_size):
            for tensor in range(tensor_size):
                name = model_states_name(model_rank(stage, tensor, tensor_size))
                torch.save({**client, "module": None}, os.path.join(folder, name))
    write_atomically(os.path.join(save_dir, LATEST_TAG_FILENAME), tag)
    write_atomically(os.path.join(save_dir, TRACKER_FILENAME), str(full.iteration))
    logger.info(
        "wrote %s: tensor-parallel %d, pipeline-parallel %d (from %d, %d), iteration %d",
        folder,
        tensor_size,
        pipeline_size,
        full.tensor_size,
        full.pipeline_size,
        full.iteration,
    )
    return folder


def _write_pipeline_layers(
    folder: str, shard: dict[str, torch.Tensor], tensor: int, prefixes: list[tuple[int, str]]
) -> None:
    remaining = dict(shard)
    for index, prefix in prefixes:
        layer = {
            name[len(prefix) :]: remaining.pop(name) for name in list(remaining) if name.startswith(prefix)
        }
        torch.save(layer, os.path.join(folder, layer_states_name(index, tensor)))
    if remaining:
        raise ConfigError(
            f"parameters {sorted(remaining)[:4]} belong to no pipeline layer; the model has parts this "
            "converter does not know."
        )


def _client_state(full: FullModel, tensor_size: int, pipeline_size: int, padded_vocab_size: int) -> dict:
    """DeepSpeed's keys (what its loader reads) and ours (what training continues from)."""
    config = reshape.converted_config(full.config, tensor_size, pipeline_size, padded_vocab_size)
    state = {
        # DeepSpeed's: its loader checks the number of mp_rank files against mp_world_size (T x P) and
        # reads dp_world_size; the rest is what its engine writes, for its other tools.
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": None,
        "skipped_steps": full.skipped_iterations,
        "global_steps": full.iteration,
        "global_samples": full.consumed_train_samples,
        "dp_world_size": config.get("batch", {}).get("data_parallel_size", 1),
        "mp_world_size": tensor_size * pipeline_size,
        "checkpoint_parallel_dimensions": {"pp_degree": pipeline_size, "tp_degree": tensor_size},
        # Ours: counters, schedule, config; no RNG state (it is per rank of the source layout).
        "iteration": full.iteration,
        "consumed_train_samples": full.consumed_train_samples,
        "consumed_valid_samples": full.consumed_valid_samples,
        "skipped_iterations": full.skipped_iterations,
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": config,
        CONVERTED_FROM: {"tensor": full.tensor_size, "pipeline": full.pipeline_size},
    }
    if full.lr_scheduler is not None:
        state["lr_scheduler"] = full.lr_scheduler
    if full.consumed_train_tokens is not None:
        state["tokens"] = full.consumed_train_tokens
    return state
