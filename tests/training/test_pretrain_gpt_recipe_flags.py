"""pretrain_gpt.py with Megatron-DeepSpeed recipe flags, end to end on CPU: --train-tokens, the LR schedule on
resume, the optional tensorboard scalars, ZeRO-Offload with DeepSpeed's CPU Adam, per-split data paths."""

from __future__ import annotations

import math
import re

import pytest
import torch

from megatron.data.indexed_dataset import MMapIndexedDataset
from tests.config.test_compat import KERNEL_SWITCHES
from tests.data.corpora import write_corpus
from tests.launch import VALID_PATTERN, run_pretrain, tiny_model_flags, write_ds_config

pytestmark = pytest.mark.slow

# tiny_model_flags: global batch 8 of 32-token samples; lr 1e-3 to 1e-4, cosine, 2 warmup iterations.
TOKENS_PER_ITERATION = 8 * 32
LR_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| learning rate: (\S+) \|")


def replace_flag(flags: list[str], old: str, new: str, value: str) -> list[str]:
    at = flags.index(old)
    return flags[:at] + [new, value] + flags[at + 2 :]


def learning_rates(output: str) -> dict[int, float]:
    return {int(iteration): float(lr) for iteration, lr in LR_PATTERN.findall(output)}


def cosine_lr(max_lr: float, iteration: int, warmup_iters: int = 2, decay_iters: int = 8) -> float:
    """Megatron's schedule after ``iteration`` updates, for tiny_model_flags' min lr of 1e-4."""
    if iteration <= warmup_iters:
        return max_lr * iteration / warmup_iters
    progress = (iteration - warmup_iters) / (decay_iters - warmup_iters)
    return 1e-4 + 0.5 * (math.cos(math.pi * progress) + 1.0) * (max_lr - 1e-4)


def model_states(folder) -> dict:
    return torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)


def test_train_tokens_end_the_run_and_count_on_after_a_resume(gpt_data_prefix, tmp_path):
    """As the recipes pass it, with --train-samples (20 iterations' worth): the run stops at the first
    iteration whose tokens reach --train-tokens; the count is saved and a resumed run goes on from it. The
    same run takes the kernel switches (each logged) and --distributed-backend gloo."""
    save = tmp_path / "ckpt"
    flags = replace_flag(tiny_model_flags(gpt_data_prefix), "--train-iters", "--train-samples", "160")
    flags = replace_flag(flags, "--lr-warmup-iters", "--lr-warmup-samples", "16")
    flags += ["--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)), "--save", str(save)]
    first = run_pretrain(
        flags + ["--train-tokens", str(4 * TOKENS_PER_ITERATION + 1), "--distributed-backend", "gloo"]
        + KERNEL_SWITCHES,
        launcher="python",
    ).check()  # fmt: skip
    assert sorted(first.losses) == [1, 2, 3, 4, 5]
    assert model_states(save / "global_step5")["tokens"] == 5 * TOKENS_PER_ITERATION
    assert "process group: gloo backend" in first.stdout
    for flag in KERNEL_SWITCHES:
        assert first.stdout.count(f"] {flag}: ") == 1, flag
    resumed = run_pretrain(
        flags + ["--load", str(save), "--train-tokens", str(7 * TOKENS_PER_ITERATION)], launcher="python"
    ).check()
    assert sorted(resumed.losses) == [6, 7]


def test_lr_schedule_settings_when_a_run_resumes_with_another_lr(gpt_data_prefix, tmp_path):
    """A run stopped at iteration 4 resumes with --lr doubled: refused without a choice,
    --override-opt_param-scheduler follows the new peak, --use-checkpoint-opt_param-scheduler the saved
    one, and --reset-iteration --no-load-lr-state restarts schedule and data from the saved weights."""
    save = tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, 8) + [
        "--deepspeed_config",
        str(write_ds_config(tmp_path / "ds.json", 0)),
    ]
    first = run_pretrain(flags + ["--save", str(save), "--exit-interval", "4"], launcher="python").check()
    resume = flags + ["--load", str(save), "--lr", "2e-3"]

    refused = run_pretrain(resume, launcher="python")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--lr: 0.001 (checkpoint) vs 0.002 (flags)" in refused.stderr
    assert "--override-opt_param-scheduler" in refused.stderr

    for flag, peak in (
        ("--override-opt_param-scheduler", 2e-3),
        ("--use-checkpoint-opt_param-scheduler", 1e-3),
    ):
        rates = learning_rates(run_pretrain(resume + [flag], launcher="python").check().stdout)
        assert sorted(rates) == [5, 6, 7, 8], flag
        for iteration, rate in rates.items():
            assert rate == pytest.approx(cosine_lr(peak, iteration), rel=1e-5), (flag, iteration)

    restarted = run_pretrain(
        resume + ["--reset-iteration", "--no-load-lr-state", "--train-iters", "2"], launcher="python"
    ).check()
    assert sorted(restarted.losses) == [1, 2]
    assert learning_rates(restarted.stdout)[1] == pytest.approx(cosine_lr(2e-3, 1), rel=1e-5)
    assert re.search(r"iteration\s+1/.*\| consumed samples:\s+8 \|", restarted.stdout)
    assert restarted.losses[1] < first.losses[1] - 0.05  # the trained weights were loaded


