"""ZeRO-Offload: --cpu-optimizer and the ds_config's offload sections reconciled, the CPU Adam chosen, and the
layouts DeepSpeed cannot offload refused up front."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import RECIPE_DS, build

OFFLOAD_SECTION = {"device": "cpu", "pin_memory": True}


def with_zero(**zero) -> dict:
    return {**RECIPE_DS, "zero_optimization": {"stage": 1, **zero}}


def test_cpu_optimizer_fills_in_the_offload_section(tmp_path):
    config = build(tmp_path, {"--cpu-optimizer": True})
    assert config.optimizer.cpu_adam
    assert config.deepspeed.ds_config["zero_optimization"] == {
        "stage": 1,
        "offload_optimizer": {"device": "cpu"},
    }
    assert not build(tmp_path).optimizer.cpu_adam


@pytest.mark.parametrize("device", ["cpu", "nvme"])
def test_an_offloaded_optimizer_in_the_ds_config_runs_the_cpu_adam(tmp_path, device):
    section = {**OFFLOAD_SECTION, "device": device, "nvme_path": "/nvme"}
    config = build(tmp_path, ds=with_zero(offload_optimizer=section))
    assert config.optimizer.cpu_adam
    assert config.deepspeed.ds_config["zero_optimization"]["offload_optimizer"] == section
    assert build(
        tmp_path, {"--cpu-optimizer": True}, ds=with_zero(offload_optimizer=section)
    ).optimizer.cpu_adam


def test_offloaded_parameters_with_zero_3(tmp_path):
    ds = {**RECIPE_DS, "zero_optimization": {"stage": 3, "offload_param": OFFLOAD_SECTION}}
    config = build(tmp_path, {"--zero-stage": "3", "--cpu-optimizer": True}, ds=ds)
    zero = config.deepspeed.ds_config["zero_optimization"]
    assert zero["offload_param"] == OFFLOAD_SECTION and zero["offload_optimizer"] == {"device": "cpu"}
    assert config.optimizer.cpu_adam


@pytest.mark.parametrize(
    ("changes", "ds", "message"),
    [
        (
            {"--cpu-optimizer": True},
            with_zero(offload_optimizer={"device": "none"}),
            "--cpu-optimizer, but ds_config .* 'zero_optimization.offload_optimizer.device' none",
        ),
        (
            {"--cpu-optimizer": True, "--zero-stage": "0", "--fp16": None},
            {"zero_optimization": {"stage": 0}},
            "--cpu-optimizer with ZeRO stage 0",
        ),
        (
            {"--zero-stage": "0", "--fp16": None},
            {"zero_optimization": {"stage": 0, "offload_optimizer": OFFLOAD_SECTION}},
            "'zero_optimization.offload_optimizer.device' 'cpu' with ZeRO stage 0",
        ),
        ({"--cpu-optimizer": True, "--optimizer": "sgd"}, RECIPE_DS, "--cpu-optimizer with --optimizer sgd"),
        (
            {},
            with_zero(offload_param=OFFLOAD_SECTION),
            "'zero_optimization.offload_param.device' is 'cpu' with ZeRO stage 1",
        ),
    ],
)
def test_offload_that_cannot_run_is_refused(tmp_path, changes, ds, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, changes, ds=ds)
