"""BERT inputs of the task examples, and the order in which training reads them over the epochs.

A pair becomes ``[CLS] A [SEP] B [SEP]`` with token types 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``,
padded to ``--seq-length`` with a padding mask, as Megatron-LM builds GLUE samples: when the pair is too
long, the longer text loses its last token until it fits. A RACE choice is the pair (question and answer,
article), the question and answer capped at 128 tokens first and the article cut at its end, as in
Megatron-LM's RACE; a RACE sample stacks its four choices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from megatron.config.errors import ConfigError
from megatron.finetuning.readers import RACE_MAX_QA_TOKENS, Example


def encode_pair(
    first: Sequence[int], second: Sequence[int], seq_length: int, cls: int, sep: int, pad: int
) -> dict[str, np.ndarray]:
    """``text``, ``types`` and ``padding_mask`` of ``[CLS] first [SEP] second [SEP]``, padded (the pair is
    already cut to fit)."""
    tokens = [cls, *first, sep, *second, sep]
    types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
    if len(tokens) > seq_length:
        raise ValueError(f"{len(tokens)} tokens do not fit --seq-length {seq_length}")
    padding = seq_length - len(tokens)
    return {
        "text": np.array(tokens + [pad] * padding, dtype=np.int64),
        "types": np.array(types + [0] * padding, dtype=np.int64),
        "padding_mask": np.array([1] * len(tokens) + [0] * padding, dtype=np.int64),
    }


def truncate_longest_first(first: list[int], second: list[int], room: int) -> tuple[list[int], list[int]]:
    """Drop the last token of the longer text (the second on a tie) until both fit in ``room`` tokens."""
    first, second = list(first), list(second)
    while len(first) + len(second) > room:
        (first if len(first) > len(second) else second).pop()
    return first, second


def truncate_context(
    question_answer: list[int], context: list[int], room: int
) -> tuple[list[int], list[int]]:
    """RACE's rule: the question and answer capped at 128 tokens, the article cut at its end to fit."""
    question_answer = question_answer[: min(RACE_MAX_QA_TOKENS, room)]
    return question_answer, context[: room - len(question_answer)]


class PairDataset(Dataset):
    """GLUE sentence pairs (MNLI, QQP) as BERT samples with a ``label``; tokenized once, padded on read."""

    def __init__(self, name: str, examples: list[Example], tokenizer, seq_length: int):
        self.name = name
        self.seq_length = seq_length
        self.tokenizer = tokenizer
        self.labels = [example.label for example in examples]
        self.pairs = [
            truncate_longest_first(
                tokenizer.tokenize(example.texts[0]), tokenizer.tokenize(example.texts[1]), seq_length - 3
            )
            for example in examples
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        tokenizer = self.tokenizer
        sample = encode_pair(*self.pairs[index], self.seq_length, tokenizer.cls, tokenizer.sep, tokenizer.pad)
        sample["label"] = np.array(self.labels[index], dtype=np.int64)
        return sample


class MultipleChoiceDataset(Dataset):
    """RACE questions as BERT samples: ``text``, ``types`` and ``padding_mask`` of shape [choices, seq]."""

    def __init__(self, name: str, examples: list[Example], tokenizer, seq_length: int):
        self.name = name
        self.seq_length = seq_length
        self.tokenizer = tokenizer
        self.labels = [example.label for example in examples]
        self.choices = []
        for example in examples:
            context = tokenizer.tokenize(example.texts[0])
            self.choices.append(
                [
                    truncate_context(tokenizer.tokenize(qa), context, seq_length - 3)
                    for qa in example.texts[1:]
                ]
            )

    def __len__(self) -> int:
        return len(self.choices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        tokenizer = self.tokenizer
        encoded = [
            encode_pair(qa, context, self.seq_length, tokenizer.cls, tokenizer.sep, tokenizer.pad)
            for qa, context in self.choices[index]
        ]
        sample = {key: np.stack([choice[key] for choice in encoded]) for key in encoded[0]}
        sample["label"] = np.array(self.labels[index], dtype=np.int64)
        return sample


class EpochOrder(Dataset):
    """The training samples of ``epochs`` epochs in the order they are read: epoch ``e`` is a permutation
    of the dataset drawn from ``seed + e``, as Megatron-LM reshuffles each epoch.

    Without ``keep_last`` each epoch reads whole global batches only, leaving out the samples its
    permutation puts last (Megatron-LM's default drop of the last incomplete batch). With it every sample
    of every epoch is read: a global batch may then end one epoch and begin the next, and the last one is
    completed from the start of the next permutation, since the engine's global batch is fixed. Sample
    ``i`` depends only on ``i``, so the position is one number, the consumed samples that checkpoints save.
    """

    def __init__(self, dataset: Dataset, epochs: int, global_batch_size: int, seed: int, keep_last: bool):
        size = len(dataset)
        self.dataset, self.seed = dataset, seed
        self.size = size
        self.per_epoch = size if keep_last else size // global_batch_size * global_batch_size
        if self.per_epoch == 0:
            raise ConfigError(
                f"--train-data has {size} samples, fewer than --global-batch-size {global_batch_size}: no "
                "whole batch in an epoch. Use a smaller --global-batch-size, or --keep-last."
            )
        self.iterations = math.ceil(epochs * self.per_epoch / global_batch_size)
        self.length = self.iterations * global_batch_size

    def __len__(self) -> int:
        return self.length

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one dataset per run; two epochs meet in a batch)
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.RandomState(self.seed + epoch).permutation(self.size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(index, self.per_epoch)
        return self.dataset[int(self.permutation(epoch)[position])]

    def epoch_ends(self, consumed_before: int, consumed_after: int) -> bool:
        """Whether an epoch ended within the samples ``consumed_before`` to ``consumed_after``."""
        return consumed_after // self.per_epoch > consumed_before // self.per_epoch
