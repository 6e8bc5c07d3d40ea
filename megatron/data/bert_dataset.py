"""BERT pretraining samples: ``[CLS] A [SEP] B [SEP]`` with masked tokens and a sentence-order target.

From a sample's sentences (:mod:`megatron.data.sentence_samples`), as Megatron builds them: the sentences
are cut at a random point into segment A and segment B; with probability 0.5 the two are swapped and the
sentence-order target (``is_random``) is 1, else 0. The pair is trimmed to the sample's target length, a
token at a time from the front or the back of the longer segment (at random), so that the whole sample
always fits ``--seq-length``. Without the binary head (``--bert-no-binary-head``) a sample is
``[CLS] A [SEP]`` with all its sentences. Tokens are then masked (:mod:`megatron.data.masking`) and the
sample padded to ``--seq-length``.

Item ``i`` is a dict of int64 arrays: ``text`` (input ids), ``types`` (0 for [CLS] A [SEP], 1 for B [SEP],
0 for padding), ``labels`` (the original token where one is predicted, else 0), ``loss_mask`` (1 where one
is predicted), ``padding_mask`` (1 for real tokens), ``is_random`` (the sentence-order target) and
``truncated``.
"""

from __future__ import annotations

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.masking import Vocabulary, apply_bert_masking, choose_spans
from megatron.data.sentence_samples import SentenceSampleDataset


def special_tokens_count(binary_head: bool) -> int:
    return 3 if binary_head else 2


class BertDataset(SentenceSampleDataset):
    def __init__(
        self,
        name: str,
        indexed_dataset: MMapIndexedDataset,
        documents: range,
        num_samples: int,
        seq_length: int,
        mask_prob: float,
        short_seq_prob: float,
        binary_head: bool,
        tokenizer,
        seed: int,
        cache_dir: str | None = None,
    ) -> None:
        # The cache name: samples with and without the sentence pair are cut differently.
        self.kind = "bert" if binary_head else "bert_single"
        self.seq_length = seq_length
        self.mask_prob = mask_prob
        self.binary_head = binary_head
        self.max_tokens = seq_length - special_tokens_count(binary_head)
        # Megatron's cap on predictions per sample: the mask share of the longest sample.
        self.max_predictions = max(1, int(mask_prob * self.max_tokens))
        self.vocab = Vocabulary.of(tokenizer)
        self.cls, self.sep, self.pad = tokenizer.cls, tokenizer.sep, tokenizer.pad
        super().__init__(
            name,
            indexed_dataset,
            documents,
            num_samples,
            self.max_tokens,
            short_seq_prob,
            2 if binary_head else 1,
            seed,
            cache_dir,
        )

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        sentences, target, rng = self.sample_sentences(idx)
        if self.binary_head:
            split = int(rng.randint(1, len(sentences)))
            first, second = np.concatenate(sentences[:split]), np.concatenate(sentences[split:])
            is_random = rng.random_sample() < 0.5
            if is_random:
                first, second = second, first
        else:
            first, second, is_random = np.concatenate(sentences), np.empty(0, np.int64), False
        first, second, truncated = truncate_pair(first, second, target, rng)
        tokens = np.concatenate(([self.cls], first, [self.sep], second, [self.sep] if len(second) else []))
        tokens = tokens.astype(np.int64)
        types = np.zeros(len(tokens), dtype=np.int64)
        types[len(first) + 2 :] = 1
        spans = choose_spans(tokens, self.vocab, self.mask_prob, self.max_predictions, rng)
        masked, positions, labels = apply_bert_masking(tokens, spans, self.vocab, rng)
        return self._padded(masked, types, positions, labels, int(is_random), truncated)

    def _padded(
        self,
        tokens: np.ndarray,
        types: np.ndarray,
        positions: np.ndarray,
        labels: np.ndarray,
        is_random: int,
        truncated: bool,
    ) -> dict[str, np.ndarray]:
        length = self.seq_length
        text = np.full(length, self.pad, dtype=np.int64)
        text[: len(tokens)] = tokens
        padded_types = np.zeros(length, dtype=np.int64)
        padded_types[: len(types)] = types
        padding_mask = np.zeros(length, dtype=np.int64)
        padding_mask[: len(tokens)] = 1
        padded_labels = np.zeros(length, dtype=np.int64)
        padded_labels[positions] = labels
        loss_mask = np.zeros(length, dtype=np.int64)
        loss_mask[positions] = 1
        return {
            "text": text,
            "types": padded_types,
            "labels": padded_labels,
            "loss_mask": loss_mask,
            "padding_mask": padding_mask,
            "is_random": np.int64(is_random),
            "truncated": np.int64(truncated),
        }


def truncate_pair(
    first: np.ndarray, second: np.ndarray, max_tokens: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Drop tokens from the longer segment, from its front or back at random, until the pair fits."""
    if len(first) + len(second) <= max_tokens:
        return first, second, False
    segments = [[0, len(first)], [0, len(second)]]  # [start, stop) kept of each
    while sum(stop - start for start, stop in segments) > max_tokens:
        sizes = [stop - start for start, stop in segments]
        longer = segments[0] if sizes[0] > sizes[1] else segments[1]
        if rng.random_sample() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return first[segments[0][0] : segments[0][1]], second[segments[1][0] : segments[1][1]], True
