"""tasks/main.py finetuning end to end on CPU, from a pretrain_bert.py checkpoint: a generated MNLI-format
task learned past its majority class, RACE multiple choice, a run resumed mid-epoch giving the losses of
the uninterrupted run, --epochs 0 on the finetuned checkpoint, ZeRO 2 on two ranks against one process,
and the errors raised before anything starts."""

from __future__ import annotations

import re

import pytest

from megatron.config.errors import ConfigError
from tasks.main import main as tasks_main
from tests.finetuning.conftest import MODEL_FLAGS, TOKENIZER_FLAGS
from tests.finetuning.task_files import (
    MNLI_DEV_HEADER,
    MNLI_TEST_HEADER,
    generated_mnli,
    generated_race,
    write_mnli,
    write_race,
)
from tests.launch import run_pretrain, write_ds_config

ACCURACY = re.compile(r"metrics for (\S+) at iteration (\d+)[^:]*: correct / total = (\d+) / (\d+) =")
EPOCHS = 2
ITERATIONS = 60  # 240 samples an epoch, 30 global batches of 8


def accuracies(stdout: str) -> dict[tuple[str, int], tuple[int, int]]:
    return {(name, int(it)): (int(right), int(total)) for name, it, right, total in ACCURACY.findall(stdout)}


