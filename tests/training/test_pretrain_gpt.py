"""pretrain_gpt.py end to end on CPU: one process, data parallel with ZeRO 1-3, precision, resume, logging."""

from __future__ import annotations

import glob
import itertools
import math
import os
import re

import pytest
import torch
from deepspeed.accelerator import get_accelerator

from tests.launch import REPO_ROOT, VALID_PATTERN, run_pretrain, tiny_model_flags, write_ds_config


def test_single_process_loss_falls_and_checkpoint_is_written(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, train_iters=8) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)),
        "--save", str(save), "--eval-interval", "4",
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python").check()
    losses = result.losses
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.3, losses
    assert "validation loss at iteration 4" in result.stdout
    assert "validation loss at iteration 8" in result.stdout
    for field in ("consumed samples:", "learning rate:", "grad norm:", "loss scale:", "tokens per second:",
                  "TFLOPs per GPU:", "number of skipped iterations:", "memory (GiB):", "ETA:"):  # fmt: skip
        assert field in result.stdout, field
    assert (save / "latest").read_text() == "global_step8"
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "8"
    assert (save / "global_step8" / "mp_rank_00_model_states.pt").exists()


@pytest.mark.slow
def test_trains_on_llama2_sentencepiece_data(sentencepiece_model, tmp_path):
    """The Llama 2 recipe's data path: preprocess with Llama2Tokenizer and --append-eod, then train with the
    same tokenizer flags; the model is sized by the SentencePiece vocabulary."""
    from tools.preprocess_data import main as preprocess

    corpus = tmp_path / "corpus.jsonl"
    with (REPO_ROOT / "data" / "corpus" / "kjv.jsonl").open() as source:
        corpus.write_text("".join(itertools.islice(source, 60)))
    tokenizer = ("--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", sentencepiece_model)
    preprocess(
        ["--input", str(corpus), "--output-prefix", str(tmp_path / "llama"), *tokenizer, "--append-eod"]
    )
    flags = tiny_model_flags(str(tmp_path / "llama_text_document"), train_iters=3, tokenizer=tokenizer) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)),
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python").check()
    assert sorted(result.losses) == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in result.losses.values()), result.losses
    # Random logits over the 1000 SentencePiece pieces (padded to 1024 rows) start near ln(1000).
    assert abs(result.losses[1] - math.log(1000)) < 1.0, result.losses


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_data_parallel_zero_matches_single_process(gpt_data_prefix, tmp_path, zero_stage):
    """Same global batch (8 = 2 micro x 4 accumulation on one rank, 2 micro x 2 accumulation x 2 ranks)."""
    reference = run_pretrain(
        tiny_model_flags(gpt_data_prefix)
        + ["--deepspeed_config", str(write_ds_config(tmp_path / "one.json", 0))],
        launcher="python",
    ).check()
    parallel = run_pretrain(
        tiny_model_flags(gpt_data_prefix)
        + ["--deepspeed_config", str(write_ds_config(tmp_path / "two.json", zero_stage))],
        nproc=2,
        launcher="deepspeed" if zero_stage == 2 else "torchrun",
    ).check()
    assert "gradient accumulation steps: 2" in parallel.stdout
    assert sorted(parallel.losses) == sorted(reference.losses) == list(range(1, 7))
    for iteration, loss in reference.losses.items():
        assert parallel.losses[iteration] == pytest.approx(loss, rel=2e-5), (iteration, parallel.losses, loss)


