"""--train-data-path / --valid-data-path / --test-data-path: a blend per split in place of --data-path and
--split, as Megatron-DeepSpeed takes them."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import build
from tests.config.test_masked_lm_config import build as build_masked_lm


def test_a_blend_per_split(tmp_path):
    data = build(
        tmp_path,
        {"--data-path": None, "--train-data-path": ["3", "a", "1", "b"], "--valid-data-path": "v"},
    ).data
    assert data.data_path == ()
    assert data.split_paths == (((0.75, "a"), (0.25, "b")), ((1.0, "v"),), None)
    assert data.blends() == {"--train-data-path": data.train_data_path, "--valid-data-path": ((1.0, "v"),)}


def test_data_path_keeps_its_split(tmp_path):
    data = build(tmp_path).data
    assert data.split_paths is None and data.split == "949,50,1"
    assert data.blends() == {"--data-path": ((1.0, "/data/pile_text_document"),)}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"--train-data-path": "a"}, "--data-path with --train-data-path: .* Use one way or the other"),
        ({"--data-path": None}, r"missing required flag --data-path \(or --train-data-path\)\. "),
        (
            {"--data-path": None, "--valid-data-path": "v", "--test-data-path": "t"},
            r"--valid-data-path, --test-data-path alone has nothing to train on",
        ),
        ({"--data-path": None, "--train-data-path": ["1", "a", "b"]}, "--train-data-path has 3 values"),
        (
            {"--data-path": None, "--train-data-path": "a", "--valid-data-path": []},
            "--valid-data-path was given",
        ),
    ],
)
def test_bad_split_paths_are_refused(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, changes)


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_bert_and_t5_take_data_path_and_split(tmp_path, model_type):
    with pytest.raises(ConfigError, match=f"--train-data-path is not used by pretrain_{model_type}.py"):
        build_masked_lm(tmp_path, model_type, {"--data-path": None, "--train-data-path": "a"})
