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


@pytest.mark.slow
def test_compiled_llama_matches_eager():
    """Rotary embeddings, RMSNorm, SwiGLU and grouped-query SDPA inside one compiled graph."""
    from tests.checkpointing.test_hf_llama import llama_config

    torch.manual_seed(0)
    eager = GPTModel(llama_config())
    compiled = copy.deepcopy(eager)
    assert "one graph" in apply_kernels(compiled, KernelConfig(torch_compile=True))
    assert_compiled_matches_eager(compiled, eager)


def test_one_graph_only_where_nothing_leaves_it():
    assert compiles_as_one_graph(GPTModel(small_config()))
    recomputed = GPTModel(small_config(), recompute=RecomputeConfig(granularity="selective"))
    assert not compiles_as_one_graph(recomputed)


def test_plain_kernels_are_described():
    assert apply_kernels(GPTModel(small_config()), KernelConfig()) == "eager transformer layers"


def compile_counters() -> dict[str, int]:
    """Graphs Dynamo compiled and graph breaks it met since the last reset."""
    from torch._dynamo.utils import counters

    return {
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": sum(counters["graph_break"].values()),
    }


@pytest.mark.slow
def test_dropout_keeps_the_model_one_graph():
    """With whole heads on one rank, dropout draws from the default generator: no generator switch, which
    Dynamo cannot trace, splits the graph (it once split it in every layer and compiled for minutes)."""
    from megatron.parallel.context import ParallelContext
    from megatron.parallel.random import seed_tensor_parallel_rng

    seed_tensor_parallel_rng(7, ParallelContext.single())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = GPTModel(small_config(num_layers=3, attention_dropout=0.1, hidden_dropout=0.1))
    assert "one graph" in apply_kernels(model, KernelConfig(torch_compile=True))
    tokens = torch.randint(0, 128, (2, 17))
    model(tokens[:, :-1], tokens[:, 1:]).backward()
    assert compile_counters() == {"graphs": 1, "breaks": 0}


RECOMPUTE_MODES = {
    "none": RecomputeConfig(),
    "selective": RecomputeConfig(granularity="selective"),
    "full-uniform-1": RecomputeConfig(granularity="full", method="uniform", num_layers=1),
    "full-uniform-2": RecomputeConfig(granularity="full", method="uniform", num_layers=2),
    "full-block-1": RecomputeConfig(granularity="full", method="block", num_layers=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(RECOMPUTE_MODES))
def test_compiled_dropout_gradient_is_that_of_its_forward(single_process_group, mode):
    """Compiled, with dropout and each recomputation mode: the gradient is the derivative of the loss the
    forward computed (central differences in float64 from the same generator state). A recomputation that
    drew other dropout masks than its forward would give the gradient of another function (seen 25% off)."""
    from megatron.parallel.context import ParallelContext
    from megatron.parallel.random import configure_recomputation, seed_tensor_parallel_rng

    configure_recomputation(ParallelContext.single(), None)
    seed_tensor_parallel_rng(7, ParallelContext.single())
    torch.manual_seed(0)
    config = small_config(num_layers=3, attention_dropout=0.1, hidden_dropout=0.1)
    model = GPTModel(config, recompute=RECOMPUTE_MODES[mode]).double()
    description = apply_kernels(model, KernelConfig(torch_compile=True))
    assert ("one graph" in description) == (mode == "none"), description
    tokens = torch.randint(0, 128, (2, 17))
    start = torch.get_rng_state()

    def loss() -> torch.Tensor:
        torch.set_rng_state(start)
        logits = model(tokens[:, :-1])  # float64 logits, unlike the float32 loss of the labels path
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    loss().backward()
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))

    def shifted_loss(step: float) -> float:
        # With gradients on, as in training: the no-grad forward would skip recomputation.
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(step * d)
        value = loss().detach().item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(step * d)
        return value

    eps = 1e-5
    numeric = (shifted_loss(eps) - shifted_loss(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-4)