RESUME_LAYOUTS = {
    "zero0": (1, 0, []),
    "zero1": (1, 1, []),
    "zero2": (1, 2, []),
    "zero3": (1, 3, []),
    "dp2-zero2": (2, 2, []),
    "tp2-zero1": (2, 1, ["--tensor-model-parallel-size", "2"]),
    "pp2-zero1": (2, 1, ["--pipeline-model-parallel-size", "2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(RESUME_LAYOUTS))
def test_resume_continues_the_same_run_exactly(gpt_data_prefix, tmp_path, layout):
    """8 iterations straight vs 4, stop, resume for 4 more: same losses and bit-identical final weights,
    with dropout on so that the RNG streams must be restored too."""
    nproc, zero_stage, parallel = RESUME_LAYOUTS[layout]
    launcher = "python" if nproc == 1 else "torchrun"
    flags = tiny_model_flags(gpt_data_prefix, 8) + parallel + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", zero_stage)),
        "--attention-dropout", "0.1", "--hidden-dropout", "0.1",
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = run_pretrain(flags + ["--save", str(straight)], nproc, launcher).check()
    run_pretrain(flags + ["--save", str(split), "--exit-interval", "4"], nproc, launcher).check()
    assert (split / "latest").read_text() == "global_step4"
    resumed = run_pretrain(flags + ["--save", str(split), "--load", str(split)], nproc, launcher).check()

    assert sorted(resumed.loss_strings) == [5, 6, 7, 8]
    for iteration in range(5, 9):
        assert resumed.loss_strings[iteration] == whole.loss_strings[iteration], iteration
    weight_files = sorted(p.name for p in (straight / "global_step8").glob("*model_states.pt"))
    assert weight_files == sorted(p.name for p in (split / "global_step8").glob("*model_states.pt"))
    for name in weight_files:
        final_straight = torch.load(straight / "global_step8" / name, weights_only=True)
        final_resumed = torch.load(split / "global_step8" / name, weights_only=True)
        weights = final_straight.get("module", final_straight) or {}
        resumed_weights = final_resumed.get("module", final_resumed) or {}
        for key, tensor in weights.items():
            if torch.is_tensor(tensor):
                assert torch.equal(tensor, resumed_weights[key]), (name, key)


@pytest.mark.slow
def test_bf16_trains(gpt_data_prefix, tmp_path):
    ds_config = write_ds_config(tmp_path / "ds.json", 1, bf16={"enabled": True})
    result = run_pretrain(
        tiny_model_flags(gpt_data_prefix, 8) + ["--bf16", "--deepspeed_config", str(ds_config)],
        launcher="python",
    ).check()
    assert result.losses[8] < result.losses[1] - 0.3


@pytest.mark.slow
def test_bf16_autocast_follows_the_fp32_run_and_keeps_fp32_weights(gpt_data_prefix, tmp_path):
    """The ds_config's torch_autocast section (the fast path on GPUs: no per-parameter bf16/fp32 copies)
    against the same run in fp32: close losses, yet computed in bf16, and fp32 weights in the checkpoint."""
    flags = tiny_model_flags(gpt_data_prefix, 8)
    fp32 = run_pretrain(
        flags + ["--deepspeed_config", str(write_ds_config(tmp_path / "fp32.json", 0))], launcher="python"
    ).check()
    autocast_ds = write_ds_config(tmp_path / "autocast.json", 0, torch_autocast={"enabled": True})
    save = tmp_path / "ckpt"
    autocast = run_pretrain(
        flags + ["--deepspeed_config", str(autocast_ds), "--save", str(save)], launcher="python"
    ).check()
    assert "bf16 autocast over fp32 weights" in autocast.stderr + autocast.stdout
    assert sorted(autocast.losses) == list(range(1, 9))
    for iteration, loss in fp32.losses.items():
        assert autocast.losses[iteration] == pytest.approx(loss, rel=2e-2), iteration
    assert autocast.losses != fp32.losses  # bf16 arithmetic really ran
    assert autocast.losses[8] < autocast.losses[1] - 0.3
    weights = torch.load(save / "global_step8" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert {tensor.dtype for tensor in weights.values() if torch.is_tensor(tensor)} == {torch.float32}


@pytest.mark.slow
def test_torch_compile_through_the_engine_follows_the_eager_run(gpt_data_prefix, tmp_path):
    """--torch-compile compiles the whole model as one graph inside the DeepSpeed engine: the same losses as
    eager (fp32, up to the compiler's reordering of float sums)."""
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)),
    ]  # fmt: skip
    eager = run_pretrain(flags, launcher="python").check()
    compiled = run_pretrain(flags + ["--torch-compile"], launcher="python").check()
    assert "torch.compile (default) on the whole model (one graph)" in compiled.stdout + compiled.stderr
    assert sorted(compiled.losses) == sorted(eager.losses) == [1, 2, 3, 4]
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)


