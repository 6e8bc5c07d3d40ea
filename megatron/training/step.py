"""One training iteration and one evaluation pass, through the plain or the pipeline DeepSpeed engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from megatron.parallel.context import ParallelContext
from megatron.training.grad_norm import gradient_norm


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor | None
    # Where this rank's tokens start in the sample (non-zero when DeepSpeed-Ulysses splits the sequence).
    position_offset: int = 0


def make_batch(
    sample: dict, device: torch.device, eod: int, eod_mask_loss: bool, context: ParallelContext
) -> Batch:
    """Samples hold seq_length + 1 tokens: inputs are all but the last, labels all but the first.

    Under DeepSpeed-Ulysses each rank of the sequence group keeps its contiguous part of the sequence.
    """
    text = sample["text"].to(device, non_blocking=True)
    tokens, labels = text[:, :-1], text[:, 1:]
    offset = 0
    if context.ulysses_size > 1:
        length = tokens.shape[1] // context.ulysses_size
        offset = context.ulysses_rank * length
        tokens, labels = tokens[:, offset : offset + length], labels[:, offset : offset + length]
    tokens, labels = tokens.contiguous(), labels.contiguous()
    loss_mask = (tokens != eod).float() if eod_mask_loss else None
    return Batch(tokens, labels, loss_mask, offset)


def pipeline_inputs(
    batches: Iterator[Batch],
) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
    """DeepSpeed's pipeline format: inputs for the first stage, ``(labels, loss mask)`` for the last."""
    for batch in batches:
        mask = (
            batch.loss_mask
            if batch.loss_mask is not None
            else torch.ones_like(batch.labels, dtype=torch.float)
        )
        yield batch.tokens, (batch.labels, mask)


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the iteration's micro batches, still on the device
    grad_norm: float | torch.Tensor | None
    update_applied: bool


def train_step(
    engine,
    micro_batches: Iterator[Batch],
    num_micro_batches: int,
    context: ParallelContext,
    own_grad_norm: bool,
) -> StepResult:
    """Forward and backward over ``num_micro_batches``, then the engine's optimizer step at the boundary.

    DeepSpeed steps the optimizer on the last micro batch of the accumulation window by itself. When the
    engine does not wrap the optimizer (ZeRO 0 in fp32) it does not record the gradient norm either, so
    ``own_grad_norm`` makes this function measure it before the update, without a host sync.
    """
    loss_sum = torch.zeros((), device=engine.device)
    grad_norm = None
    for index in range(num_micro_batches):
        batch = next(micro_batches)
        loss = engine(batch.tokens, batch.labels, batch.loss_mask, batch.position_offset)
        engine.backward(loss)
        if own_grad_norm and index == num_micro_batches - 1:
            grad_norm = gradient_norm(list(engine.module.parameters()), context)
        engine.step()
        loss_sum += loss.detach().float()
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
    return StepResult(loss_sum / num_micro_batches, grad_norm, engine.was_step_applied())


def pipeline_train_step(engine, micro_batches: Iterator[Batch]) -> StepResult:
    """DeepSpeed's pipeline schedule runs the accumulation window itself (1F1B over the stages)."""
    loss = engine.train_batch(data_iter=pipeline_inputs(micro_batches))
    return StepResult(loss.detach().float(), engine.get_global_grad_norm(), engine.was_step_applied())


@torch.no_grad()
def evaluate(engine, micro_batches: Iterator[Batch], num_micro_batches: int) -> torch.Tensor:
    """Mean loss over ``num_micro_batches`` with dropout off; the engine is back in training mode after."""
    engine.eval()
    loss_sum = torch.zeros((), device=engine.device)
    for _ in range(num_micro_batches):
        batch = next(micro_batches)
        loss_sum += engine(batch.tokens, batch.labels, batch.loss_mask, batch.position_offset).float()
    engine.train()
    return loss_sum / num_micro_batches


def pipeline_evaluate(engine, micro_batches: Iterator[Batch], num_micro_batches: int) -> torch.Tensor:
    loss = engine.eval_batch(data_iter=pipeline_inputs(micro_batches), num_micro_batches=num_micro_batches)
    engine.train()
    return loss.detach().float()
