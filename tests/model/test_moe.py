"""The MoE MLP on its own: placement, names and initialisation, capacity and token dropping on a crafted
routing, the load-balancing loss (also through recomputation), and the optimizer groups."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from megatron.config.moe import experts_per_layer
from megatron.config.schema import MoEConfig, RecomputeConfig
from megatron.model import GPTModel
from megatron.model.mlp import MLP
from megatron.model.moe import MoEMLP
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import init_generator
from megatron.training.optimizer import weight_decay_groups
from tests.model.test_gpt import small_config

EXPERTS, HIDDEN = 4, 8


def test_experts_per_layer_follows_megatron_deepspeed():
    # Layer n (from 1) is an MoE layer when the interval divides n; a list gives each MoE layer its count.
    assert experts_per_layer([4], num_layers=4, interval=2) == (1, 4, 1, 4)
    assert experts_per_layer([4, 8], num_layers=4, interval=2) == (1, 4, 1, 8)
    assert experts_per_layer([2, 2, 4, 8], num_layers=4, interval=1) == (2, 2, 4, 8)
    assert experts_per_layer([4], num_layers=5, interval=2) == (1, 4, 1, 4, 1)


def test_pr_moe_model_has_megatron_deepspeed_names_and_distinct_experts():
    moe = MoEConfig(experts_per_layer=(1, 2, 1, 4), mlp_type="residual")
    names = set(GPTModel(small_config(num_layers=4), moe=moe).state_dict())
    prefix = "language_model.encoder.layers"
    assert f"{prefix}.0.mlp.dense_h_to_4h.weight" in names  # dense layer
    for layer, experts in ((1, 2), (3, 4)):
        moe_prefix = f"{prefix}.{layer}.mlp"
        assert f"{moe_prefix}.deepspeed_moe.gate.wg.weight" in names
        assert f"{moe_prefix}.mlp.dense_4h_to_h.weight" in names  # Residual MoE's dense MLP
        assert f"{moe_prefix}.coefficient.weight" in names
        expert_prefix = f"{moe_prefix}.deepspeed_moe.experts.deepspeed_experts."
        found = {name[len(expert_prefix) :].split(".")[0] for name in names if name.startswith(expert_prefix)}
        assert found == {str(expert) for expert in range(experts)}
    experts = GPTModel(small_config(num_layers=4), moe=moe).transformer_layers[3].mlp.deepspeed_moe.experts
    weights = [expert.dense_h_to_4h.weight for expert in experts.deepspeed_experts]
    assert not any(torch.equal(weights[0], other) for other in weights[1:])


def test_expert_weights_do_not_depend_on_the_expert_parallel_size():
    config = small_config(num_layers=2, hidden_size=HIDDEN, num_attention_heads=2, ffn_hidden_size=16)
    whole = build_moe(config, MoEConfig(experts_per_layer=(EXPERTS,)))
    second_half = build_moe(config, MoEConfig(experts_per_layer=(EXPERTS,), expert_parallel_size=2), rank=1)
    assert second_half.num_local_experts == 2
    for local, expert in enumerate(second_half.deepspeed_moe.experts.deepspeed_experts):
        reference = whole.deepspeed_moe.experts.deepspeed_experts[2 + local]
        for (name, tensor), (_, want) in zip(expert.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(tensor, want), name
    assert torch.equal(second_half.deepspeed_moe.gate.wg.weight, whole.deepspeed_moe.gate.wg.weight)


def build_moe(config, moe: MoEConfig, rank: int = 0) -> MoEMLP:
    expert = partial(MLP, config, ParallelContext.single())
    return MoEMLP(config, moe, 0, 1234, init_generator(1234, 0), expert, rank)


def crafted_layer(**moe_fields) -> MoEMLP:
    """An MoE layer whose gate reads its logits off the first EXPERTS input features."""
    config = small_config(num_layers=1, hidden_size=HIDDEN, num_attention_heads=2, ffn_hidden_size=16)
    layer = build_moe(config, MoEConfig(experts_per_layer=(EXPERTS,), **moe_fields))
    with torch.no_grad():
        layer.deepspeed_moe.gate.wg.weight.copy_(torch.eye(EXPERTS, HIDDEN))
    return layer


def crafted_tokens(routes: list[tuple[int, ...]]) -> torch.Tensor:
    """Token t's gate logits: 20 for its first expert, 19 for its second (if any), 0 for the others; the
    remaining features are random so that every token's expert output differs."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, len(routes), HIDDEN, generator=generator)
    tokens[..., :EXPERTS] = 0.0
    for index, route in enumerate(routes):
        for rank, expert in enumerate(route):
            tokens[0, index, expert] = 20.0 - rank
    return tokens


def expert_outputs(layer: MoEMLP, tokens: torch.Tensor) -> torch.Tensor:
    """[experts, tokens, hidden]: every expert applied to every token."""
    experts = layer.deepspeed_moe.experts.deepspeed_experts
    return torch.stack([expert(tokens[0]) for expert in experts])


# Top-1 routing of 12 tokens to 4 experts: 6, 3, 1 and 2 tokens.
TOP1_ROUTES = [(0,), (0,), (1,), (0,), (2,), (0,), (1,), (3,), (0,), (1,), (3,), (0,)]


