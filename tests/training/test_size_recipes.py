"""The per-size recipes (examples_deepspeed/ds_pretrain_*.sh): in DRY_RUN each prints a launch command whose
pretrain_*.py flags pass the toolkit's parser and config validation at the launcher's world size and build
the preset's shape and layout; one recipe runs for real, shrunk through its variables, on CPU."""

from __future__ import annotations

import math
import os
import shlex
import subprocess

import pytest

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.presets import get_preset
from tests.launch import LOSS_PATTERN, REPO_ROOT, child_env, run_example

RECIPES = {
    "ds_pretrain_gpt_125M.sh": "gpt-125m", "ds_pretrain_gpt_350M.sh": "gpt-350m",
    "ds_pretrain_gpt_1.3B.sh": "gpt-1.3b", "ds_pretrain_gpt_2.7B.sh": "gpt-2.7b",
    "ds_pretrain_gpt_6.7B.sh": "gpt-6.7b", "ds_pretrain_gpt_13B.sh": "gpt-13b",
    "ds_pretrain_gpt_175B.sh": "gpt-175b", "ds_pretrain_llama2_7B.sh": "llama2-7b",
    "ds_pretrain_llama2_13B.sh": "llama2-13b", "ds_pretrain_llama2_70B.sh": "llama2-70b",
    "ds_pretrain_bert_large.sh": "bert-large", "ds_pretrain_gpt_1.3B_MoE128.sh": "gpt-1.3b-moe128",
}  # fmt: skip


def run_recipe(script: str, tmp_path, **variables: str) -> subprocess.CompletedProcess:
    outputs = {"SKIP_INSTALL": "1", "OUTPUT_DIR": str(tmp_path / "out"), "OUTPUT_HOME": str(tmp_path / "out")}
    return run_example(script, {**outputs, **variables}, timeout=600)


def dry_run(script: str, tmp_path, **variables: str) -> tuple[list[str], int]:
    """The pretrain_*.py flags of the printed command, and the world size its launcher would start."""
    command = shlex.split(run_recipe(script, tmp_path, DRY_RUN="1", **variables).stdout.splitlines()[-1])
    assert command[0] == "deepspeed"
    entry = next(i for i, word in enumerate(command) if word.endswith(".py"))
    launcher = dict(zip(command[1:entry:2], command[2:entry:2]))
    world_size = int(launcher.get("--num_nodes", "1")) * int(launcher["--num_gpus"])
    return command[entry:], world_size


@pytest.mark.parametrize("script", RECIPES)
def test_dry_run_command_validates_with_the_preset_shape(script, tmp_path):
    preset = get_preset(RECIPES[script])
    (entry, *argv), world_size = dry_run(script, tmp_path)
    assert os.path.basename(entry) == preset.entry_point
    model_type = "bert" if entry.endswith("pretrain_bert.py") else "gpt"
    config = build_config(parse_args(argv), world_size, preset.shape.vocab_size, model_type)
    shape, model = preset.shape, config.model
    assert (model.num_layers, model.hidden_size, model.num_attention_heads, model.seq_length) == (
        shape.num_layers,
        shape.hidden_size,
        shape.num_attention_heads,
        shape.seq_length,
    )
    assert model.ffn_hidden_size == (shape.ffn_hidden_size or 4 * shape.hidden_size)
    assert model.kv_heads == (shape.num_key_value_heads or shape.num_attention_heads)
    assert max(config.moe.experts_per_layer, default=1) == shape.num_experts
    assert model.init_method_std == preset.init_std and config.optimizer.lr == preset.lr
    if script != "ds_pretrain_gpt_125M.sh":  # that one keeps the rebase recipe's T=2 x P=2 on 4 GPUs
        layout = preset.layout
        assert world_size == layout.world_size
        assert config.parallel.tensor_model_parallel_size == layout.tensor_parallel
        assert config.parallel.pipeline_model_parallel_size == layout.pipeline_parallel
        assert config.batch.micro_batch_size == layout.micro_batch_size
        assert config.batch.global_batch_size == layout.global_batch_size
        assert config.deepspeed.zero_stage == layout.zero_stage
        assert (tmp_path / "out" / "ds_config.json").is_file()


def test_dry_run_follows_the_environment(tmp_path):
    """The variables override the preset; NNODES=1 drops the hostfile."""
    (_, *argv), world_size = dry_run(
        "ds_pretrain_llama2_7B.sh", tmp_path, NNODES="1", GPUS_PER_NODE="4", NUM_LAYERS="2", TP="4"
    )
    config = build_config(parse_args(argv), world_size, 32000)
    assert world_size == 4 and "--hostfile" not in argv
    assert (config.model.num_layers, config.parallel.tensor_model_parallel_size) == (2, 4)


def test_several_nodes_without_a_hostfile_are_refused_before_anything_runs(tmp_path):
    env = child_env(SKIP_INSTALL="1", OUTPUT_DIR=str(tmp_path), HOSTFILE=str(tmp_path / "none"))
    completed = subprocess.run(
        ["bash", "examples_deepspeed/ds_pretrain_gpt_13B.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1 and "NNODES=8 needs DeepSpeed's hostfile" in completed.stderr
    assert not (tmp_path / "ds_config.json").exists()


@pytest.mark.slow
def test_llama2_recipe_trains_on_cpu(tmp_path):
    """The LLaMA-2 7B recipe shrunk to 2 layers on 2 CPU processes (T=2), 3 iterations, bundled corpus."""
    result = run_recipe(
        "ds_pretrain_llama2_7B.sh", tmp_path, NNODES="1", GPUS_PER_NODE="2", NUM_LAYERS="2", HIDDEN_SIZE="64",
        FFN_HIDDEN_SIZE="160", NUM_ATTN_HEADS="4", NUM_KV_HEADS="2", SEQ_LEN="64", MICRO_BATCH="2",
        GLOBAL_BATCH="4", TRAIN_SAMPLES="12", LR_WARMUP_SAMPLES="4", LOG_INTERVAL="1", EVAL_ITERS="1",
        EVAL_INTERVAL="1000", SAVE_INTERVAL="3", NUM_WORKERS="0", ACTIVATION_CHECKPOINT="false",
    )  # fmt: skip
    losses = {int(i): float(loss) for i, loss in LOSS_PATTERN.findall(result.stdout)}
    assert sorted(losses) == [1, 2, 3] and all(map(math.isfinite, losses.values()))
    assert "4 heads sharing 2 key/value heads" in result.stdout
    out = tmp_path / "out"
    assert (out / "checkpoint" / "latest").read_text() == "global_step3"
    assert any(out.joinpath("tensorboard").iterdir()) and len(list(out.joinpath("logs").iterdir())) == 1
