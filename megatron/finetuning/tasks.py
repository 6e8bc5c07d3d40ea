"""The finetuning tasks of Megatron-LM's ``tasks/main.py`` (MNLI, QQP, RACE): their flags, readers, datasets
and heads, and reading the files the flags name, with every error raised before any process starts."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import ConcatDataset, Dataset

from megatron.config.errors import ConfigError
from megatron.finetuning.readers import (
    MNLI_LABELS,
    QQP_LABELS,
    RACE_CHOICES,
    Example,
    read_mnli,
    read_qqp,
    read_race,
)
from megatron.finetuning.samples import MultipleChoiceDataset, PairDataset


@dataclass(frozen=True)
class Task:
    reader: Callable[[str], list[Example]]
    dataset: type
    num_classes: int
    multiple_choice: bool = False


TASKS = {
    "MNLI": Task(read_mnli, PairDataset, len(MNLI_LABELS)),
    "QQP": Task(read_qqp, PairDataset, len(QQP_LABELS)),
    "RACE": Task(read_race, MultipleChoiceDataset, RACE_CHOICES, multiple_choice=True),
}
FINETUNE_TASKS = tuple(TASKS)
# The finetuning flags, by their argparse dest, and what a zero-shot task does with them: nothing.
FINETUNE_FLAGS = {
    "train_data": "--train-data",
    "epochs": "--epochs",
    "pretrained_checkpoint": "--pretrained-checkpoint",
    "keep_last": "--keep-last",
}


def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("finetuning (Megatron's tasks/main.py: MNLI, QQP, RACE)")
    group.add_argument(
        "--train-data", nargs="+", default=None,
        help="the training files (MNLI, QQP: train.tsv) or folders (RACE: RACE/train/middle ...), read "
        "together",
    )  # fmt: skip
    group.add_argument(
        "--epochs", type=int, default=None,
        help="passes over --train-data; the iterations follow from its size and --global-batch-size. "
        "0: evaluate only",
    )  # fmt: skip
    group.add_argument(
        "--pretrained-checkpoint", default=None,
        help="a pretrain_bert.py checkpoint folder (any tensor/pipeline layout): its language model starts "
        "the finetuning; its masked-LM and sentence-order heads are dropped",
    )  # fmt: skip
    group.add_argument(
        "--keep-last", action="store_true",
        help="train on every sample of every epoch, the last incomplete global batch included (completed "
        "from the next epoch's order); without it each epoch drops it",
    )  # fmt: skip


def set_name(path: str) -> str:
    """A validation set's name in the log: the file name (``dev_matched.tsv``), or for a folder its last
    two parts (``dev/middle``)."""
    path = os.path.normpath(path)
    if os.path.isdir(path):
        return "/".join(path.split(os.sep)[-2:])
    return os.path.basename(path)


def read_set(task: Task, path: str, flag: str, tokenizer, seq_length: int) -> Dataset:
    """One file or folder as the task's dataset; every example must have its label."""
    try:
        examples = task.reader(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{flag} {path}: {error}") from None
    if not examples:
        raise ConfigError(f"{flag} {path}: no example in it; give the task's data as published.")
    if any(example.label is None for example in examples):
        raise ConfigError(
            f"{flag} {path} has no labels (a GLUE test file): training and accuracy need them; give "
            "train.tsv / dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv)."
        )
    return task.dataset(set_name(path), examples, tokenizer, seq_length)


def read_train_set(task: Task, paths: list[str], tokenizer, seq_length: int) -> Dataset:
    sets = [read_set(task, path, "--train-data", tokenizer, seq_length) for path in paths]
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def read_valid_sets(task: Task, paths: list[str], tokenizer, seq_length: int) -> list[Dataset]:
    return [read_set(task, path, "--valid-data", tokenizer, seq_length) for path in paths]
