"""Choosing the tokens BERT and T5 learn to predict, with Megatron's rules.

Masking works on whole words (a WordPiece ``##`` continuation stays with the word it continues) and on
n-grams of words: BERT draws n from 1..3 with probability proportional to 1/n, T5 from a geometric
distribution (p = 0.2) capped at 10, so T5's spans are longer. ``mask_prob`` of the sample's tokens are
chosen (at least one), never a special token. BERT then replaces each chosen token by ``[MASK]`` 80% of
the time, keeps it 10% and puts a random token 10%; T5 replaces each span by one sentinel (done in
:mod:`megatron.data.t5_dataset` from the spans returned here).

Every draw comes from the ``numpy.random.RandomState`` passed in, which datasets seed per sample, so a
sample is the same whatever worker or rank builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron.data.bert_tokenizer import BERT_SPECIAL_TOKENS, BOS_TOKEN, EOS_TOKEN

BERT_MAX_NGRAMS = 3
T5_MAX_NGRAMS = 10
T5_GEOMETRIC_P = 0.2
SPECIAL_TOKENS = frozenset((*BERT_SPECIAL_TOKENS, BOS_TOKEN, EOS_TOKEN))


@dataclass(frozen=True)
class Vocabulary:
    """What masking needs to know of the tokenizer, as arrays indexed by token id."""

    mask_id: int
    special: np.ndarray  # bool: never masked ([CLS], [SEP], [PAD], ...)
    continuation: np.ndarray  # bool: a "##" piece, part of the word before it
    replacement_ids: np.ndarray  # ids a BERT "random token" is drawn from

    @classmethod
    def of(cls, tokenizer) -> Vocabulary:
        """From a :class:`megatron.data.bert_tokenizer.BertWordPieceTokenizer`."""
        size = tokenizer.vocab_size
        special = np.zeros(size, dtype=bool)
        continuation = np.zeros(size, dtype=bool)
        ordinary = []
        for token, index in tokenizer.vocab.items():
            if token in SPECIAL_TOKENS or token.startswith("<extra_id_"):
                special[index] = True
            else:
                ordinary.append(index)
                continuation[index] = token.startswith("##")
        return cls(tokenizer.mask, special, continuation, np.asarray(sorted(ordinary), dtype=np.int64))


@dataclass(frozen=True)
class MaskedSpan:
    """Consecutive chosen positions from one n-gram, and the tokens that were there."""

    positions: tuple[int, ...]
    labels: tuple[int, ...]


def whole_words(tokens: np.ndarray, vocab: Vocabulary) -> list[list[int]]:
    """Positions of the sample grouped into words; special tokens belong to none."""
    words: list[list[int]] = []
    for position, token in enumerate(tokens):
        if vocab.special[token]:
            continue
        if words and vocab.continuation[token] and words[-1][-1] == position - 1:
            words[-1].append(position)
        else:
            words.append([position])
    return words


def choose_spans(
    tokens: np.ndarray,
    vocab: Vocabulary,
    mask_prob: float,
    max_predictions: int,
    rng: np.random.RandomState,
    geometric: bool = False,
    max_spans: int | None = None,
    decoder_budget: int | None = None,
) -> list[MaskedSpan]:
    """The spans to predict, in sequence order.

    ``max_spans`` and ``decoder_budget`` bound T5's targets: at most that many spans (one sentinel each),
    and ``1 + masked tokens + spans`` (the decoder's [BOS] or [EOS], the tokens, the sentinels) at most the
    budget, so a sample always fits the decoder.
    """
    words = whole_words(tokens, vocab)
    if not words:
        return []
    max_ngrams = T5_MAX_NGRAMS if geometric else BERT_MAX_NGRAMS
    to_predict = min(max_predictions, max(1, int(round(len(tokens) * mask_prob))))
    weights = 1.0 / np.arange(1, max_ngrams + 1)
    order = np.arange(len(words))
    rng.shuffle(order)
    covered: set[int] = set()
    spans: list[MaskedSpan] = []
    masked = 0
    for start in order:
        if masked >= to_predict or (max_spans is not None and len(spans) >= max_spans):
            break
        available = min(max_ngrams, len(words) - start)
        if geometric:
            n = min(int(rng.geometric(T5_GEOMETRIC_P)), available)
        else:
            n = int(rng.choice(available, p=weights[:available] / weights[:available].sum())) + 1
        positions = [p for word in words[start : start + n] for p in word]
        # Shorten the n-gram until it fits what is left to predict (and the decoder); else skip this start.
        while n > 1 and not _fits(masked, len(positions), len(spans), to_predict, decoder_budget):
            n -= 1
            positions = [p for word in words[start : start + n] for p in word]
        if not _fits(masked, len(positions), len(spans), to_predict, decoder_budget):
            continue
        if covered.intersection(positions):
            continue
        covered.update(positions)
        masked += len(positions)
        spans.append(MaskedSpan(tuple(positions), tuple(int(tokens[p]) for p in positions)))
    return sorted(spans, key=lambda span: span.positions[0])


def _fits(masked: int, adding: int, spans: int, to_predict: int, decoder_budget: int | None) -> bool:
    if masked + adding > to_predict:
        return False
    return decoder_budget is None or 1 + masked + adding + spans + 1 <= decoder_budget


def apply_bert_masking(
    tokens: np.ndarray, spans: list[MaskedSpan], vocab: Vocabulary, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input tokens, predicted positions, their original tokens): each chosen token becomes [MASK] (80%),
    stays (10%) or becomes a random ordinary token (10%)."""
    output = np.array(tokens, dtype=np.int64, copy=True)
    positions = np.asarray([p for span in spans for p in span.positions], dtype=np.int64)
    labels = np.asarray([t for span in spans for t in span.labels], dtype=np.int64)
    for position in positions:
        if rng.random_sample() < 0.8:
            output[position] = vocab.mask_id
        elif rng.random_sample() >= 0.5:
            output[position] = vocab.replacement_ids[rng.randint(len(vocab.replacement_ids))]
    return output, positions, labels
