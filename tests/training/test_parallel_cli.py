"""pretrain_gpt.py end to end in model-parallel layouts on CPU: the same run as one process, via the CLI."""

from __future__ import annotations

import re

import pytest

from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

GRAD_NORM_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| grad norm: (\S+) \|")


def grad_norms(stdout: str) -> dict[int, str]:
    """As logged (three decimals): enough to tell a gradient that is a multiple of the right one."""
    return {int(iteration): norm for iteration, norm in GRAD_NORM_PATTERN.findall(stdout)}


@pytest.mark.slow
def test_ulysses_matches_single_process(gpt_data_prefix, tmp_path):
    """--ds-sequence-parallel-size 2 on 2 processes is one data-parallel replica whose ranks each hold half
    of every sequence: the same 4 accumulation steps per iteration as one process, the same losses and
    gradient norms. ZeRO 1 partitions over both ranks, so each must write its own optimizer shard."""
    reference = run_pretrain(
        tiny_model_flags(gpt_data_prefix)
        + ["--deepspeed_config", str(write_ds_config(tmp_path / "one.json", 0))],
        launcher="python",
    ).check()
    save = tmp_path / "ckpt"
    ulysses = run_pretrain(
        tiny_model_flags(gpt_data_prefix)
        + ["--deepspeed_config", str(write_ds_config(tmp_path / "ulysses.json", 1))]
        + ["--ds-sequence-parallel-size", "2", "--save", str(save)],
        nproc=2,
    ).check()
    assert "attention through DeepSpeed-Ulysses all-to-all over 2 ranks" in ulysses.stdout
    assert "attention through torch SDPA" in reference.stdout
    assert "data-parallel size: 1, gradient accumulation steps: 4" in ulysses.stdout
    assert sorted(ulysses.losses) == sorted(reference.losses) == list(range(1, 7))
    for iteration, loss in reference.losses.items():
        assert ulysses.losses[iteration] == pytest.approx(loss, rel=2e-5), (iteration, ulysses.losses, loss)
    assert grad_norms(ulysses.stdout) == grad_norms(reference.stdout)
    shards = sorted(path.name for path in (save / "global_step6").glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
