"""--fp8-format: what a run needs for FP8 matmuls is checked before any process group starts."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from megatron.config import float8
from megatron.config.errors import ConfigError
from megatron.config.schema import Float8Config
from tests.config.recipe import build
from tests.config.test_curriculum_config import with_curriculum


def test_fp8_format_is_off_by_default_and_read(tmp_path):
    assert build(tmp_path).fp8 is None
    assert build(tmp_path, {"--fp8-format": "hybrid"}).fp8 == Float8Config("hybrid", pad_tokens=False)
    assert build(tmp_path, {"--fp8-format": "e4m3"}).fp8.format == "e4m3"


def test_token_padding_where_a_micro_batch_may_not_align(tmp_path):
    # 4 sequences of 2044 tokens: 8176 is a multiple of 16, 4 x 2043 = 8172 is not.
    aligned = {"--fp8-format": "hybrid", "--seq-length": "2044"}
    assert not build(tmp_path, aligned).fp8.pad_tokens
    assert build(tmp_path, {**aligned, "--seq-length": "2043"}).fp8.pad_tokens
    assert build(tmp_path, {"--fp8-format": "hybrid"}, ds=with_curriculum()).fp8.pad_tokens


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"--ffn-hidden-size": "4104", "--tensor-model-parallel-size": "2"},
            r"--ffn-hidden-size 4104 / 2 tensor-parallel ranks = 2052 is not a multiple of 16.*"
            r"multiple of 32",
        ),
        (
            {"--kv-channels": "36", "--tensor-model-parallel-size": "8"},
            r"--num-attention-heads x --kv-channels 576 / 8 tensor-parallel ranks = 72",
        ),
        ({"--hidden-size": "1000", "--num-attention-heads": "8"}, r"--hidden-size 1000 is not a multiple"),
    ],
    ids=["ffn-per-rank", "attention-per-rank", "hidden"],
)
def test_features_must_align_on_every_rank(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, {"--fp8-format": "hybrid", **changes})


def test_missing_or_old_torchao_is_named(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(float8.importlib.metadata, "version", not_installed)
    with pytest.raises(ConfigError, match=r"torchao package.*pip install 'megatron-ds\[fp8\]'"):
        build(tmp_path, {"--fp8-format": "hybrid"})
    monkeypatch.setattr(float8.importlib.metadata, "version", lambda name: "0.12.0+cu126")
    with pytest.raises(ConfigError, match=r"torchao 0.12.0\+cu126 is installed.*torchao>=0.18"):
        build(tmp_path, {"--fp8-format": "hybrid"})


def test_gpu_without_fp8_tensor_cores_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"A100-SXM4-80GB \(compute capability 8.0\) has no FP8"):
        build(tmp_path, {"--fp8-format": "hybrid"})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    assert build(tmp_path, {"--fp8-format": "hybrid"}).fp8 is not None
