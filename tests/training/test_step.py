"""The training step's gradient accumulation when the model's backward reuses its output memory, as CUDA
graphs replayed by torch.compile's reduce-overhead mode do (on a GPU that overwrote the first micro batch's
gradients, or raised "accessing tensor output of CUDAGraphs that has been overwritten")."""

from __future__ import annotations

import deepspeed
import pytest
import torch
from torch import nn

from megatron.training.step import Batch, train_step


class ReplayedBackward(torch.autograd.Function):
    """Identity whose backward writes the incoming gradient into one buffer shared by every call and hands
    out a fresh tensor over that memory: what a replayed CUDA graph gives autograd. Autograd keeps such a
    tensor as ``.grad`` without copying it, so the next call's gradient lands in it."""

    memory: torch.UntypedStorage | None = None

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ReplayedBackward.memory is None:
            ReplayedBackward.memory = torch.empty_like(grad).untyped_storage()
        out = torch.empty(0, dtype=grad.dtype).set_(ReplayedBackward.memory, 0, grad.shape)
        return out.copy_(grad)


class TinyModel(nn.Module):
    """A loss linear in one weight, so each micro batch's gradient is its input's mean."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4))

    def forward(self, tokens, labels, loss_mask, position_offset):
        return (ReplayedBackward.apply(self.weight) * tokens.float().mean(0)).sum()


def accumulated_gradient(replays_cuda_graphs: bool) -> torch.Tensor:
    ReplayedBackward.memory = None
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = {
        "train_batch_size": 4,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 0.0,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    micro_batches = [torch.full((2, 4), 1.0), torch.full((2, 4), 3.0)]
    batches = iter(Batch(tokens, tokens, None) for tokens in micro_batches)
    seen = {}
    original_step = optimizer.step

    def capture_then_step(*args, **kwargs):
        seen["grad"] = model.weight.grad.clone()
        return original_step(*args, **kwargs)

    optimizer.step = capture_then_step
    train_step(engine, batches, 2, replays_cuda_graphs=replays_cuda_graphs)
    return seen["grad"]


def test_accumulation_survives_a_backward_that_reuses_its_memory(single_process_group):
    expected = torch.full((4,), (1.0 + 3.0) / 2)  # the mean of the micro batches' gradients
    torch.testing.assert_close(accumulated_gradient(replays_cuda_graphs=True), expected)
    # Without the step's copy the first micro batch's gradient is overwritten by the second's.
    assert not torch.allclose(accumulated_gradient(replays_cuda_graphs=False), expected)


@pytest.mark.parametrize("replays", [False, True])
def test_one_micro_batch_needs_no_copy(single_process_group, replays):
    ReplayedBackward.memory = None
    model = TinyModel()
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        config={"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.0},
    )
    tokens = torch.full((2, 4), 2.0)
    train_step(engine, iter([Batch(tokens, tokens, None)]), 1, replays_cuda_graphs=replays)
    torch.testing.assert_close(model.weight.detach(), torch.full((4,), -2.0))
