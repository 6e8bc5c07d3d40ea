"""GradientClipper against torch's own clip_grad_norm_ on one process (multi-rank counting is covered by
the layout tests, which compare the logged norms with a single-process run)."""

from __future__ import annotations

import torch
from torch import nn

from megatron.parallel.context import ParallelContext
from megatron.training.grad_norm import GradientClipper, scales_gradients_in_its_kernel


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


def test_clip_folded_into_the_fused_optimizer_matches_clipping_then_stepping():
    """The fused AdamW that divides by the clip coefficient in its kernel takes the same step as clipping
    the gradients first and stepping torch's plain AdamW. (A large eps makes Adam's step depend on the
    gradients' scale, so that a missed clip shows.)"""
    folded, reference = _model_with_gradients(), _model_with_gradients()
    fused_optimizer = torch.optim.AdamW(folded.parameters(), lr=0.1, eps=0.1, fused=True)
    assert scales_gradients_in_its_kernel(fused_optimizer)
    plain_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.1, eps=0.1, foreach=False)
    assert not scales_gradients_in_its_kernel(plain_optimizer)
    norm = GradientClipper(folded.parameters(), 1.0, ParallelContext.single(), fused_optimizer)()
    expected = GradientClipper(reference.parameters(), 1.0, ParallelContext.single(), plain_optimizer)()
    torch.testing.assert_close(norm, expected)
    assert norm > 1.0
    fused_optimizer.step()
    plain_optimizer.step()
    for mine, theirs in zip(folded.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
