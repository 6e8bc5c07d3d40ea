"""Checkpoints in the Megatron-DeepSpeed layout, written through the DeepSpeed engine.

``SAVE/global_stepN/`` holds DeepSpeed's model-state files (``mp_rank_XX_model_states.pt``, whose ``module``
entry carries Megatron's parameter names; with pipeline parallelism one ``layer_XX-model_YY`` file per layer)
and its optimizer shards; ``SAVE/latest`` names the newest tag for DeepSpeed and
``SAVE/latest_checkpointed_iteration.txt`` the newest iteration for Megatron's tools. Our training state
(iteration, consumed samples, LR schedule, RNG, the config) rides in DeepSpeed's client state.

Crash safety: the trackers are written by rank 0 only after every rank has finished writing its files, each
through a temporary file renamed into place, so they always name a complete checkpoint; a save that dies
half-way leaves an unreferenced ``global_stepN`` folder and the previous checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.config.errors import ConfigError
from megatron.config.schema import Config
from megatron.parallel.context import ParallelContext
from megatron.training.rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3.0
LATEST_TAG_FILENAME = "latest"
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
# Model fields that must agree between a checkpoint and the run that loads it.
_SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
    "max_position_embeddings",
    "padded_vocab_size",
)


@dataclass
class TrainState:
    """Progress counters that must survive a restart for the run to continue where it stopped."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    skipped_iterations: int = 0


def checkpoint_tag(iteration: int) -> str:
    return f"global_step{iteration}"


def model_states_path(checkpoint_dir: str, context: ParallelContext, zero_stage: int) -> str:
    """The file holding this rank's client state. DeepSpeed numbers it by the rank within the tensor x
    pipeline group (stage x T + tensor rank); under ZeRO-3 every data-parallel rank writes its own."""
    rank = context.pipeline_rank * context.tensor_size + context.tensor_rank
    name = f"mp_rank_{rank:02d}_model_states.pt"
    if zero_stage == 3:
        name = f"zero_pp_rank_{context.data_rank}_{name}"
    return os.path.join(checkpoint_dir, name)


def _write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_checkpoint(engine, save_dir: str, state: TrainState, lr_scheduler, config: Config) -> None:
    """Every rank writes its shards; rank 0 moves the trackers once all ranks have finished."""
    client_state = {
        "iteration": state.iteration,
        "consumed_train_samples": state.consumed_train_samples,
        "consumed_valid_samples": state.consumed_valid_samples,
        "skipped_iterations": state.skipped_iterations,
        "lr_scheduler": lr_scheduler.state_dict(),
        "rng_state": get_rng_state(),
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": dataclasses.asdict(config),
    }
    tag = checkpoint_tag(state.iteration)
    engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        _write_atomically(os.path.join(save_dir, LATEST_TAG_FILENAME), tag)
        _write_atomically(os.path.join(save_dir, TRACKER_FILENAME), str(state.iteration))
    if dist.is_initialized():
        dist.barrier()
    logger.info("saved checkpoint at iteration %d to %s", state.iteration, save_dir)


def read_client_state(path: str) -> dict:
    """A model-state file, read with ``weights_only=True``; a missing or damaged file is a clear error."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"--load: checkpoint file {path} is missing; the checkpoint is incomplete or was saved with "
            "another tensor/pipeline layout (convert it with tools/checkpoint_util.py)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ConfigError(
            f"--load: checkpoint file {path} cannot be read ({type(error).__name__}: {error}); it is "
            "truncated or damaged. Point --load at an earlier checkpoint, or write an earlier tag into its "
            "'latest' file."
        ) from error


def check_compatible(client_state: dict, path: str, config: Config) -> None:
    """The saved model shape and layout must be the ones this run builds."""
    saved = client_state.get("config")
    if saved is None:
        raise ConfigError(f"--load: {path} holds no training config; it was not written by this toolkit.")
    differences = [
        f"{field} {saved['model'][field]} (checkpoint) vs {getattr(config.model, field)} (flags)"
        for field in _SHAPE_FIELDS
        if saved["model"].get(field) != getattr(config.model, field)
    ]
    if differences:
        raise ConfigError(
            f"--load: {path} is a different model: {'; '.join(differences)}. Match the model flags."
        )
    for field, flag in (
        ("tensor_model_parallel_size", "--tensor-model-parallel-size"),
        ("pipeline_model_parallel_size", "--pipeline-model-parallel-size"),
    ):
        if saved["parallel"][field] != getattr(config.parallel, field):
            raise ConfigError(
                f"--load: {path} was saved with {flag} {saved['parallel'][field]}, this run uses "
                f"{getattr(config.parallel, field)}. Convert it first: tools/checkpoint_util.py --load-dir "
                "... --save-dir ... --target-tensor-parallel-size T --target-pipeline-parallel-size P."
            )


def load_checkpoint(
    engine, load_dir: str, lr_scheduler, config: Config, context: ParallelContext
) -> TrainState:
    """Resume from the checkpoint that ``load_dir/latest`` names; without one, start afresh, as Megatron does.

    This rank's file is checked first (present, readable, same model and layout), so a damaged or mismatched
    checkpoint fails with the file's name instead of deep inside DeepSpeed. With ``--finetune`` only the
    weights are taken: counters, optimizer, schedule and RNG start afresh.
    """
    options = config.checkpoint
    latest = os.path.join(load_dir, LATEST_TAG_FILENAME)
    if not os.path.exists(latest):
        logger.warning("no checkpoint found in --load %s (no 'latest' file); starting from scratch", load_dir)
        return TrainState()
    with open(latest) as handle:
        tag = handle.read().strip()
    path = model_states_path(os.path.join(load_dir, tag), context, config.deepspeed.zero_stage)
    check_compatible(read_client_state(path), path, config)
    loaded_path, client_state = engine.load_checkpoint(
        load_dir,
        tag=tag,
        load_optimizer_states=not (options.no_load_optim or options.finetune),
        load_lr_scheduler_states=False,
        load_module_only=options.finetune,
    )
    if loaded_path is None:
        raise ConfigError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")
    logger.info("loaded checkpoint %s", loaded_path)
    if options.finetune:
        return TrainState()
    if not options.no_load_optim:
        lr_scheduler.load_state_dict(client_state["lr_scheduler"])
    if not options.no_load_rng:
        set_rng_state(client_state["rng_state"])
    return TrainState(
        iteration=client_state["iteration"],
        consumed_train_samples=client_state["consumed_train_samples"],
        consumed_valid_samples=client_state["consumed_valid_samples"],
        skipped_iterations=client_state.get("skipped_iterations", 0),
    )