@pytest.fixture(scope="module")
def mnli(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnli")
    write_mnli(folder / "train.tsv", generated_mnli(240, seed=0))
    write_mnli(folder / "dev_matched.tsv", generated_mnli(60, seed=1), MNLI_DEV_HEADER)
    write_mnli(folder / "dev_mismatched.tsv", generated_mnli(30, seed=2), MNLI_DEV_HEADER)
    return folder


def finetune_flags(task_dir, pretrained, tmp_path, zero_stage: int = 0, micro_batch: int = 4) -> list[str]:
    ds_config = write_ds_config(tmp_path / "ds.json", zero_stage, train_micro_batch_size_per_gpu=micro_batch)
    return [
        "--task", "MNLI", "--train-data", str(task_dir / "train.tsv"),
        "--valid-data", str(task_dir / "dev_matched.tsv"), str(task_dir / "dev_mismatched.tsv"),
        "--epochs", str(EPOCHS), "--pretrained-checkpoint", str(pretrained.checkpoint), *MODEL_FLAGS,
        "--micro-batch-size", str(micro_batch), "--global-batch-size", "8", "--lr", "3e-3",
        "--lr-warmup-fraction", "0.1", "--lr-decay-style", "linear", "--weight-decay", "0.01",
        *TOKENIZER_FLAGS, "--log-interval", "1", "--eval-interval", "1000", "--num-workers", "0",
        "--seed", "1234", "--deepspeed", "--deepspeed_config", str(ds_config),
    ]  # fmt: skip


def run_tasks(flags: list[str], nproc: int = 1):
    launcher = "python" if nproc == 1 else "torchrun"
    return run_pretrain(flags, nproc=nproc, launcher=launcher, script="tasks/main.py").check()


@pytest.fixture(scope="module")
def straight(mnli, pretrained_bert, tmp_path_factory):
    """Two epochs uninterrupted (dropout on), saved at the end."""
    tmp_path = tmp_path_factory.mktemp("straight")
    flags = finetune_flags(mnli, pretrained_bert, tmp_path) + ["--save", str(tmp_path / "ckpt")]
    return run_tasks(flags), tmp_path / "ckpt"


def test_finetuned_classifier_beats_the_majority_class(straight):
    result, _ = straight
    assert (
        "finetuning MNLI: 240 training samples, 2 epoch(s) of 240 samples -> 60 iterations of 8"
        in result.stdout
    )
    assert "language model loaded; dropped: binary_head, lm_head" in result.stdout
    assert sorted(result.losses) == list(range(1, ITERATIONS + 1))
    found = accuracies(result.stdout)
    # Evaluated at the end of every epoch, each set apart and together.
    assert set(found) == {
        (name, it) for name in ("dev_matched.tsv", "dev_mismatched.tsv", "overall") for it in (30, 60)
    }
    right, total = found[("overall", ITERATIONS)]
    assert total == 90 and found[("dev_matched.tsv", ITERATIONS)][1] == 60
    majority = 1 / 3  # the generated sets are balanced over the three labels
    assert right / total > majority + 0.2, result.stdout[-3000:]
    print(f"accuracy on the generated task after {EPOCHS} epochs: {right}/{total} = {right / total:.3f}")


def test_resumed_mid_epoch_gives_the_losses_of_the_uninterrupted_run(
    straight, mnli, pretrained_bert, tmp_path
):
    reference, _ = straight
    flags = finetune_flags(mnli, pretrained_bert, tmp_path) + ["--save", str(tmp_path / "ckpt")]
    first = run_tasks(flags + ["--exit-interval", "45"])  # half-way through the second epoch
    assert sorted(first.losses) == list(range(1, 46))
    resumed = run_tasks(flags + ["--load", str(tmp_path / "ckpt")])
    assert sorted(resumed.losses) == list(range(46, ITERATIONS + 1))
    for iteration, loss in {**first.loss_strings, **resumed.loss_strings}.items():
        assert loss == reference.loss_strings[iteration], iteration
    assert (
        accuracies(resumed.stdout)[("overall", ITERATIONS)]
        == accuracies(reference.stdout)[("overall", ITERATIONS)]
    )


def test_zero_epochs_evaluates_the_loaded_checkpoint(straight, mnli, pretrained_bert, tmp_path):
    reference, checkpoint = straight
    flags = finetune_flags(mnli, pretrained_bert, tmp_path) + ["--load", str(checkpoint)]
    flags[flags.index("--epochs") + 1] = "0"
    result = run_tasks(flags)
    assert not result.losses
    found = accuracies(result.stdout)
    assert found[("overall", ITERATIONS)] == accuracies(reference.stdout)[("overall", ITERATIONS)]


def test_race_multiple_choice_end_to_end(pretrained_bert, tmp_path):
    train = write_race(tmp_path / "RACE" / "train" / "middle", generated_race(24, seed=0))
    dev = write_race(tmp_path / "RACE" / "dev" / "middle", generated_race(6, seed=1))
    test = write_race(tmp_path / "RACE" / "test" / "middle", generated_race(4, seed=2))
    flags = finetune_flags(tmp_path, pretrained_bert, tmp_path)
    flags[flags.index("--task") + 1] = "RACE"
    start = flags.index("--train-data")
    flags[start : start + 5] = ["--train-data", str(train), "--valid-data", str(dev), str(test)]
    flags[flags.index("--epochs") + 1] = "2"
    result = run_tasks(flags + ["--keep-last"])
    # 48 questions a epoch, every one kept: 96 samples, 12 global batches of 8.
    assert "48 training samples, 2 epoch(s) of 48 samples -> 12 iterations of 8" in result.stdout
    assert sorted(result.losses) == list(range(1, 13))
    found = accuracies(result.stdout)
    assert {name for name, _ in found} == {"dev/middle", "test/middle", "overall"}
    assert found[("dev/middle", 12)][1] == 12 and found[("test/middle", 12)][1] == 8


NO_DROPOUT = ["--attention-dropout", "0", "--hidden-dropout", "0"]


def one_epoch(flags: list[str]) -> list[str]:
    flags = flags + NO_DROPOUT
    flags[flags.index("--epochs") + 1] = "1"
    return flags


@pytest.fixture(scope="module")
def one_process(mnli, pretrained_bert, tmp_path_factory):
    """One epoch with dropout off, one process accumulating two micro batches of 4."""
    return run_tasks(one_epoch(finetune_flags(mnli, pretrained_bert, tmp_path_factory.mktemp("one"))))


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, zero_stage, extra, expected",
    [
        ("ZeRO 2", 2, [], "data-parallel size: 2, gradient accumulation steps: 1, ZeRO stage 2"),
        ("T=2", 1, ["--tensor-model-parallel-size", "2"], "tensor-parallel 2, pipeline 1"),
    ],
    ids=["zero2-data-parallel", "tensor-parallel"],
)
def test_two_ranks_equal_one_process(
    one_process, mnli, pretrained_bert, tmp_path, layout, zero_stage, extra, expected
):
    """Data parallel under ZeRO 2 (no accumulation), and the model split over two tensor-parallel ranks
    (the pretrained checkpoint split at load, its vocabulary padded for T=2), against one process."""
    result = run_tasks(
        one_epoch(finetune_flags(mnli, pretrained_bert, tmp_path, zero_stage)) + extra, nproc=2
    )
    assert expected in result.stdout
    assert sorted(result.losses) == sorted(one_process.losses) == list(range(1, 31))
    for iteration, loss in one_process.losses.items():
        assert result.losses[iteration] == pytest.approx(loss, rel=1e-5, abs=1e-6), (layout, iteration)
    assert accuracies(result.stdout) == accuracies(one_process.stdout)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.remove("--epochs") or f.remove(str(EPOCHS)), "--epochs None: finetuning needs"),
        (lambda f: f.extend(["--train-iters", "5"]), "--train-iters / --train-samples with --task"),
        (lambda f: f.extend(["--data-path", "corpus"]), "--data-path with --task MNLI"),
        (lambda f: f.extend(["--pipeline-model-parallel-size", "2"]), "finetuning runs tensor and data"),
        (lambda f: f.extend(["--valid-data", "test_matched.tsv"]), "has no labels"),
    ],
    ids=["no-epochs", "train-iters", "data-path", "pipeline", "unlabeled"],
)
def test_bad_finetuning_flags_are_refused_before_start(
    mnli, pretrained_bert, tmp_path, monkeypatch, change, message
):
    write_mnli(tmp_path / "test_matched.tsv", generated_mnli(3, seed=3), MNLI_TEST_HEADER)
    monkeypatch.chdir(tmp_path)
    flags = finetune_flags(mnli, pretrained_bert, tmp_path)
    change(flags)
    if "--pipeline-model-parallel-size" in flags:
        monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=message):
        tasks_main(flags)
