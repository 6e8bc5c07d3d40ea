"""Activation recomputation applied to a built model, so the model code itself knows nothing about it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import deepspeed
from torch import nn

logger = logging.getLogger(__name__)


def apply_deepspeed_activation_checkpointing(layers: nn.ModuleList, ds_config: Mapping[str, Any]) -> None:
    """Recompute each transformer layer in backward through ``deepspeed.checkpointing.checkpoint``.

    DeepSpeed's checkpoint function saves and restores the RNG state around the recomputation, so dropout
    draws the same masks twice and the gradients equal those of a run without recomputation. Its options
    (partitioning, CPU offload) come from the ds_config's ``activation_checkpointing`` section.
    """
    deepspeed.checkpointing.configure(None, deepspeed_config=dict(ds_config), num_checkpoints=len(layers))
    for layer in layers:
        forward = layer.forward

        def recomputed_forward(hidden, _forward=forward):
            return deepspeed.checkpointing.checkpoint(_forward, hidden)

        layer.forward = recomputed_forward
    logger.info("activation checkpointing: DeepSpeed, every transformer layer (%d)", len(layers))
