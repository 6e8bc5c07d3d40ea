"""GradientClipper against torch's own clip_grad_norm_ on one process (multi-rank counting is covered by
the layout tests, which compare the logged norms with a single-process run)."""

from __future__ import annotations

import torch
from torch import nn

from megatron.parallel.context import ParallelContext
from megatron.training.grad_norm import GradientClipper


def _model_with_gradients() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    model(torch.randn(5, 8)).pow(2).sum().mul(100).backward()  # a norm well above the clip
    return model


def test_clipping_matches_torch():
    ours, reference = _model_with_gradients(), _model_with_gradients()
    norm = GradientClipper(ours.parameters(), 1.0, ParallelContext.single())()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0, foreach=False)
    assert expected > 1.0
    torch.testing.assert_close(norm, expected)
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_measure_only_leaves_gradients_and_keeps_the_norm():
    model = _model_with_gradients()
    before = [p.grad.clone() for p in model.parameters()]
    clipper = GradientClipper(model.parameters(), 0.0, ParallelContext.single())
    assert clipper.last_norm is None
    clipper.measure()
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before]))
    torch.testing.assert_close(clipper.last_norm, expected)
    for param, grad in zip(model.parameters(), before):
        assert torch.equal(param.grad, grad)
