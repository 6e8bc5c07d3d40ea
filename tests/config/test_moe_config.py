"""--num-experts and the other MoE flags: the derived placement, and each bad combination refused."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from megatron.config.schema import MoEConfig
from tests.config.recipe import RECIPE_DS, build

MOE = {"--num-experts": "8", "--moe-expert-parallel-size": "4"}


def test_moe_flags_become_the_moe_config(tmp_path):
    config = build(
        tmp_path,
        {
            **MOE, "--topk": "2", "--moe-train-capacity-factor": "1.25", "--moe-eval-capacity-factor": "2",
            "--moe-min-capacity": "8", "--disable-moe-token-dropping": True, "--moe-loss-coeff": "0.01",
            "--mlp-type": "residual", "--create-moe-param-group": True,
        },
    )  # fmt: skip
    moe = config.moe
    assert moe.enabled and moe.experts_per_layer == (1, 8) * 12  # 24 layers, every 2nd (Megatron's default)
    assert (moe.expert_parallel_size, moe.topk, moe.min_capacity, moe.mlp_type) == (4, 2, 8, "residual")
    assert (moe.train_capacity_factor, moe.eval_capacity_factor, moe.loss_coeff) == (1.25, 2.0, 0.01)
    assert moe.token_dropping is False


def test_pyramid_moe_takes_one_count_per_moe_layer(tmp_path):
    counts = ["2"] * 6 + ["4"] * 6
    config = build(tmp_path, {"--num-experts": counts, "--moe-expert-parallel-size": "2"})
    assert config.moe.experts_per_layer == (1, 2) * 6 + (1, 4) * 6
    layers = build(tmp_path, {"--num-experts": ["2"] * 24, "--expert-interval": "1"}).moe.experts_per_layer
    assert layers == (2,) * 24


def test_dense_by_default(tmp_path):
    assert build(tmp_path).moe == MoEConfig() and not build(tmp_path).moe.enabled


BAD = [
    ({**MOE, "--topk": "3"}, r"--topk 3: .* use --topk 1 or --topk 2"),
    ({"--num-experts": ["2", "4", "8"]}, r"--num-experts has 3 values: give one .* i\.e\. 12 \(--num-layers"),
    ({"--num-experts": "0"}, r"--num-experts 0: each value must be >= 1"),
    ({**MOE, "--expert-interval": "25"}, r"--expert-interval 25 is larger than --num-layers 24"),
    (
        {"--num-experts": "6", "--moe-expert-parallel-size": "4"},
        r"layer 1 has 6 experts, not divisible by --moe-expert-parallel-size 4",
    ),
    (
        {"--num-experts": "6", "--moe-expert-parallel-size": "3"},
        r"world size 16 is not divisible by --moe-expert-parallel-size 3",
    ),
    (
        {**MOE, "--tensor-model-parallel-size": "2"},
        r"--num-experts with --tensor-model-parallel-size 2: not supported .* Use "
        r"--tensor-model-parallel-size 1 and spread the experts with --moe-expert-parallel-size",
    ),
    ({**MOE, "--pipeline-model-parallel-size": "2"}, r"--num-experts with --pipeline-model-parallel-size 2"),
    ({**MOE, "--ds-sequence-parallel-size": "2"}, r"--num-experts with --ds-sequence-parallel-size 2"),
    ({**MOE, "--zero-stage": "3"}, r"--num-experts with ZeRO stage 3 .* Use --zero-stage 2"),
    ({"--moe-expert-parallel-size": "2"}, r"--moe-expert-parallel-size 2 without experts"),
    ({"--mlp-type": "residual"}, r"--mlp-type residual without experts"),
    ({**MOE, "--moe-train-capacity-factor": "0"}, r"--moe-train-capacity-factor 0.0: must be > 0"),
    ({**MOE, "--moe-min-capacity": "-1"}, r"--moe-min-capacity -1: must be >= 0"),
    ({**MOE, "--moe-loss-coeff": "-0.1"}, r"--moe-loss-coeff -0.1: must be >= 0"),
    (
        {**MOE, "--moe-min-capacity": "9000"},
        r"--moe-min-capacity 9000 is more than the 8192 tokens of a micro batch \(--micro-batch-size 4 x",
    ),
    ({**MOE, "--universal-checkpoint": True}, r"--universal-checkpoint with --num-experts: .* not supported"),
    ({**MOE, "--mlp-type": "pyramid"}, r"argument --mlp-type: invalid choice: 'pyramid'"),
]


@pytest.mark.parametrize("changes, pattern", BAD)
def test_bad_moe_combinations_are_refused(tmp_path, changes, pattern):
    ds = {**RECIPE_DS, "zero_optimization": {}} if "--zero-stage" in changes else RECIPE_DS
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes, ds=ds)
