"""Megatron-DeepSpeed's recipes, run from a test as users launch them (sizes shrunk through their variables):
the LLaMA-2 recipe (torchrun, T=2 x P=2, GQA, RoPE, SwiGLU, RMSNorm, no biases, untied, SentencePiece, bf16)
and the GPT-3 125M recipe of its rebase/ folder (deepspeed launcher, T=2 x P=2, fp16 template,
--train-tokens, token-counted LR, tensorboard flags, recomputation)."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
from deepspeed.accelerator import get_accelerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.launch import LOSS_PATTERN, run_example


def run_recipe(script: str, **variables: str) -> subprocess.CompletedProcess:
    return run_example(script, variables, timeout=900)


def losses(stdout: str) -> dict[int, float]:
    return {int(iteration): float(loss) for iteration, loss in LOSS_PATTERN.findall(stdout)}


@pytest.mark.slow
def test_llama2_recipe_runs_to_completion(tmp_path):
    result = run_recipe(
        "pretrain_llama2_distributed.sh",
        BASE_PATH=str(tmp_path / "llama2"), TRAIN_STEPS="3", LR_WARMUP_STEPS="1", HIDDEN_SIZE="64",
        FFN_HIDDEN_SIZE="160", NUM_LAYERS="2", NUM_HEADS="4", NUM_KV_HEADS="2", SEQ_LENGTH="64",
        MICRO_BATCH_SIZE="2", GLOBAL_BATCH_SIZE="4",
    )  # fmt: skip
    stdout = result.stdout
    assert "tensor-parallel 2, pipeline 2" in stdout and ", bf16, pipeline engine" in stdout
    assert "SwiGLU MLP (ffn 160), no linear biases, 4 heads sharing 2 key/value heads, untied" in stdout
    assert "RMSNorm" in stdout and "rotary positions" in stdout
    assert sorted(losses(stdout)) == [1, 2, 3] and all(map(math.isfinite, losses(stdout).values()))
    assert (tmp_path / "llama2" / "latest").read_text() == "global_step3"


@pytest.mark.slow
def test_gpt_125m_recipe_runs_to_completion(tmp_path):
    """3 iterations of 8 x 64 tokens set by --train-tokens (its --train-samples is twice as many)."""
    precision = "fp16" if get_accelerator().is_fp16_supported() else "bf16"  # no fp16 kernels on some CPUs
    output = tmp_path / "output"
    result = run_recipe(
        "ds_pretrain_gpt_125M.sh",
        SEQ_LEN="64", NUM_LAYERS="2", HIDDEN_SIZE="64", NUM_ATTN_HEADS="4", GLOBAL_BATCH_SIZE="8",
        BATCH_SIZE="2", TRAIN_TOKENS=str(3 * 8 * 64), LR_WARMUP_TOKENS=str(8 * 64), LOG_INTERVAL="1",
        EVAL_ITERS="1", EVAL_INTERVAL="2", SAVE_INTERVAL="2", OUTPUT_HOME=str(output), PRECISION=precision,
    )  # fmt: skip
    stdout = result.stdout
    assert "tensor-parallel 2, pipeline 2" in stdout and "full, chunks of 1 layer(s)" in stdout
    assert sorted(losses(stdout)) == [1, 2, 3] and all(map(math.isfinite, losses(stdout).values()))
    assert re.search(r"iteration\s+3/.*\| consumed samples:\s+24 \|", stdout)
    events = EventAccumulator(str(next((output / "tensorboard").iterdir())))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = (
        "batch-size/batch-size",
        "lm-loss-validation/lm loss validation ppl",
        "iteration-time/iteration-time",
    )
    for tag in expected:
        assert tag in scalars, sorted(scalars)
    assert any(tag.startswith("optimizer/") for tag in scalars), sorted(scalars)
