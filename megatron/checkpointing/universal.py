"""DeepSpeed's universal checkpoint: weights *and* optimizer state, loadable into any T, P and D.

DeepSpeed's ``ds_to_universal`` merges the ZeRO (stage 1/2) optimizer shards of every rank into one folder
per parameter (``TAG/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``); a run whose ds_config has
``"checkpoint": {"load_universal": true}`` then cuts each parameter for its own tensor rank and ZeRO
partition. To merge tensor-parallel shards it needs to know how each parameter is split, which the model
states in the client state entry ``universal_checkpoint_info`` (:func:`universal_checkpoint_info`):
replicated parameters, row-parallel ones (concatenated along dimension 1), the vocabulary-padded word
embedding (cut to the tokenizer's size, padded again for the target), and with pipeline parallelism the last
stage's copy of the tied embedding.

Parameters are named as DeepSpeed's engine names them, which differs between P = 1 (Megatron's names) and
P > 1 (the ``PipelineModule``'s); :func:`convert_to_universal` renames the folders for the target, so a
universal checkpoint moves between the two. Checkpoints saved without the client state entry get it
injected from their saved config, in a staging folder of links, without touching the source.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile

import torch
from deepspeed.checkpoint.constants import PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0

from megatron.checkpointing import layout
from megatron.checkpointing.reshape import TENSOR_PARALLEL_DIMS, true_vocab_size_from_config
from megatron.config.errors import ConfigError

logger = logging.getLogger(__name__)

UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"
LATEST_UNIVERSAL_FILENAME = "latest_universal"


def universal_checkpoint_info(config: dict) -> dict:
    """The client state entry ``universal_checkpoint_info`` for a run saved with ``config`` (the saved
    ``dataclasses.asdict(Config)``).

    Patterns match the engine's parameter names for the run's own P. Split parameters not listed are
    concatenated along dimension 0 (column-parallel weights and biases, the word embedding). Every pattern
    must match some parameter, or DeepSpeed's converter refuses the checkpoint.
    """
    model = config["model"]
    pipeline = config["parallel"]["pipeline_model_parallel_size"] > 1
    biases = model.get("add_bias_linear", True)
    untied = model.get("untie_embeddings_and_output_weights", False)
    final_norm_layer = model["num_layers"] + 1
    replicated = [
        r".*\.input_layernorm\.(weight|bias)$",
        r".*\.post_attention_layernorm\.(weight|bias)$",
        rf"^{final_norm_layer}\.(weight|bias)$" if pipeline else r".*\.final_layernorm\.(weight|bias)$",
    ]
    if model.get("learned_position_embeddings", True):
        replicated.append(r".*\.position_embeddings\.weight$")
    if biases:
        replicated += [r".*\.self_attention\.dense\.bias$", r".*\.mlp\.dense_4h_to_h\.bias$"]
    vocabulary = [r".*\.word_embeddings\.weight$"]
    if untied:
        vocabulary.append(rf"^{final_norm_layer + 1}\.weight$" if pipeline else r".*\.output_layer\.weight$")
    padded = model["padded_vocab_size"]
    info = {
        "universal_checkpoint_version": 0.2,
        "tp_replicated_parameter_patterns": replicated,
        "parameter_with_row_parallelism_patterns": [
            rf".*\.{re.escape(suffix)}$" for suffix, dim in TENSOR_PARALLEL_DIMS.items() if dim == 1
        ],
        "vocabulary_parameter_patterns": vocabulary,
        # Without the tokenizer, keep every row: the target then needs at least as many.
        "original_vocab_size": true_vocab_size_from_config(config) or padded,
        "padded_vocab_size": padded,
    }
    if model.get("swiglu", False):
        # [gate; up]: each rank's shard holds a chunk of both (see megatron.parallel.layers).
        info[PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0] = [
            rf".*\.mlp\.dense_h_to_4h\.{kind}$" for kind in (("weight", "bias") if biases else ("weight",))
        ]
    if pipeline and not untied:
        # The last stage's copy of the tied embedding: the first stage's shards hold the same values.
        info["pipeline_replicated_parameter_patterns"] = [r"^tied_modules\.embedding\."]
    return info


def convert_to_universal(load_dir: str, save_dir: str, pipeline_size: int, tag: str | None = None) -> str:
    """Write the universal form of ``load_dir``'s checkpoint to ``save_dir/TAG``; returns that folder.

    ``pipeline_size`` is the target's P, which decides only the parameter names (P = 1 or P > 1); the target
    T and data-parallel size are free. The trackers ``latest`` (read by our loader), ``latest_universal``
    (DeepSpeed's) and ``latest_checkpointed_iteration.txt`` are written last.
    """
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    tag = tag or layout.read_latest_tag(load_dir)
    source = os.path.join(load_dir, tag)
    client = layout.read_client_state(load_dir, tag)
    config = client["config"]
    if not any(name.endswith("_optim_states.pt") for name in os.listdir(source)):
        raise ConfigError(
            f"{source} has no ZeRO optimizer shards (*_optim_states.pt): a universal checkpoint is built "
            "from them, so the run must have saved with --zero-stage 1 or 2. Convert the weights alone "
            "instead (without --universal)."
        )
    num_layers = config["model"]["num_layers"]
    if not 1 <= pipeline_size <= num_layers:
        raise ConfigError(
            f"--target-pipeline-parallel-size {pipeline_size}: must be between 1 and the checkpoint's "
            f"{num_layers} transformer layers."
        )
    output = os.path.join(save_dir, tag)
    if os.path.isdir(output) and os.listdir(output):
        raise ConfigError(f"{output} already exists and is not empty; write to a new folder (--save-dir).")
    os.makedirs(save_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=save_dir, prefix=".staging-") as staging:
        arguments = argparse.Namespace(
            input_folder=_with_universal_info(source, staging, client),
            output_folder=output,
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=False,
        )
        ds_to_universal(arguments)
    _rename_parameters(os.path.join(output, "zero"), config, pipeline=pipeline_size > 1)
    layout.write_atomically(os.path.join(save_dir, LATEST_UNIVERSAL_FILENAME), tag)
    layout.write_atomically(os.path.join(save_dir, layout.LATEST_TAG_FILENAME), tag)
    layout.write_atomically(os.path.join(save_dir, layout.TRACKER_FILENAME), str(client["iteration"]))
    return output


def _with_universal_info(source: str, staging: str, client: dict) -> str:
    """``source`` itself when its model-state files carry the entry; otherwise a folder of links to its
    files in which the model-state files are copies with the entry added."""
    if UNIVERSAL_CHECKPOINT_INFO in client:
        return source
    info = universal_checkpoint_info(client["config"])
    model_states = re.compile(r"mp_rank_\d+_model_states\.pt")
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if model_states.fullmatch(name):
            state = {**layout.load_file(path), UNIVERSAL_CHECKPOINT_INFO: info}
            torch.save(state, os.path.join(staging, name))
        else:
            os.symlink(os.path.abspath(path), os.path.join(staging, name))
    return staging


def _rename_parameters(zero_folder: str, config: dict, pipeline: bool) -> None:
    """Name every parameter folder as the target engine names the parameter (see layout)."""
    for megatron, engine in layout.engine_parameter_prefixes(config):
        old, new = (megatron, engine) if pipeline else (engine, megatron)
        for name in os.listdir(zero_folder):
            if name.startswith(old):
                renamed = new + name[len(old) :]
                shutil.move(os.path.join(zero_folder, name), os.path.join(zero_folder, renamed))
