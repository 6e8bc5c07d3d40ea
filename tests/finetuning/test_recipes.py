"""Megatron-DeepSpeed's BERT finetuning recipes (examples_deepspeed/bert_with_pile/ds_finetune_bert_*.sh),
run as users launch them, on small generated files in the published formats with a tiny model (fp32 on
the CPU), from the pretrained checkpoint of the other tests."""

from __future__ import annotations

import math

import pytest

from tests.finetuning.task_files import (
    MNLI_DEV_HEADER,
    generated_mnli,
    generated_race,
    write_mnli,
    write_qqp,
    write_race,
)
from tests.launch import LOSS_PATTERN, run_example

SMALL = {"NUM_LAYERS": "2", "HIDDEN_SIZE": "64", "NUM_ATTN_HEADS": "4", "SEQ_LEN": "32",
         "MAX_POSITION_EMBEDDINGS": "64", "BATCH_SIZE": "4", "GLOBAL_BATCH_SIZE": "8", "LR": "1e-3",
         "EPOCHS": "1", "PRECISION": "fp32", "LOG_INTERVAL": "1", "NUM_WORKERS": "0"}  # fmt: skip


def run_recipe(script: str, pretrained, tmp_path, **variables: str) -> str:
    paths = {"PRETRAINED_CHECKPOINT": str(pretrained.checkpoint), "CHECKPOINT_PATH": str(tmp_path / "ckpt")}
    return run_example(f"bert_with_pile/{script}", {**SMALL, **paths, **variables}, timeout=600).stdout


def check_trained(stdout: str, iterations: int, sets: list[str]) -> None:
    losses = {int(it): float(loss) for it, loss in LOSS_PATTERN.findall(stdout)}
    assert sorted(losses) == list(range(1, iterations + 1)) and all(map(math.isfinite, losses.values()))
    for name in sets:
        assert f"metrics for {name} at iteration {iterations}, epoch 1.00" in stdout, name


@pytest.mark.slow
def test_mnli_recipe(pretrained_bert, tmp_path):
    write_mnli(tmp_path / "train.tsv", generated_mnli(32, seed=0))
    write_mnli(tmp_path / "dev_matched.tsv", generated_mnli(9, seed=1), MNLI_DEV_HEADER)
    write_mnli(tmp_path / "dev_mismatched.tsv", generated_mnli(6, seed=2), MNLI_DEV_HEADER)
    stdout = run_recipe("ds_finetune_bert_mnli.sh", pretrained_bert, tmp_path, DATA_DIR=str(tmp_path))
    assert "ZeRO stage 1" in stdout and "language model loaded" in stdout
    check_trained(stdout, 4, ["dev_matched.tsv", "dev_mismatched.tsv", "overall"])


@pytest.mark.slow
def test_qqp_recipe(pretrained_bert, tmp_path):
    rows = [
        (first, second, int(label == "entailment")) for first, second, label in generated_mnli(40, seed=0)
    ]
    write_qqp(tmp_path / "train.tsv", rows[:32])
    write_qqp(tmp_path / "dev.tsv", rows[32:])
    stdout = run_recipe("ds_finetune_bert_qqp.sh", pretrained_bert, tmp_path, DATA_DIR=str(tmp_path))
    check_trained(stdout, 4, ["dev.tsv"])


@pytest.mark.slow
def test_race_recipe(pretrained_bert, tmp_path):
    for split, count in (("train", 16), ("dev", 3), ("test", 2)):
        write_race(tmp_path / "RACE" / split / "high", generated_race(count, seed=len(split)))
    stdout = run_recipe(
        "ds_finetune_bert_race.sh", pretrained_bert, tmp_path, DATA_DIR=str(tmp_path / "RACE"),
        DIFFICULTY="high", ZERO_STAGE="2",
    )  # fmt: skip
    assert "ZeRO stage 2" in stdout
    check_trained(stdout, 4, ["dev/high", "test/high", "overall"])
