"""Seeds, model, optimizer and the DeepSpeed engine, in the order that makes runs reproducible."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import deepspeed
import torch
from deepspeed.pipe import PipelineModule
from torch import nn

from megatron.config.schema import Config
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import configure_recomputation, seed_tensor_parallel_rng
from megatron.training.grad_norm import clip_gradients_, mark_for_deepspeed_norm
from megatron.training.lr_schedule import LRScheduler
from megatron.training.optimizer import build_optimizer
from megatron.training.rng import set_seed

logger = logging.getLogger("megatron")

ModelProvider = Callable[[Config, ParallelContext], nn.Module]


@dataclass
class TrainingEngine:
    engine: deepspeed.DeepSpeedEngine
    lr_scheduler: LRScheduler
    is_pipeline: bool
    # True when DeepSpeed keeps no gradient norm for us (it does not wrap the optimizer: ZeRO 0, fp32).
    own_grad_norm: bool


def build_engine(config: Config, context: ParallelContext, model_provider: ModelProvider) -> TrainingEngine:
    """Seed, build the model (a ``PipelineModule`` when it spans pipeline stages), its optimizer and LR
    schedule, and hand them to ``deepspeed.initialize`` with the reconciled ds_config.

    The parallel context is DeepSpeed's "mpu": ZeRO shards and averages gradients over the data-parallel
    group only, and gradient clipping counts tensor-parallel shards once.
    """
    set_seed(config.seed)
    configure_recomputation(context, config.deepspeed.ds_config if config.recompute.deepspeed else None)
    seed_tensor_parallel_rng(config.seed, context)
    model = model_provider(config, context)
    is_pipeline = isinstance(model, PipelineModule)
    if is_pipeline:
        mark_for_deepspeed_norm(model, context)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %.1fM parameters on this rank (tensor-parallel %d, pipeline %d, data-parallel %d%s), "
        "attention through torch SDPA, %s, %s engine",
        parameters / 1e6,
        context.tensor_size,
        context.pipeline_size,
        context.data_size,
        ", sequence-parallel" if context.sequence_parallel else "",
        config.precision.dtype_name,
        "pipeline" if is_pipeline else "DeepSpeed",
    )
    optimizer = build_optimizer(model, config.optimizer, "cuda" if torch.cuda.is_available() else "cpu")
    lr_scheduler = LRScheduler(
        optimizer, config.optimizer.lr, config.lr_schedule, config.batch.global_batch_size
    )
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=dict(config.deepspeed.ds_config),
        mpu=None if is_pipeline else context,
    )
    unwrapped_optimizer = isinstance(engine.optimizer, torch.optim.Optimizer)
    if is_pipeline and unwrapped_optimizer:
        # DeepSpeed's fp32 clipping miscounts pipeline stages (see megatron.training.grad_norm).
        engine.clip_fp32_gradients = partial(
            clip_gradients_, list(engine.module.parameters()), engine.gradient_clipping(), context
        )
    own_grad_norm = not is_pipeline and unwrapped_optimizer
    return TrainingEngine(engine, lr_scheduler, is_pipeline, own_grad_norm)
