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

import torch.distributed as dist

from megatron.checkpointing.layout import (
    CHECKPOINT_VERSION,
    CONVERTED_FROM,
    LATEST_TAG_FILENAME,
    TRACKER_FILENAME,
    checkpoint_tag,
    load_file,
    model_rank,
    model_states_name,
    write_atomically,
    zero3_model_states_name,
)
from megatron.checkpointing.load_guards import (
    check_optimizer_files,
    check_zero3_files,
    check_zero_layout,
    latest_tag,
    log_changed_settings,
)
from megatron.checkpointing.save_guards import check_free_space, guarded_save
from megatron.checkpointing.universal import UNIVERSAL_CHECKPOINT_INFO, universal_checkpoint_info
from megatron.config.errors import ConfigError
from megatron.config.schema import Config
from megatron.parallel.context import ParallelContext
from megatron.training.rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

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
    consumed_train_tokens: int = 0


def model_states_path(checkpoint_dir: str, context: ParallelContext, zero_stage: int) -> str:
    """The file holding this rank's client state; under ZeRO-3 every data-parallel rank writes its own."""
    rank = model_rank(context.pipeline_rank, context.tensor_rank, context.tensor_size)
    name = zero3_model_states_name(context.data_rank, rank) if zero_stage == 3 else model_states_name(rank)
    return os.path.join(checkpoint_dir, name)


def save_checkpoint(engine, save_dir: str, state: TrainState, lr_scheduler, config: Config) -> None:
    """Every rank writes its shards; rank 0 moves the trackers once all ranks have finished. A disk too full
    for the checkpoint, or a failed write, stops every rank before the trackers move."""
    client_state = {
        "iteration": state.iteration,
        "consumed_train_samples": state.consumed_train_samples,
        "consumed_valid_samples": state.consumed_valid_samples,
        "skipped_iterations": state.skipped_iterations,
        # Megatron-DeepSpeed's name for the consumed training tokens (what --train-tokens counts).
        "tokens": state.consumed_train_tokens,
        "lr_scheduler": lr_scheduler.state_dict(),
        "rng_state": get_rng_state(),
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": dataclasses.asdict(config),
    }
    # What DeepSpeed's ds_to_universal needs to merge optimizer shards (checkpoint_util.py --universal).
    # DeepSpeed's MoE checkpoints reserve the key for their own (and MoE runs refuse universal checkpoints).
    if not config.moe.enabled:
        client_state[UNIVERSAL_CHECKPOINT_INFO] = universal_checkpoint_info(client_state["config"])
    tag = checkpoint_tag(state.iteration)
    check_free_space(engine, save_dir, tag, config)
    guarded_save(
        lambda: engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False),
        save_dir,
        tag,
        engine.device,
    )
    if dist.is_initialized():
        dist.barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_atomically(os.path.join(save_dir, LATEST_TAG_FILENAME), tag)
        write_atomically(os.path.join(save_dir, TRACKER_FILENAME), str(state.iteration))
    if dist.is_initialized():
        dist.barrier()
    logger.info("saved checkpoint at iteration %d to %s", state.iteration, save_dir)


def check_compatible(client_state: dict, path: str, config: Config, universal: bool = False) -> None:
    """The saved model shape and layout must be the ones this run builds. A universal checkpoint loads into
    any layout, and its vocabulary is padded again for this one."""
    saved = client_state.get("config")
    if saved is None:
        raise ConfigError(f"--load: {path} holds no training config; it was not written by this toolkit.")
    differences = [
        f"{field} {saved['model'][field]} (checkpoint) vs {getattr(config.model, field)} (flags)"
        for field in _SHAPE_FIELDS
        if saved["model"].get(field) != getattr(config.model, field)
        and not (universal and field == "padded_vocab_size")
    ]
    if differences:
        raise ConfigError(
            f"--load: {path} is a different model: {'; '.join(differences)}. Match the model flags."
        )
    _check_same_experts(saved.get("moe") or {}, path, config)
    if universal:
        return
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


def _check_same_experts(saved: dict, path: str, config: Config) -> None:
    """MoE layers and their expert-parallel split must match: DeepSpeed keeps one file per expert and one
    optimizer shard per expert-parallel rank."""
    experts, ep_size = tuple(saved.get("experts_per_layer", ())), saved.get("expert_parallel_size", 1)
    moe = config.moe
    if experts != moe.experts_per_layer:
        raise ConfigError(
            f"--load: {path} has experts per layer {list(experts) or 'none'}, this run "
            f"{list(moe.experts_per_layer) or 'none'} (--num-experts / --expert-interval). Match the MoE "
            "flags."
        )
    if moe.enabled and ep_size != moe.expert_parallel_size:
        raise ConfigError(
            f"--load: {path} was saved with --moe-expert-parallel-size {ep_size}, this run uses "
            f"{moe.expert_parallel_size}; use the same expert-parallel size."
        )


