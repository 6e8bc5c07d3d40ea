"""T5 pretraining samples: span corruption with sentinel tokens, as Megatron's T5 dataset builds them.

A sample's sentences (:mod:`megatron.data.sentence_samples`) are joined and cut to the target length (at
most ``--encoder-seq-length`` tokens). Spans of whole words are chosen (:mod:`megatron.data.masking`,
geometric lengths); each span is replaced in the encoder input by the next sentinel ``<extra_id_N>``
(``--vocab-extra-ids`` of them), and the decoder learns to write, for each span in order, its sentinel
and its tokens, then ``[EOS]``::

    encoder   a b <extra_id_0> e <extra_id_1> h
    decoder   [BOS] <extra_id_0> c d <extra_id_1> f g
    labels    <extra_id_0> c d <extra_id_1> f g [EOS]

The number of spans and masked tokens is bounded so that the decoder sequence always fits
``--decoder-seq-length``; the encoder input is never longer than the text it came from.

Item ``i`` is a dict of int64 arrays: ``text_enc`` and ``text_dec`` (padded with [PAD]), ``labels``,
``loss_mask`` (1 on the real decoder positions), ``enc_mask`` and ``dec_mask`` (1 for real tokens) and
``truncated``.
"""

from __future__ import annotations

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.masking import MaskedSpan, Vocabulary, choose_spans
from megatron.data.sentence_samples import SentenceSampleDataset


class T5Dataset(SentenceSampleDataset):
    kind = "t5"

    def __init__(
        self,
        name: str,
        indexed_dataset: MMapIndexedDataset,
        documents: range,
        num_samples: int,
        encoder_seq_length: int,
        decoder_seq_length: int,
        mask_prob: float,
        short_seq_prob: float,
        tokenizer,
        seed: int,
        cache_dir: str | None = None,
    ) -> None:
        self.encoder_seq_length = encoder_seq_length
        self.decoder_seq_length = decoder_seq_length
        self.mask_prob = mask_prob
        self.max_predictions = max(1, int(mask_prob * encoder_seq_length))
        self.vocab = Vocabulary.of(tokenizer)
        self.sentinels = list(tokenizer.additional_special_tokens_ids)
        if not self.sentinels:
            raise ValueError("T5 needs sentinel tokens: build the tokenizer with vocab_extra_ids > 0")
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad
        super().__init__(
            name,
            indexed_dataset,
            documents,
            num_samples,
            encoder_seq_length,
            short_seq_prob,
            1,
            seed,
            cache_dir,
        )

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        sentences, target, rng = self.sample_sentences(idx)
        tokens = np.concatenate(sentences)
        truncated = len(tokens) > target
        tokens = tokens[:target]
        spans = choose_spans(
            tokens,
            self.vocab,
            self.mask_prob,
            self.max_predictions,
            rng,
            geometric=True,
            max_spans=len(self.sentinels),
            decoder_budget=self.decoder_seq_length,
        )
        encoder, decoder_in, decoder_out = corrupt_spans(tokens, spans, self.sentinels, self.bos, self.eos)
        return {
            "text_enc": _pad(encoder, self.encoder_seq_length, self.pad),
            "text_dec": _pad(decoder_in, self.decoder_seq_length, self.pad),
            "labels": _pad(decoder_out, self.decoder_seq_length, self.pad),
            "loss_mask": _pad(np.ones(len(decoder_out), np.int64), self.decoder_seq_length, 0),
            "enc_mask": _pad(np.ones(len(encoder), np.int64), self.encoder_seq_length, 0),
            "dec_mask": _pad(np.ones(len(decoder_in), np.int64), self.decoder_seq_length, 0),
            "truncated": np.int64(truncated),
        }


def corrupt_spans(
    tokens: np.ndarray, spans: list[MaskedSpan], sentinels: list[int], bos: int, eos: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(encoder input, decoder input, decoder labels) for ``spans`` in sequence order."""
    encoder: list[int] = []
    targets: list[int] = []
    position = 0
    for sentinel, span in zip(sentinels, spans):
        encoder += tokens[position : span.positions[0]].tolist()
        encoder.append(sentinel)
        targets += [sentinel, *span.labels]
        position = span.positions[-1] + 1
    encoder += tokens[position:].tolist()
    return (
        np.asarray(encoder, dtype=np.int64),
        np.asarray([bos, *targets], dtype=np.int64),
        np.asarray([*targets, eos], dtype=np.int64),
    )


def _pad(values: np.ndarray, length: int, pad: int) -> np.ndarray:
    if len(values) > length:
        raise ValueError(f"{len(values)} tokens do not fit {length}")
    out = np.full(length, pad, dtype=np.int64)
    out[: len(values)] = values
    return out
