"""A tiny GPT trained in each parallel layout matches one process: losses of every step, first-step gradients.

Each layout runs for real under ``torchrun`` with gloo on CPU (2 or 4 processes) through the same engine,
model provider and step functions as ``pretrain_gpt.py``; fp32, dropout off, ZeRO stage 0 so that the
gradients are read before the optimizer touches them (the ZeRO 1 to 3 layouts compare losses and gradient
norms only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.launch import child_env, free_port, launch

WORKER = Path(__file__).with_name("gpt_layout_worker.py")
STEPS = 3


def model_flags(tmp_path: Path, zero_stage: int = 0) -> list[str]:
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": zero_stage}}))
    return [
        "--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--max-position-embeddings", "16", "--make-vocab-size-divisible-by", "64",
        "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(STEPS),
        "--lr", "1e-2", "--lr-decay-style", "constant", "--clip-grad", "0.5",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--data-path", "unused", "--vocab-file", "unused", "--merge-file", "unused",
        "--deepspeed", "--deepspeed_config", str(ds_config),
    ]  # fmt: skip


def run_layout(tmp_path: Path, name: str, nproc: int, flags: list[str], **env_vars: str) -> dict:
    out = tmp_path / name
    env = child_env(OMP_NUM_THREADS="1", **env_vars)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(free_port()), str(WORKER), str(out), *flags,
    ]  # fmt: skip
    completed = launch(command, env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    merged: dict = {"grads": {}}
    for stage_file in sorted(tmp_path.glob(f"{name}.stage*.pt")):
        part = torch.load(stage_file)
        merged["losses"], merged["grad_norms"] = part["losses"], part["grad_norms"]
        merged["grads"].update(part["grads"])
    return merged


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("reference")
    return run_layout(tmp_path, "single", 1, model_flags(tmp_path))


def assert_same_losses(result: dict, reference: dict) -> None:
    """Losses, and the gradient norms before clipping where the engine reports them (the pipeline engine
    does not in fp32 with ZeRO 0): a gradient off by a constant factor is clipped back to the same
    gradients, and Adam's steps hardly depend on the factor, but the norm shows it."""
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-5), (
        result["losses"],
        reference["losses"],
    )
    reported = [
        (got, want) for got, want in zip(result["grad_norms"], reference["grad_norms"]) if got is not None
    ]
    assert [got for got, _ in reported] == pytest.approx([want for _, want in reported], rel=1e-5), reported


def assert_matches(result: dict, reference: dict) -> None:
    assert_same_losses(result, reference)
    assert sorted(result["grads"]) == sorted(reference["grads"])
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    "dp2-tp2": (4, ["--tensor-model-parallel-size", "2"]),
    "tp2-recompute-selective": (
        2,
        ["--tensor-model-parallel-size", "2", "--recompute-granularity", "selective"],
    ),
    "tp2-recompute-full-uniform": (
        2,
        [
            "--tensor-model-parallel-size",
            "2",
            "--recompute-granularity",
            "full",
            "--recompute-method",
            "uniform",
            "--recompute-num-layers",
            "2",
        ],
    ),  # fmt: skip
    "tp2-recompute-full-block": (
        2,
        [
            "--tensor-model-parallel-size",
            "2",
            "--recompute-granularity",
            "full",
            "--recompute-method",
            "block",
            "--recompute-num-layers",
            "1",
        ],
    ),  # fmt: skip
    "pp2-checkpoint-activations-deepspeed": (
        2,
        [
            "--pipeline-model-parallel-size",
            "2",
            "--checkpoint-activations",
            "--deepspeed-activation-checkpointing",
        ],
    ),
    "ulysses2": (2, ["--ds-sequence-parallel-size", "2"]),
    "ulysses2-tp2": (4, ["--tensor-model-parallel-size", "2", "--ds-sequence-parallel-size", "2"]),
    # The all-to-alls inside the recomputed core attention run again in backward.
    "ulysses2-recompute-selective": (
        2,
        ["--ds-sequence-parallel-size", "2", "--recompute-granularity", "selective"],
    ),
}

