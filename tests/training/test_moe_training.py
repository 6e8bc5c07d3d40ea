"""MoE GPTs through pretrain_gpt.py on 2 processes: expert parallelism computes what data parallelism does,
the load-balancing loss is logged, PR-MoE with Residual MoE trains and resumes from its expert files."""

from __future__ import annotations

import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

MOE_LOSS_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| moe loss: (\S+) \|")


def moe_losses(stdout: str) -> dict[int, float]:
    return {int(it): float(loss) for it, loss in MOE_LOSS_PATTERN.findall(stdout)}


LLAMA_FLAGS = [
    "--use-rotary-position-embeddings", "--no-position-embedding", "--swiglu", "--normalization", "rmsnorm",
    "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--num-key-value-heads", "2",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("architecture", [[], LLAMA_FLAGS], ids=["gpt", "llama-swiglu-experts"])
def test_expert_parallel_matches_data_parallel_and_logs_the_moe_loss(gpt_data_prefix, tmp_path, architecture):
    """4 experts in each layer on 2 ranks: split 2 + 2 over the ranks (expert-parallel 2, ZeRO 2, full
    recomputation) or whole on both (expert-parallel 1, ZeRO 0). The same global batch, fp32, dropout off,
    and per rank the same tokens, capacity and random token selection, so every step's losses agree. With
    the LLaMA flags the experts are SwiGLU MLPs."""
    moe = ["--num-experts", "4", "--expert-interval", "1", *architecture]
    runs = {}
    for ep_size, stage, extra in ((2, 2, ["--checkpoint-activations"]), (1, 0, [])):
        flags = tiny_model_flags(gpt_data_prefix) + moe + extra + [
            "--moe-expert-parallel-size", str(ep_size),
            "--deepspeed_config", str(write_ds_config(tmp_path / f"ds{ep_size}.json", stage)),
            "--tensorboard-dir", str(tmp_path / f"tb{ep_size}"),
        ]  # fmt: skip
        runs[ep_size] = run_pretrain(flags, nproc=2).check()
    split, whole = runs[2], runs[1]
    assert "expert-parallel size 2" in split.stdout and "experts per MoE layer {0: 4, 1: 4}" in split.stdout
    assert sorted(split.losses) == sorted(whole.losses) == list(range(1, 7))
    assert split.losses[6] < split.losses[1] - (0.02 if architecture else 0.15), split.losses
    for iteration, loss in whole.losses.items():
        assert split.losses[iteration] == pytest.approx(loss, rel=1e-5), iteration
    assert sorted(moe_losses(split.stdout)) == list(range(1, 7))
    for iteration, loss in moe_losses(whole.stdout).items():
        assert 0 < loss and moe_losses(split.stdout)[iteration] == pytest.approx(loss, rel=1e-5)
    events = EventAccumulator(str(tmp_path / "tb2"))
    events.Reload()
    logged = [event.value for event in events.Scalars("moe loss")]
    assert logged == pytest.approx([moe_losses(split.stdout)[it] for it in range(1, 7)], rel=1e-5)


@pytest.mark.slow
def test_pyramid_residual_moe_trains_and_resumes_from_its_expert_files(gpt_data_prefix, tmp_path):
    """PR-MoE (2 experts in layer 1, 4 in layer 3) with Residual MoE and top-2 gating, experts split over 2
    ranks, ZeRO 1, dropout on: stopped at iteration 2 and resumed, it continues exactly."""
    save = tmp_path / "ckpt"
    flags = tiny_model_flags(gpt_data_prefix, train_iters=4) + [
        "--num-layers", "4", "--num-experts", "2", "4", "--mlp-type", "residual", "--topk", "2",
        "--moe-expert-parallel-size", "2", "--attention-dropout", "0.1", "--hidden-dropout", "0.1",
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
    ]  # fmt: skip
    whole = run_pretrain(flags + ["--save", str(save), "--save-interval", "2"], nproc=2).check()
    assert "experts per MoE layer {1: 2, 3: 4}" in whole.stdout and "Residual MoE" in whole.stdout
    assert whole.losses[4] < whole.losses[1], whole.losses
    step2 = save / "global_step2"
    experts = sorted(path.name for path in step2.glob("layer_*_expert_*_model_states.pt"))
    assert experts == [f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(2)] + [
        f"layer_1_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)
    ]
    (save / "latest").write_text("global_step2")
    resumed = run_pretrain(flags + ["--load", str(save)], nproc=2).check()
    assert resumed.losses == {it: loss for it, loss in whole.losses.items() if it > 2}
    assert moe_losses(resumed.stdout) == {it: loss for it, loss in moe_losses(whole.stdout).items() if it > 2}