@pytest.mark.slow
def test_fp8_run_follows_bf16_and_its_checkpoint_resumes_without_fp8(gpt_data_prefix, tmp_path):
    """--fp8-format under bf16 autocast (the GPU recipe): close to the same run without it, and since FP8
    changes only the matmuls, its checkpoint resumes in plain bf16 as the bf16 run goes on."""
    ds_config = write_ds_config(tmp_path / "ds.json", 0, torch_autocast={"enabled": True})
    flags = tiny_model_flags(gpt_data_prefix, 8) + ["--deepspeed_config", str(ds_config)]
    bf16 = run_pretrain(flags, launcher="python").check()
    save = tmp_path / "ckpt"
    fp8_flags = flags + ["--fp8-format", "hybrid", "--save", str(save), "--exit-interval", "4"]
    fp8 = run_pretrain(fp8_flags, launcher="python").check()
    assert "matmuls: FP8 (hybrid" in fp8.stdout + fp8.stderr
    resumed = run_pretrain(flags + ["--load", str(save)], launcher="python").check()
    assert "matmuls: FP8" not in resumed.stdout + resumed.stderr
    assert sorted(fp8.losses) == [1, 2, 3, 4] and sorted(resumed.losses) == [5, 6, 7, 8]
    losses = {**fp8.losses, **resumed.losses}
    assert losses != bf16.losses  # FP8 arithmetic really ran
    # Seen: 4e-5 apart. A resume that lost the weights would start again near 9.0 (1e-2 off at step 5).
    for iteration, loss in bf16.losses.items():
        assert losses[iteration] == pytest.approx(loss, rel=1e-3), iteration


@pytest.mark.slow
def test_compiled_run_with_dropout_accumulation_and_evaluation(gpt_data_prefix, tmp_path):
    """--torch-compile as users run it: Megatron's default dropout, four micro batches per step, evaluation
    every two iterations, CUDA-graph mode (on a CPU torch.compile runs it without graphs, but the step keeps
    accumulated gradients out of graph memory as on a GPU). Without dropout the compiled run gives the eager
    losses; with dropout it trains, evaluates and logs its compilation time."""
    ds_config = write_ds_config(tmp_path / "ds.json", 0, torch_autocast={"enabled": True})
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(ds_config), "--eval-interval", "2", "--eval-iters", "1",
    ]  # fmt: skip
    compiled_flags = ["--torch-compile", "--torch-compile-mode", "reduce-overhead"]
    eager = run_pretrain(flags, launcher="python").check()
    compiled = run_pretrain(flags + compiled_flags, launcher="python").check()
    assert "gradient accumulation steps: 4" in compiled.stdout
    assert "torch.compile (reduce-overhead) on the whole model (one graph)" in compiled.stdout
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    validation = [float(value) for value in VALID_PATTERN.findall(compiled.stdout)]
    assert validation == pytest.approx([float(v) for v in VALID_PATTERN.findall(eager.stdout)], rel=1e-4)
    dropout = flags + compiled_flags + ["--attention-dropout", "0.1", "--hidden-dropout", "0.1"]
    result = run_pretrain(dropout, launcher="python").check()
    assert sorted(result.losses) == [1, 2, 3, 4] and len(VALID_PATTERN.findall(result.stdout)) == 2
    assert result.losses != eager.losses and all(math.isfinite(v) for v in result.losses.values())
    assert re.search(r"torch.compile: the first training iteration took [\d.]+ s", result.stdout)
    assert re.search(r"torch.compile: the first evaluation took [\d.]+ s", result.stdout)


