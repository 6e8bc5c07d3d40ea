"""--deterministic-mode: read into the config, refused with the features not measured deterministic, and
switching a real run to deterministic kernels (the bitwise GPU check is bench/determinism.py's)."""

from __future__ import annotations

import os

import pytest
import torch

from megatron.config.errors import ConfigError
from megatron.training.determinism import apply_deterministic_mode
from tests.config.recipe import build
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config


def test_the_flag_is_read_and_off_by_default(tmp_path):
    assert not build(tmp_path).kernels.deterministic
    assert build(tmp_path, {"--deterministic-mode": True}).kernels.deterministic
    assert not build(tmp_path).model.embedding_weights_in_fp32
    assert build(tmp_path, {"--embedding-weights-in-fp32": True}).model.embedding_weights_in_fp32


def test_fp8_is_refused_in_one_line_naming_both_flags(tmp_path):
    with pytest.raises(ConfigError, match=r"--deterministic-mode with --fp8-format .*Drop it"):
        build(tmp_path, {"--deterministic-mode": True, "--fp8-format": "hybrid"})


def test_applying_the_mode_switches_torch_and_sdpa(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flash, cudnn = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled()
    efficient = torch.backends.cuda.mem_efficient_sdp_enabled()
    try:
        apply_deterministic_mode(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True
        torch.backends.cuda.enable_flash_sdp(flash)
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        torch.backends.cuda.enable_mem_efficient_sdp(efficient)


@pytest.mark.slow
def test_a_deterministic_run_logs_its_kernels_and_repeats(gpt_data_prefix, tmp_path):
    """Through pretrain_gpt.py with dropout on: the mode's log line, and two runs with the same losses."""
    flags = tiny_model_flags(gpt_data_prefix, 3) + [
        "--attention-dropout", "0.1", "--hidden-dropout", "0.1", "--deterministic-mode",
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
    ]  # fmt: skip
    first, second = run_pretrain(flags).check(), run_pretrain(flags).check()
    assert "deterministic mode: torch.use_deterministic_algorithms(True)" in first.stdout + first.stderr
    assert len(first.loss_strings) == 3 and first.loss_strings == second.loss_strings
