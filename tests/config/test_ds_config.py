"""Reading and checking the ds_config file against DeepSpeed's own parser and models."""

from __future__ import annotations

import json

import pytest

from megatron.config.ds_config import DsConfigFile, load_ds_config
from megatron.config.ds_config_keys import known_top_level_keys
from megatron.config.errors import ConfigError

# The kind of file Megatron-DeepSpeed recipes ship: every section here must load.
RECIPE_DS_CONFIG = {
    "train_batch_size": 256,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "communication_data_type": "fp32",
    "zero_allow_untested_optimizer": True,
    "zero_optimization": {
        "stage": 2,
        "allgather_partitions": True,
        "reduce_scatter": True,
        "allgather_bucket_size": 5e8,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    },
    "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2, "min_loss_scale": 1,
             "initial_scale_power": 11},
    "activation_checkpointing": {"partition_activations": False, "contiguous_memory_optimization": False},
    "flops_profiler": {"enabled": False, "profile_step": 1, "module_depth": -1, "top_modules": 3},
    "comms_logger": {"enabled": False},
    "tensorboard": {"enabled": False},
    "data_efficiency": {"enabled": False},
    "wall_clock_breakdown": False,
}  # fmt: skip


def write(tmp_path, content, name="ds_config.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return str(path)


def test_recipe_config_loads_unchanged(tmp_path):
    path = write(tmp_path, RECIPE_DS_CONFIG)
    ds = load_ds_config(path)
    assert ds.path == path and ds.data == RECIPE_DS_CONFIG


def test_hjson_is_accepted_like_deepspeed_does(tmp_path):
    text = "{\n  // a comment and bare keys\n  train_batch_size: 32\n  zero_optimization: {stage: 1}\n}"
    assert load_ds_config(write(tmp_path, text, "ds.hjson")).data == {
        "train_batch_size": 32,
        "zero_optimization": {"stage": 1},
    }


def test_known_keys_come_from_deepspeed_itself():
    keys = known_top_level_keys()
    expected = {
        "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
        "steps_per_print",
        "zero_optimization", "fp16", "bf16", "bfloat16", "gradient_clipping", "activation_checkpointing",
        "flops_profiler", "wall_clock_breakdown", "tensorboard", "wandb", "csv_monitor", "comms_logger",
        "data_efficiency", "prescale_gradients", "communication_data_type", "zero_allow_untested_optimizer",
        "checkpoint", "aio", "pipeline", "memory_breakdown", "sequence_parallel_size",
    }  # fmt: skip
    assert expected <= keys


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--deepspeed_config .*nope\.json: no such file"):
        load_ds_config(str(tmp_path / "nope.json"))


def test_malformed_json_names_file_line_and_column(tmp_path):
    text = '{\n  "train_batch_size": 8,\n  "zero_optimization": {\n    "stage": 1\n\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"ds_config {path}: not valid JSON .* at line 6, column 1"):
        load_ds_config(path)


def test_duplicate_key(tmp_path):
    with pytest.raises(ConfigError, match="key 'train_batch_size' appears twice"):
        load_ds_config(write(tmp_path, '{"train_batch_size": 8, "train_batch_size": 16}'))


def test_top_level_must_be_an_object(tmp_path):
    with pytest.raises(ConfigError, match="the top level is list, expected a JSON object"):
        load_ds_config(write(tmp_path, "[1, 2]"))


def test_unknown_top_level_key_with_suggestion(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown top-level key 'zero_optimisation' \(did you mean 'zero_optimization'\?\)"
    ):
        load_ds_config(write(tmp_path, {"train_batch_size": 8, "zero_optimisation": {"stage": 1}}))


ZERO_ERRORS = [
    ({"stage": 7}, r"'zero_optimization\.stage' is 7: Input should be 0, 1, 2, 3"),
    ({"stage": "two"}, r"'zero_optimization\.stage' is 'two'"),
    (
        {"overlap_com": True},
        r"unknown key 'zero_optimization\.overlap_com' \(did you mean 'overlap_comm'\?\)",
    ),
    (
        {"stage": 2, "offload_optimizer": {"devic": "cpu"}},
        r"unknown key 'zero_optimization\.offload_optimizer\.devic' \(did you mean 'device'\?\)",
    ),
    ({"reduce_bucket_size": "big"}, r"'zero_optimization\.reduce_bucket_size' is 'big'"),
    (1, r"'zero_optimization' is 1; it must be an object"),
]


@pytest.mark.parametrize(("section", "pattern"), ZERO_ERRORS)
def test_zero_section_is_checked_with_deepspeeds_model(tmp_path, section, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_ds_config(write(tmp_path, {"zero_optimization": section}))


def test_precision_sections_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"'fp16\.enabled' is 'sometimes'"):
        load_ds_config(write(tmp_path, {"fp16": {"enabled": "sometimes"}}))
    with pytest.raises(ConfigError, match=r"unknown key 'bf16\.enable' \(did you mean 'enabled'\?\)"):
        load_ds_config(write(tmp_path, {"bf16": {"enable": True}}))


@pytest.mark.parametrize("value", ["32", 0, 2.5, True])
def test_batch_keys_must_be_positive_integers(tmp_path, value):
    with pytest.raises(ConfigError, match="'train_batch_size' is .*; it must be a positive integer"):
        load_ds_config(write(tmp_path, {"train_batch_size": value}))


@pytest.mark.parametrize(
    ("section", "flags"),
    [("optimizer", "--optimizer, --lr, --weight-decay"), ("scheduler", "--lr-decay-style")],
)
def test_optimizer_and_scheduler_sections_are_refused(tmp_path, section, flags):
    content = {section: {"type": "AdamW", "params": {"lr": 1e-4}}}
    with pytest.raises(
        ConfigError, match=rf"remove the '{section}' section .*Megatron's weight-decay.*{flags}"
    ):
        load_ds_config(write(tmp_path, content))


def test_agree_fills_and_refuses():
    ds = DsConfigFile("ds.json", {"train_batch_size": 64, "fp16": {"enabled": True}})
    assert ds.agree("train_batch_size", "--global-batch-size", None) == 64
    assert ds.agree("train_batch_size", "--global-batch-size", 64) == 64
    assert ds.agree("train_micro_batch_size_per_gpu", "--micro-batch-size", 4) == 4
    assert ds.agree("bf16.enabled", "--bf16", None) is None
    assert ds.lookup("fp16.enabled") == (True, True) and ds.lookup("fp16.loss_scale") == (False, None)
    with pytest.raises(
        ConfigError, match=r"ds_config ds.json: 'train_batch_size' is 64 but --global-batch-size gives 32"
    ):
        ds.agree("train_batch_size", "--global-batch-size", 32)
