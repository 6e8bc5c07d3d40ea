"""The faster kernels compute what the plain path computes."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron.config.schema import KernelConfig, RecomputeConfig
from megatron.model import GPTModel
from megatron.model.kernels import apply_kernels, compiles_as_one_graph
from tests.model.test_gpt import small_config


def loss_and_grads(model: GPTModel, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_compiled_matches_eager(compiled: GPTModel, eager: GPTModel) -> None:
    tokens = torch.randint(0, 128, (2, 17))
    eager_loss, eager_grads = loss_and_grads(eager, tokens)
    compiled_loss, compiled_grads = loss_and_grads(compiled, tokens)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("allow_one_graph", "mode", "description"),
    [
        (True, "default", "torch.compile (default) on the whole model (one graph)"),
        # On a CPU reduce-overhead's CUDA graphs are left out: this checks that the mode reaches the compile.
        (True, "reduce-overhead", "torch.compile (reduce-overhead) on the whole model (one graph)"),
        (
            False,
            "default",
            "torch.compile (default) on each of 2 transformer layers, torch.compile on the output layer "
            "and loss",
        ),
    ],
    ids=["one-graph", "one-graph-reduce-overhead", "per-layer"],
)
def test_compiled_model_matches_eager_model(allow_one_graph, mode, description):
    torch.manual_seed(0)
    eager = GPTModel(small_config(num_layers=2))
    compiled = copy.deepcopy(eager)
    kernels = KernelConfig(torch_compile=True, compile_mode=mode)
    assert apply_kernels(compiled, kernels, allow_one_graph) == description
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    assert_compiled_matches_eager(compiled, eager)


def test_one_graph_only_where_nothing_leaves_it():
    assert compiles_as_one_graph(GPTModel(small_config()))
    recomputed = GPTModel(small_config(), recompute=RecomputeConfig(granularity="selective"))
    assert not compiles_as_one_graph(recomputed)


def test_plain_kernels_are_described():
    assert apply_kernels(GPTModel(small_config()), KernelConfig()) == "eager transformer layers"