def load_checkpoint(
    engine, load_dir: str, lr_scheduler, config: Config, context: ParallelContext
) -> TrainState:
    """Resume from the checkpoint that ``load_dir/latest`` names; without one, start afresh, as Megatron does.

    This rank's file is checked first (present, readable, same model and layout), and the optimizer shards
    and ZeRO layout (:mod:`megatron.checkpointing.load_guards`), so a damaged or mismatched checkpoint fails
    with the file's name instead of deep inside DeepSpeed. With ``--finetune`` only the
    weights are taken: counters, optimizer, schedule and RNG start afresh. The LR schedule follows
    ``megatron.config.resume``: its settings by ``scheduler_source``, none of it with --no-load-lr-state;
    --reset-iteration starts the counters from zero.
    """
    options = config.checkpoint
    tag = latest_tag(load_dir)
    if tag is None:
        logger.warning("no checkpoint found in --load %s (no 'latest' file); starting from scratch", load_dir)
        return TrainState()
    folder = os.path.join(load_dir, tag)
    universal = bool(config.deepspeed.ds_config.get("checkpoint", {}).get("load_universal", False))
    path = model_states_path(folder, context, config.deepspeed.zero_stage)
    if universal:  # it keeps the source layout's files, so this rank's may not exist; any describes it
        path = os.path.join(folder, model_states_name(0))
    else:
        check_zero3_files(folder, path, config)
    saved = load_file(path)
    check_compatible(saved, path, config, universal)
    # Converted to this layout by tools/checkpoint_util.py: weights, counters and LR schedule only.
    converted = saved.get(CONVERTED_FROM)
    module_only = options.finetune or converted is not None
    loads_optimizer = not (options.no_load_optim or module_only)
    if not universal and converted is None:
        check_zero_layout(saved["config"], folder, config, loads_optimizer)
        if loads_optimizer:
            check_optimizer_files(folder, saved["config"], context)
    if not options.finetune:
        log_changed_settings(saved["config"], config)
    loaded_path, client_state = engine.load_checkpoint(
        load_dir,
        tag=tag,
        load_optimizer_states=loads_optimizer,
        load_lr_scheduler_states=False,
        load_module_only=module_only,
    )
    if loaded_path is None:
        raise ConfigError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")
    logger.info("loaded checkpoint %s", loaded_path)
    if options.finetune:
        return TrainState()
    if converted is not None or universal:
        parallel = saved["config"]["parallel"]
        logger.info(
            "checkpoint from tensor-parallel %d, pipeline-parallel %d: %s; RNG seeded afresh",
            converted["tensor"] if converted else parallel["tensor_model_parallel_size"],
            converted["pipeline"] if converted else parallel["pipeline_model_parallel_size"],
            "weights only, optimizer state afresh" if converted else "weights and optimizer state resharded",
        )
    if options.no_load_lr_state:
        logger.info("LR schedule: not loaded (--no-load-lr-state); it starts from its beginning")
    elif not options.no_load_optim and "lr_scheduler" in client_state:
        lr_scheduler.load_state_dict(client_state["lr_scheduler"], options.scheduler_source)
    # RNG states belong to the ranks of the saved layout: only an unconverted checkpoint restores them.
    if not options.no_load_rng and converted is None and not universal:
        set_rng_state(client_state["rng_state"])
    if options.reset_iteration:
        # DeepSpeed counts its own steps too (its pipeline schedule and logs read them).
        engine.global_steps, engine.global_samples = 0, 0
        logger.info("iteration, consumed samples and tokens start from zero (--reset-iteration)")
        return TrainState()
    return TrainState(
        iteration=client_state["iteration"],
        consumed_train_samples=client_state["consumed_train_samples"],
        consumed_valid_samples=client_state["consumed_valid_samples"],
        skipped_iterations=client_state.get("skipped_iterations", 0),
        # Checkpoints from before "tokens" was saved: the schedule's count, which leaves out skipped steps.
        consumed_train_tokens=client_state.get(
            "tokens", client_state.get("lr_scheduler", {}).get("num_tokens", 0)
        ),
    )