# ZeRO 1 to 3 keep gradients in their own partitions, out of the worker's reach: losses and norms only.
ZERO_LAYOUTS = {
    "ulysses2-zero1": (2, 1, ["--ds-sequence-parallel-size", "2"]),
    # Two replicas of two Ulysses ranks: ZeRO partitions and averages over all four.
    "dp2-ulysses2-zero2": (4, 2, ["--ds-sequence-parallel-size", "2"]),
    "ulysses2-zero3": (2, 3, ["--ds-sequence-parallel-size", "2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(tmp_path, reference, layout):
    nproc, flags = LAYOUTS[layout]
    assert_matches(run_layout(tmp_path, layout, nproc, model_flags(tmp_path) + flags), reference)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(ZERO_LAYOUTS))
def test_zero_layout_losses_match_single_process(tmp_path, reference, layout):
    nproc, zero_stage, flags = ZERO_LAYOUTS[layout]
    assert_same_losses(
        run_layout(tmp_path, layout, nproc, model_flags(tmp_path, zero_stage) + flags), reference
    )


# FP8 matmuls: each rank scales its own operands by their own maximum. Data parallelism leaves every
# micro batch's matmuls as one process runs them (so tight tolerances); tensor parallelism scales each
# shard on its own, which moves losses and gradients within FP8 rounding (seen: 4e-4 and 12% here, where
# hidden size 32 leaves few values per scale). (processes, flags, loss tolerance, gradient tolerance)
FP8_LAYOUTS = {
    "dp2": (2, [], 1e-5, 1e-4),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2e-3, 0.25),
}


@pytest.fixture(scope="module")
def fp8_reference(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("fp8_reference")
    return run_layout(tmp_path, "single-fp8", 1, model_flags(tmp_path) + ["--fp8-format", "hybrid"])


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(FP8_LAYOUTS))
def test_fp8_layout_follows_single_fp8_process(tmp_path, fp8_reference, reference, layout):
    nproc, flags, loss_tolerance, grad_tolerance = FP8_LAYOUTS[layout]
    flags = model_flags(tmp_path) + ["--fp8-format", "hybrid"] + flags
    result = run_layout(tmp_path, f"fp8-{layout}", nproc, flags)
    assert fp8_reference["losses"] != pytest.approx(reference["losses"], rel=1e-5)  # FP8 did run
    assert result["losses"] == pytest.approx(fp8_reference["losses"], rel=loss_tolerance)
    assert sorted(result["grads"]) == sorted(fp8_reference["grads"])
    for name, grad in fp8_reference["grads"].items():
        error = float((result["grads"][name] - grad).norm() / grad.norm())
        assert error < grad_tolerance, (name, error)


# Compiled with dropout where heads or the sequence are split over ranks. With torch.compile's dropout drawn
# through torch's eager random ops (inductor's fallback_random, set by the worker) a compiled run draws the
# eager masks, so it must give the eager run's losses and gradients: the per-rank stream is entered and left
# where eager mode does, and recomputation replays it.
COMPILED_DROPOUT_LAYOUTS = {
    "tp2-sequence-parallel-full-recompute": [
        "--tensor-model-parallel-size", "2", "--sequence-parallel", "--recompute-granularity", "full",
    ],
    "ulysses2-selective-recompute": [
        "--ds-sequence-parallel-size", "2", "--recompute-granularity", "selective",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(COMPILED_DROPOUT_LAYOUTS))
def test_compiled_dropout_follows_eager(tmp_path, reference, layout):
    flags = model_flags(tmp_path) + COMPILED_DROPOUT_LAYOUTS[layout]
    flags += ["--attention-dropout", "0.1", "--hidden-dropout", "0.1"]
    eager = run_layout(tmp_path, f"{layout}-eager", 2, flags)
    compiled = run_layout(
        tmp_path, f"{layout}-compiled", 2, flags + ["--torch-compile"], INDUCTOR_FALLBACK_RANDOM="1"
    )
    assert eager["losses"] != pytest.approx(reference["losses"], rel=1e-5)  # dropout did act
    assert_matches(compiled, eager)


# LLaMA-style (Megatron-DeepSpeed's LLaMA recipe flags): rotary positions only, SwiGLU, RMSNorm, no biases,
# an untied output layer, 4 query heads sharing 2 key/value heads. Each layout against one process of it.
LLAMA_FLAGS = [
    "--use-rotary-position-embeddings", "--no-position-embedding", "--swiglu", "--normalization", "rmsnorm",
    "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--num-key-value-heads", "2",
    "--ffn-hidden-size", "64",
]  # fmt: skip
LLAMA_LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "tp2-sequence-parallel-recompute-full": (
        2,
        ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--recompute-granularity", "full"],
    ),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    "ulysses2-recompute-selective": (
        2,
        ["--ds-sequence-parallel-size", "2", "--recompute-granularity", "selective"],
    ),
}


@pytest.fixture(scope="module")
def llama_reference(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("llama_reference")
    return run_layout(tmp_path, "llama-single", 1, model_flags(tmp_path) + LLAMA_FLAGS)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LLAMA_LAYOUTS))
def test_llama_layout_matches_single_process(tmp_path, llama_reference, reference, layout):
    nproc, flags = LLAMA_LAYOUTS[layout]
    assert "language_model.output_layer.weight" in llama_reference["grads"]
    assert llama_reference["losses"] != pytest.approx(reference["losses"], rel=1e-3)  # another model
    result = run_layout(tmp_path, f"llama-{layout}", nproc, model_flags(tmp_path) + LLAMA_FLAGS + flags)
    assert_matches(result, llama_reference)


@pytest.mark.slow
def test_llama_zero3_losses_match_single_process(tmp_path, llama_reference):
    flags = model_flags(tmp_path, zero_stage=3) + LLAMA_FLAGS
    assert_same_losses(run_layout(tmp_path, "llama-dp2-zero3", 2, flags), llama_reference)