def test_megatron_deepspeed_tensorboard_scalars(gpt_data_prefix, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard, save = tmp_path / "tb", tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)), "--save", str(save),
        "--eval-interval", "2", "--tensorboard-dir", str(tensorboard), "--tensorboard-queue-size", "1",
        "--timing-log-level", "2", "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard",
        "--log-validation-ppl-to-tensorboard", "--log-optimizer-states-to-tensorboard",
        "--log-memory-to-tensorboard",
    ]  # fmt: skip
    result = run_pretrain(flags, launcher="python").check()
    events = EventAccumulator(str(tensorboard))
    events.Reload()

    def scalars(tag: str) -> dict[int, float]:
        return {event.step: event.value for event in events.Scalars(tag)}

    assert scalars("batch-size/batch-size") == {1: 8.0, 2: 8.0, 3: 8.0, 4: 8.0}
    assert sorted(scalars("batch-size/batch-size vs tokens")) == [256, 512, 768, 1024]
    validation = [float(loss) for loss in VALID_PATTERN.findall(result.stdout)]
    ppl = scalars("lm-loss-validation/lm loss validation ppl")
    assert list(ppl.values()) == pytest.approx([math.exp(loss) for loss in validation], rel=1e-5)
    assert sorted(ppl) == [2, 4] and sorted(
        scalars("lm-loss-validation/lm loss validation ppl vs samples")
    ) == [16, 32]
    logged_ms = re.findall(r"elapsed time per iteration \(ms\): (\S+) \|", result.stdout)
    iteration_time = scalars("iteration-time/iteration-time")
    assert list(iteration_time.values()) == pytest.approx([float(ms) / 1000 for ms in logged_ms], abs=1e-6)
    timers = {name: scalars(f"{name}-time") for name in ("forward-backward", "optimizer", "batch-generator")}
    parts = {name: scalars(f"{name}-time") for name in ("forward-compute", "backward-compute")}
    for step in range(1, 5):
        assert 0 < timers["forward-backward"][step] + timers["optimizer"][step] <= iteration_time[step]
        assert (
            0
            < parts["forward-compute"][step] + parts["backward-compute"][step]
            <= timers["forward-backward"][step]
        )
        assert timers["batch-generator"][step] > 0
    assert "time per iteration (ms), slowest rank: forward-backward: " in result.stdout
    assert min(scalars("mem-allocated-bytes").values()) > 2**20
    # The moments after the last update, as the checkpoint written then holds them (ZeRO 0: one file).
    state = model_states(save / "global_step4")["optimizer"]["state"]
    momentum = torch.cat([s["exp_avg"].flatten() for s in state.values()]).double()
    variance = torch.cat([s["exp_avg_sq"].flatten() for s in state.values()]).double()
    assert scalars("optimizer/momentum_l2")[4] == pytest.approx(momentum.norm().item(), rel=1e-5)
    assert scalars("optimizer/variance_sqrt_l1")[4] == pytest.approx(variance.sqrt().sum().item(), rel=1e-5)
    assert scalars("optimizer/momentum_abs_max vs tokens")[1024] == pytest.approx(momentum.abs().max().item())


def test_zero_offload_with_cpu_adam_follows_the_plain_run(gpt_data_prefix, tmp_path):
    """DeepSpeed's CPU Adam (ZeRO-Offload) computes AdamW's update: --cpu-optimizer with ZeRO 3 and its
    parameters offloaded too follows torch's AdamW under ZeRO 2, through a save and a resume."""
    flags = tiny_model_flags(gpt_data_prefix, 6)
    plain = run_pretrain(
        flags + ["--deepspeed_config", str(write_ds_config(tmp_path / "plain.json", 2))], launcher="python"
    ).check()
    zero = {"stage": 3, "offload_param": {"device": "cpu"}}
    offload = flags + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "offload.json", 3, zero_optimization=zero)),
        "--cpu-optimizer", "--save", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    first = run_pretrain(offload + ["--exit-interval", "3"], launcher="python").check()
    assert "optimizer: DeepSpeed CPUAdam" in first.stdout
    resumed = run_pretrain(offload + ["--load", str(tmp_path / "ckpt")], launcher="python").check()
    losses = {**first.losses, **resumed.losses}
    assert sorted(losses) == sorted(plain.losses) == list(range(1, 7))
    for iteration, loss in plain.losses.items():
        assert losses[iteration] == pytest.approx(loss, rel=1e-5), iteration


def test_train_and_valid_data_paths_read_their_own_corpora(gpt_data_prefix, tmp_path):
    """--train-data-path P trains on all of P, as --data-path P --split 100,0,0 does; --valid-data-path
    evaluates on the corpus it names (a held-out one here, or P itself: other validation losses)."""
    corpus = MMapIndexedDataset(gpt_data_prefix)
    held_out = write_corpus(tmp_path, [corpus[i] for i in range(len(corpus) - 40, len(corpus))], "held_out")
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0)), "--eval-interval", "2",
    ]  # fmt: skip
    whole = run_pretrain(replace_flag(flags, "--split", "--split", "100,0,0"), launcher="python").check()
    without_data_path = flags[: flags.index("--data-path")] + flags[flags.index("--data-path") + 2 :]
    runs = {
        valid: run_pretrain(
            without_data_path + ["--train-data-path", gpt_data_prefix, "--valid-data-path", valid],
            launcher="python",
        ).check()
        for valid in (held_out, gpt_data_prefix)
    }
    assert VALID_PATTERN.findall(whole.stdout) == []
    for result in runs.values():
        assert result.loss_strings == whole.loss_strings
        assert len(VALID_PATTERN.findall(result.stdout)) == 2
    assert VALID_PATTERN.findall(runs[held_out].stdout) != VALID_PATTERN.findall(runs[gpt_data_prefix].stdout)
