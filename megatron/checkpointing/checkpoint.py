"""Checkpoints in the Megatron-DeepSpeed layout, written through the DeepSpeed engine.

``SAVE/global_stepN/`` holds DeepSpeed's model-state file (``mp_rank_00_model_states.pt``, whose ``module``
entry carries Megatron's parameter names) and its optimizer shards; ``SAVE/latest`` names the newest tag for
DeepSpeed and ``SAVE/latest_checkpointed_iteration.txt`` the newest iteration for Megatron's tools. Our own
training state (iteration, consumed samples, LR schedule, RNG, the config) rides in DeepSpeed's client state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch.distributed as dist

from megatron.config.schema import Config
from megatron.training.rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 3.0
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"


@dataclass
class TrainState:
    """Progress counters that must survive a restart for the run to continue where it stopped."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    skipped_iterations: int = 0


def checkpoint_tag(iteration: int) -> str:
    return f"global_step{iteration}"


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
    engine.save_checkpoint(save_dir, tag=checkpoint_tag(state.iteration), client_state=client_state)
    if dist.is_initialized():
        dist.barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        tracker = os.path.join(save_dir, TRACKER_FILENAME)
        with open(tracker + ".tmp", "w") as handle:
            handle.write(str(state.iteration))
        os.replace(tracker + ".tmp", tracker)
    logger.info("saved checkpoint at iteration %d to %s", state.iteration, save_dir)


def load_checkpoint(engine, load_dir: str, lr_scheduler, config: Config) -> TrainState:
    """Resume from the newest checkpoint in ``load_dir``; without one, start afresh, as Megatron does.

    With ``--finetune`` only the weights are taken: counters, optimizer, schedule and RNG start afresh.
    """
    options = config.checkpoint
    if not os.path.exists(os.path.join(load_dir, "latest")):
        logger.warning("no checkpoint found in --load %s (no 'latest' file); starting from scratch", load_dir)
        return TrainState()
    path, client_state = engine.load_checkpoint(
        load_dir,
        load_optimizer_states=not (options.no_load_optim or options.finetune),
        load_lr_scheduler_states=False,
        load_module_only=options.finetune,
    )
    if path is None:
        raise FileNotFoundError(
            f"--load {load_dir}: DeepSpeed could not load the checkpoint named by 'latest'"
        )
    logger.info("loaded checkpoint %s", path)
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
