"""One training iteration and one evaluation pass through the DeepSpeed engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor | None


def make_batch(sample: dict, device: torch.device, eod: int, eod_mask_loss: bool) -> Batch:
    """Samples hold seq_length + 1 tokens: inputs are all but the last, labels all but the first."""
    text = sample["text"].to(device, non_blocking=True)
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask = (tokens != eod).float() if eod_mask_loss else None
    return Batch(tokens, labels, loss_mask)


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the iteration's micro batches on this rank, still on the device
    grad_norm: float | None
    update_applied: bool


def train_step(
    engine, micro_batches: Iterator[Batch], num_micro_batches: int, own_grad_norm: bool
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
        loss = engine(batch.tokens, batch.labels, batch.loss_mask)
        engine.backward(loss)
        if own_grad_norm and index == num_micro_batches - 1:
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
        engine.step()
        loss_sum += loss.detach().float()
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
    return StepResult(loss_sum / num_micro_batches, grad_norm, engine.was_step_applied())


@torch.no_grad()
def evaluate(engine, micro_batches: Iterator[Batch], num_micro_batches: int) -> torch.Tensor:
    """Mean loss over ``num_micro_batches`` with dropout off; the engine is back in training mode after."""
    engine.eval()
    loss_sum = torch.zeros((), device=engine.device)
    for _ in range(num_micro_batches):
        batch = next(micro_batches)
        loss_sum += engine(batch.tokens, batch.labels, batch.loss_mask).float()
    engine.train()
    return loss_sum / num_micro_batches