@pytest.mark.slow
def test_tensorboard_and_offline_wandb_receive_scalars(gpt_data_prefix, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard_dir, wandb_dir = tmp_path / "tb", tmp_path / "wandb"
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)),
        "--tensorboard-dir", str(tensorboard_dir),
        "--wandb-project", "tests", "--wandb-save-dir", str(wandb_dir), "--wandb-mode", "offline",
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python").check()
    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    logged = [event.value for event in events.Scalars("lm loss")]
    assert logged == pytest.approx([result.losses[i] for i in range(1, 5)], rel=1e-6)
    assert "learning rate" in events.Tags()["scalars"]
    assert glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*"))


def test_bad_flag_fails_before_any_process_group(gpt_data_prefix, tmp_path):
    flags = tiny_model_flags(gpt_data_prefix) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)), "--fp32-residual-connection",
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python")
    assert result.returncode == 2
    assert "--fp32-residual-connection" in result.stderr
    assert "Traceback" not in result.stderr
    assert "process group" not in (result.stdout + result.stderr).lower()


@pytest.mark.slow
@pytest.mark.skipif(
    not get_accelerator().is_fp16_supported(),
    reason="PyTorch has no fp16 kernels for this CPU (oneDNN needs AVX512-FP16 or AMX), so DeepSpeed refuses "
    "fp16 here; pretrain_gpt.py refuses --fp16 up front (tests/training/test_startup.py)",
)
def test_fp16_dynamic_loss_scale_counts_skipped_steps(gpt_data_prefix, tmp_path):
    """At 2**32 the scaled gradients overflow: those steps are skipped and counted; the scale drops."""
    ds_config = write_ds_config(tmp_path / "ds.json", 1, fp16={"enabled": True})
    flags = tiny_model_flags(gpt_data_prefix, 8) + [
        "--fp16", "--initial-loss-scale", str(2**32), "--loss-scale-window", "1000", "--hysteresis", "1",
        "--deepspeed_config", str(ds_config),
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python").check()
    skipped = [int(n) for n in re.findall(r"number of skipped iterations:\s+(\d+)", result.stdout)]
    scales = [float(s) for s in re.findall(r"loss scale: (\S+) \|", result.stdout)]
    assert len(skipped) == 8 and sum(skipped) >= 1, skipped
    assert scales[0] > scales[-1], scales
    assert all(math.isfinite(loss) for loss in result.losses.values())


@pytest.mark.slow
def test_batch_size_rampup_in_sample_mode(gpt_data_prefix, tmp_path):
    """Global batch 4 for the first 32 samples, then 8, through the engine's set_train_batch_size."""
    flags = tiny_model_flags(gpt_data_prefix) + [
        "--deepspeed_config",
        str(write_ds_config(tmp_path / "ds.json", 1)),
    ]
    flags[flags.index("--train-iters") : flags.index("--train-iters") + 2] = ["--train-samples", "64"]
    flags[flags.index("--lr-warmup-iters") : flags.index("--lr-warmup-iters") + 2] = [
        "--lr-warmup-samples",
        "16",
    ]
    result = run_pretrain(flags + ["--rampup-batch-size", "4", "4", "32"], launcher="python").check()
    batch_sizes = [int(n) for n in re.findall(r"\| global batch size:\s+(\d+)", result.stdout)]
    consumed = [int(n) for n in re.findall(r"consumed samples:\s+(\d+)", result.stdout)]
    assert batch_sizes == [4] * 8 + [8] * 4
    assert consumed[-1] == 64


@pytest.mark.slow
def test_deepspeed_activation_checkpointing_flag_keeps_the_losses(gpt_data_prefix, tmp_path):
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
        "--attention-dropout", "0.1", "--hidden-dropout", "0.1",
    ]  # fmt: skip
    plain = run_pretrain(flags, launcher="python").check()
    recomputed = run_pretrain(flags + ["--deepspeed-activation-checkpointing"], launcher="python").check()
    assert (
        "activation recomputation: full, chunks of 1 layer(s), through deepspeed.checkpointing with the "
        "ds_config's activation_checkpointing options" in recomputed.stdout
    )
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-6)
