"""One training iteration and one evaluation pass, through the plain or the pipeline DeepSpeed engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from megatron.parallel.context import ParallelContext
from megatron.training.grad_norm import GradientClipper
from megatron.training.timers import StepTimers

# What DeepSpeed's pipeline engine takes per micro batch: the first stage's input (a tensor or a tuple of
# them) and the last stage's loss labels.
PipelineSample = tuple[torch.Tensor | tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]


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

    def pipeline_inputs(self) -> PipelineSample:
        """GPT's pipeline stages take the tokens; its loss takes ``(labels, loss mask)``."""
        mask = self.loss_mask
        if mask is None:
            mask = torch.ones_like(self.labels, dtype=torch.float)
        return self.tokens, (self.labels, mask)


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


def pipeline_inputs(batches: Iterator[Batch]) -> Iterator[PipelineSample]:
    """DeepSpeed's pipeline format, from each model family's batch (its ``pipeline_inputs()``)."""
    for batch in batches:
        yield batch.pipeline_inputs()


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the iteration's micro batches, still on the device
    grad_norm: float | torch.Tensor | None
    update_applied: bool
    # The model's second loss, already in ``loss``'s gradient but logged apart: MoE's load balancing (x
    # --moe-loss-coeff) or BERT's sentence order; mean over micro batches, None when the model has none.
    aux_loss: torch.Tensor | None = None


def split_losses(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(lm loss, second loss or None) from what the model returns (a pair with MoE layers or BERT's binary
    head)."""
    return tuple(output) if isinstance(output, tuple) else (output, None)


def move_grads_out_of_graph_memory(module: nn.Module) -> None:
    """Give every ``.grad`` memory of its own, before the next micro batch replays the CUDA graphs.

    A replayed CUDA graph (torch.compile's reduce-overhead) writes its outputs into memory that the next
    replay reuses, and autograd keeps the first backward's gradient outputs as the parameters' ``.grad``
    instead of copying them; accumulating the next micro batch's gradients into them would read memory
    that replay has overwritten. One copy per micro batch but the last, none without accumulation.
    """
    for param in module.parameters():
        if param.grad is not None:
            param.grad = param.grad.clone()


def train_step(
    engine,
    micro_batches: Iterator[Batch],
    num_micro_batches: int,
    clipper: GradientClipper | None = None,
    replays_cuda_graphs: bool = False,
    timers: StepTimers | None = None,
) -> StepResult:
    """Forward and backward over ``num_micro_batches``, then the engine's optimizer step at the boundary.

    DeepSpeed steps the optimizer on the last micro batch of the accumulation window by itself. When the
    engine does not wrap the optimizer (ZeRO 0 in fp32 or bf16 autocast) ``clipper`` keeps the gradient
    norm: the engine has it clip at the update, and without clipping it is measured here, before the
    update. Either way without a host sync. ``replays_cuda_graphs``: the model runs as CUDA graphs (see
    :func:`move_grads_out_of_graph_memory`). ``timers`` time the parts of the step (--timing-log-level);
    the boundary's ``engine.step()``, which updates, is the "optimizer" part.
    """
    timers = timers or StepTimers(0, engine.device)
    loss_sum = torch.zeros((), device=engine.device)
    aux_loss_sum = None
    for index in range(num_micro_batches):
        boundary = index == num_micro_batches - 1
        with timers.measure("forward-backward"):
            if replays_cuda_graphs and index > 0:
                move_grads_out_of_graph_memory(engine.module)
            with timers.measure("batch-generator"):
                batch = next(micro_batches)
            with timers.measure("forward-compute"):
                loss, aux_loss = split_losses(engine(*batch.model_inputs()))
            with timers.measure("backward-compute"):
                engine.backward(loss if aux_loss is None else loss + aux_loss)
            if clipper is not None and clipper.max_norm == 0 and boundary:
                clipper.measure()
        # Off the boundary the engine's step only closes the micro batch; at it, it updates.
        with timers.measure("optimizer" if boundary else "forward-backward"):
            engine.step()
        loss_sum += loss.detach().float()
        if aux_loss is not None:
            aux_loss_sum = aux_loss.detach().float() + (0.0 if aux_loss_sum is None else aux_loss_sum)
    grad_norm = clipper.last_norm if clipper is not None else engine.get_global_grad_norm()
    aux_mean = None if aux_loss_sum is None else aux_loss_sum / num_micro_batches
    return StepResult(loss_sum / num_micro_batches, grad_norm, engine.was_step_applied(), aux_mean)


def pipeline_train_step(
    engine, micro_batches: Iterator[Batch], clipper: GradientClipper | None = None
) -> StepResult:
    """DeepSpeed's pipeline schedule runs the accumulation window itself (1F1B over the stages);
    ``clipper`` as in :func:`train_step` (the pipeline engine calls it at the update when clipping)."""
    loss = engine.train_batch(data_iter=pipeline_inputs(micro_batches)).detach().float()
    # A model's named second loss (its PipelineModule's get_additional_losses, BERT's sentence order) comes
    # averaged like the loss, which includes it: take it out so that the two are logged apart.
    additional = engine.agg_additional_losses
    aux_loss = None if not additional else torch.stack(list(additional.values())).float().sum()
    if aux_loss is not None:
        loss = loss - aux_loss
    # Without clipping the pipeline engine never calls the clipper: no norm is logged then.
    grad_norm = clipper.last_norm if clipper is not None else engine.get_global_grad_norm()
    return StepResult(loss, grad_norm, engine.was_step_applied(), aux_loss)


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