@pytest.mark.parametrize(
    "fields, training, capacity",
    [
        ({"min_capacity": 0}, True, 3),  # ceil(12 tokens / 4 experts x 1.0)
        ({"min_capacity": 0, "eval_capacity_factor": 2.0}, False, 6),  # the eval factor outside training
        ({"min_capacity": 5}, True, 5),  # the floor
        ({"min_capacity": 0, "train_capacity_factor": 0.5}, True, 2),
        ({"min_capacity": 0, "token_dropping": False}, True, 6),  # the busiest expert's load
    ],
)
def test_top1_capacity_and_token_dropping(fields, training, capacity):
    torch.manual_seed(0)
    layer = crafted_layer(**fields).train(training)
    tokens = crafted_tokens(TOP1_ROUTES)
    with torch.no_grad():
        output = layer(tokens)[0]
        everything = expert_outputs(layer, tokens)
    gates = torch.softmax(tokens[0, :, :EXPERTS], dim=-1)
    kept = []
    for index, (expert,) in enumerate(TOP1_ROUTES):
        if output[index].abs().sum() == 0:
            continue  # dropped: the MoE output is zero and the residual stream passes the token on
        kept.append(index)
        torch.testing.assert_close(output[index], gates[index, expert] * everything[expert, index])
    for expert in range(EXPERTS):
        assigned = [index for index, (chosen,) in enumerate(TOP1_ROUTES) if chosen == expert]
        # Random token selection decides which of an expert's tokens stay, not how many.
        assert len([index for index in kept if index in assigned]) == min(len(assigned), capacity)


def test_top1_load_balancing_loss_is_deepspeeds_formula():
    layer = crafted_layer(min_capacity=0)
    tokens = crafted_tokens(TOP1_ROUTES)
    layer(tokens)
    gates = torch.softmax(tokens[0, :, :EXPERTS], dim=-1)
    fraction = torch.tensor([6.0, 3.0, 1.0, 2.0]) / len(TOP1_ROUTES)  # tokens routed, before dropping
    expected = EXPERTS * (gates.mean(0) * fraction).sum()
    torch.testing.assert_close(layer.moe_loss, expected)


def test_top2_drops_by_position_first_choices_first():
    """Capacity 2 (ceil(8 / 4 x 0.5 x 2)): every expert's first choices take their slots in token order,
    its second choices the slots left after all first choices; a token's kept routes are reweighted."""
    routes = [(0, 1), (0, 2), (0, 1), (1, 0), (2, 3), (1, 3), (3, 2), (0, 3)]
    kept = {0: [0], 1: [0, 2], 2: [], 3: [1], 4: [2, 3], 5: [1], 6: [3], 7: []}
    layer = crafted_layer(topk=2, train_capacity_factor=0.5, min_capacity=0)
    tokens = crafted_tokens(routes)
    with torch.no_grad():
        output = layer(tokens)[0]
        everything = expert_outputs(layer, tokens)
    gates = torch.softmax(tokens[0, :, :EXPERTS], dim=-1)
    for index, experts in kept.items():
        expected = torch.zeros(HIDDEN)
        total = sum(gates[index, expert] for expert in experts)
        for expert in experts:
            expected += gates[index, expert] / total * everything[expert, index]
        torch.testing.assert_close(output[index], expected, msg=f"token {index}")
    assert math.isclose(
        float(gates[1, 0] / (gates[1, 0] + gates[1, 2])), 1 / (1 + math.exp(-1)), rel_tol=1e-5
    )


def test_full_recomputation_keeps_the_load_balancing_gradient():
    """Recomputed chunks return the MoE losses as outputs, so the gate learns from them as without
    recomputation (DeepSpeed's checkpoint runs the first forward without a graph)."""
    config = small_config(num_layers=2)
    moe = MoEConfig(experts_per_layer=(2, 2), token_dropping=False, loss_coeff=1.0)
    tokens = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))

    def gate_grads(recompute: RecomputeConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = GPTModel(config, recompute=recompute, moe=moe)
        loss, moe_loss = model(tokens[:, :-1], tokens[:, 1:])
        (loss + moe_loss).backward()
        gates = [layer.mlp.deepspeed_moe.gate.wg.weight.grad for layer in model.transformer_layers]
        return moe_loss.detach(), gates

    plain_loss, plain = gate_grads(RecomputeConfig())
    recomputed_loss, recomputed = gate_grads(RecomputeConfig(granularity="full", num_layers=2))
    torch.testing.assert_close(recomputed_loss, plain_loss)
    for got, want in zip(recomputed, plain):
        torch.testing.assert_close(got, want)


def test_expert_parameters_get_their_own_optimizer_groups_with_megatrons_weight_decay():
    model = GPTModel(small_config(num_layers=2), moe=MoEConfig(experts_per_layer=(1, 4)))
    groups = weight_decay_groups(model, 0.1)
    seen = [param for group in groups for param in group["params"]]
    assert len(seen) == len(set(map(id, seen))) == len(list(model.parameters()))
    experts = {id(p) for n, p in model.named_parameters() if ".deepspeed_experts." in n}
    for group in groups:
        ids = {id(param) for param in group["params"]}
        assert ids <= experts if group.get("moe") else not ids & experts
        assert group["weight_decay"] == (0.0 if all(p.dim() == 1 for p in group["params"]) else 0.1)
    assert {group["name"] for group in groups if group.get("moe")} == {"ep_size_1"}
