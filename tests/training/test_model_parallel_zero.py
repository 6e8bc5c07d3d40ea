"""pretrain_gpt.py with tensor or pipeline parallelism composed with ZeRO: the same losses as one process."""

from __future__ import annotations

import pytest

from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

COMBINATIONS = {
    "tp2-zero1": (2, 1, ["--tensor-model-parallel-size", "2"]),
    "dp2-tp2-zero2": (4, 2, ["--tensor-model-parallel-size", "2"]),
    "dp2-tp2-zero3": (4, 3, ["--tensor-model-parallel-size", "2"]),
    "pp2-zero1": (2, 1, ["--pipeline-model-parallel-size", "2"]),
}


@pytest.fixture(scope="module")
def reference_losses(gpt_data_prefix, tmp_path_factory) -> dict[int, float]:
    ds_config = write_ds_config(tmp_path_factory.mktemp("reference") / "ds.json", 0)
    flags = tiny_model_flags(gpt_data_prefix) + ["--deepspeed_config", str(ds_config)]
    return run_pretrain(flags, launcher="python").check().losses


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_model_parallel_with_zero_matches_single_process(gpt_data_prefix, tmp_path, reference_losses, name):
    nproc, zero_stage, layout = COMBINATIONS[name]
    ds_config = write_ds_config(tmp_path / "ds.json", zero_stage)
    flags = tiny_model_flags(gpt_data_prefix) + ["--deepspeed_config", str(ds_config)] + layout
    losses = run_pretrain(flags, nproc=nproc).check().losses
    assert sorted(losses) == sorted(reference_losses)
    for iteration, loss in reference_losses.items():
        assert losses[iteration] == pytest.approx(loss, rel=2e-5), (iteration, losses, reference_losses)


def test_pipeline_with_zero_stage_2_is_refused_before_starting(gpt_data_prefix, tmp_path):
    ds_config = write_ds_config(tmp_path / "ds.json", 2)
    flags = tiny_model_flags(gpt_data_prefix) + ["--deepspeed_config", str(ds_config)]
    result = run_pretrain(flags + ["--pipeline-model-parallel-size", "2"], nproc=2)
    assert result.returncode != 0
    assert "error: " in result.stderr and "--zero-stage 1" in result.stderr, result.stderr[-2000:]
    assert "gradient accumulation steps" not in result.stdout  # stopped before any engine was built
