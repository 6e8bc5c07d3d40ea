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

    def model_inputs(self) -> tuple:
        """The positional arguments of the model's forward (each model family's batch has its own)."""
        return self.tokens, self.labels, self.loss_mask, self.position_offset


def make_batch(
    sample: dict,
    device: torch.device,
    eod: int,
    eod_mask_loss: bool,
    context: ParallelContext,
    seq_length: int | None = None,
) -> Batch:
    """Samples hold seq_length + 1 tokens: inputs are all but the last, labels all but the first.

    ``seq_length`` keeps only the first tokens of each sample (a sequence-length curriculum cuts every
    sample, before any split). Under DeepSpeed-Ulysses each rank of the sequence group keeps its contiguous
    part of the sequence.
    """
    text = sample["text"]
    if seq_length is not None:
        text = text[:, : seq_length + 1]
    text = text.to(device, non_blocking=True)
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
    # The MoE load-balancing loss (already x --moe-loss-coeff), mean over micro batches; None without MoE.
    moe_loss: torch.Tensor | None = None


def split_losses(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(lm loss, moe loss or None) from what the model returns (a pair when it has MoE layers)."""
    return tuple(output) if isinstance(output, tuple) else (output, None)


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
    moe_loss_sum = None
    grad_norm = None
    for index in range(num_micro_batches):
        batch = next(micro_batches)
        loss, moe_loss = split_losses(engine(*batch.model_inputs()))
        engine.backward(loss if moe_loss is None else loss + moe_loss)
        if own_grad_norm and index == num_micro_batches - 1:
            grad_norm = gradient_norm(list(engine.module.parameters()), context)
        engine.step()
        loss_sum += loss.detach().float()
        if moe_loss is not None:
            moe_loss_sum = moe_loss.detach().float() + (0.0 if moe_loss_sum is None else moe_loss_sum)
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
    moe_mean = None if moe_loss_sum is None else moe_loss_sum / num_micro_batches
    return StepResult(loss_sum / num_micro_batches, grad_norm, engine.was_step_applied(), moe_mean)


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
        output = engine(*batch.model_inputs())
        loss_sum += split_losses(output)[0].float()
    engine.train()
    return loss_sum / num_micro_batches


def pipeline_evaluate(engine, micro_batches: Iterator[Batch], num_micro_batches: int) -> torch.Tensor:
    loss = engine.eval_batch(data_iter=pipeline_inputs(micro_batches), num_micro_batches=num_micro_batches)
    engine.train()
    return loss.detach().float()
