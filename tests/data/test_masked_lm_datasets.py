"""BERT and T5 samples from a sentence-split corpus: masking rates, sentinels, sequence limits, structure."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from megatron.config.errors import ConfigError
from megatron.data.bert_dataset import BertDataset
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.masking import Vocabulary, choose_spans
from megatron.data.sentence_samples import build_samples_mapping
from megatron.data.t5_dataset import T5Dataset
from megatron.data.tokenizer import build_tokenizer
from tests.launch import BERT_VOCAB_FILE

SEQ_LENGTH = 64


@lru_cache(maxsize=2)
def tokenizer(extra_ids: int = 0):
    return build_tokenizer("BertWordPieceLowerCase", str(BERT_VOCAB_FILE), None, vocab_extra_ids=extra_ids)


def bert(prefix: str, tmp_path, binary_head: bool = True, **overrides) -> BertDataset:
    indexed = MMapIndexedDataset(prefix)
    settings = {"mask_prob": 0.15, "short_seq_prob": 0.1, "seq_length": SEQ_LENGTH, **overrides}
    return BertDataset(
        "train", indexed, range(0, len(indexed.doc_idx) - 1), 600, settings["seq_length"],
        settings["mask_prob"], settings["short_seq_prob"], binary_head, tokenizer(), 1234, str(tmp_path),
    )  # fmt: skip


def test_preprocessing_writes_one_item_per_sentence_and_marks_documents(sentence_data_prefix):
    indexed = MMapIndexedDataset(sentence_data_prefix)
    tok = tokenizer()
    assert sentence_data_prefix.endswith("_text_sentence")
    assert indexed.doc_idx[0] == 0 and indexed.doc_idx[-1] == len(indexed)
    assert len(indexed) > 5 * (len(indexed.doc_idx) - 1)  # chapters hold many sentences
    # Genesis 1: its heading, then "In the beginning ... earth." on its own.
    assert tok.detokenize(indexed[0]) == "genesis 1"
    assert tok.detokenize(indexed[1]) == "in the beginning god created the heaven and the earth ."


def test_bert_samples_fit_and_have_megatrons_structure(sentence_data_prefix, tmp_path):
    dataset = bert(sentence_data_prefix, tmp_path)
    tok = tokenizer()
    short = 0
    for index in range(300):
        sample = dataset[index]
        assert all(value.shape == (SEQ_LENGTH,) for key, value in sample.items() if value.ndim)
        length = int(sample["padding_mask"].sum())
        assert sample["padding_mask"][:length].all() and not sample["padding_mask"][length:].any()
        text, types = sample["text"], sample["types"]
        assert text[0] == tok.cls and (text[length:] == tok.pad).all()
        separators = np.flatnonzero(text[:length] == tok.sep)
        assert len(separators) == 2 and separators[-1] == length - 1
        # Segment A (with [CLS] and its [SEP]) has type 0, segment B (with its [SEP]) type 1, padding 0.
        assert (types[: separators[0] + 1] == 0).all() and (types[separators[0] + 1 : length] == 1).all()
        assert not types[length:].any()
        assert separators[0] >= 2 and separators[1] - separators[0] >= 2  # both segments non-empty
        assert not sample["loss_mask"][length:].any()
        assert not sample["loss_mask"][[0, *separators]].any()  # special tokens are never predicted
        short += length < SEQ_LENGTH - 8
    assert 0 < short < 150  # --short-seq-prob 0.1 plus documents' ends give some short samples, not most
    sentence_order = [int(dataset[i]["is_random"]) for i in range(300)]
    assert 0.4 < np.mean(sentence_order) < 0.6


def test_bert_masking_rates(sentence_data_prefix, tmp_path):
    """15% of the tokens are predicted; of those 80% become [MASK], 10% a random token, 10% stay."""
    dataset = bert(sentence_data_prefix, tmp_path, short_seq_prob=0.0)
    tok = tokenizer()
    ordinary = predicted = masked = kept = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        length = int(sample["padding_mask"].sum())
        ordinary += length - 3
        positions = sample["loss_mask"] == 1
        predicted += int(positions.sum())
        masked += int((sample["text"][positions] == tok.mask).sum())
        kept += int((sample["text"][positions] == sample["labels"][positions]).sum())
    assert 0.135 < predicted / ordinary <= 0.15 + 1e-9
    assert masked / predicted == pytest.approx(0.8, abs=0.02)
    assert kept / predicted == pytest.approx(0.1, abs=0.015)
    assert (predicted - masked - kept) / predicted == pytest.approx(0.1, abs=0.015)


def test_mask_prob_flag_and_whole_words():
    tok = tokenizer()
    vocab = Vocabulary.of(tok)
    tokens = np.asarray([tok.cls, *tok.tokenize("the hearkening of jehoahaz and jehoiakim " * 20), tok.sep])
    rng = np.random.RandomState(0)
    spans = choose_spans(tokens, vocab, 0.3, 1000, rng)
    chosen = sorted(p for span in spans for p in span.positions)
    # --mask-prob 0.3 of the tokens, less at most a word's pieces when the last word would overshoot.
    assert round(len(tokens) * 0.3) - 3 <= len(chosen) <= round(len(tokens) * 0.3)
    for position in chosen:  # a "##" piece is chosen only with the piece it continues
        if vocab.continuation[tokens[position]]:
            assert position - 1 in chosen


def test_bert_without_binary_head_is_one_segment(sentence_data_prefix, tmp_path):
    dataset = bert(sentence_data_prefix, tmp_path, binary_head=False)
    tok = tokenizer()
    for index in range(100):
        sample = dataset[index]
        length = int(sample["padding_mask"].sum())
        assert (sample["text"][:length] == tok.sep).sum() == 1 and sample["text"][length - 1] == tok.sep
        assert not sample["types"].any() and sample["is_random"] == 0


def test_t5_samples_use_sentinels_and_fit_both_lengths(sentence_data_prefix, tmp_path):
    tok = tokenizer(100)
    indexed = MMapIndexedDataset(sentence_data_prefix)
    encoder_length, decoder_length = 64, 20
    dataset = T5Dataset(
        "train", indexed, range(0, len(indexed.doc_idx) - 1), 300, encoder_length, decoder_length, 0.15, 0.1,
        tok, 1234, str(tmp_path),
    )  # fmt: skip
    sentinels = set(tok.additional_special_tokens_ids)
    masked = total = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["text_enc"].shape == (encoder_length,) and sample["text_dec"].shape == (decoder_length,)
        encoder = sample["text_enc"][sample["enc_mask"] == 1]
        decoder = sample["text_dec"][sample["dec_mask"] == 1]
        labels = sample["labels"][sample["loss_mask"] == 1]
        assert decoder[0] == tok.bos_token_id and labels[-1] == tok.eos_token_id
        np.testing.assert_array_equal(decoder[1:], labels[:-1])  # teacher forcing: labels shifted by one
        used = [t for t in encoder if t in sentinels]
        # Sentinels in order, each once, the same in the encoder input and the targets.
        assert used == tok.additional_special_tokens_ids[: len(used)] and len(used) >= 1
        assert [t for t in labels if t in sentinels] == used
        assert labels[0] == used[0]
        # Putting each span back where its sentinel stands restores the original text.
        spans, current = {}, None
        for token in labels[:-1]:
            if token in sentinels:
                current = spans.setdefault(int(token), [])
            else:
                current.append(int(token))
        restored = [
            t for token in encoder for t in (spans[int(token)] if token in sentinels else [int(token)])
        ]
        assert tok.pad not in restored and len(restored) <= encoder_length
        masked += sum(len(span) for span in spans.values())
        total += len(restored)
    assert 0.1 < masked / total <= 0.16


def test_samples_never_cross_documents():
    sizes = np.asarray([5, 6, 7, 3, 4, 8, 2, 9], dtype=np.int32)
    doc_idx = np.asarray([0, 3, 5, 8])
    mapping = build_samples_mapping(sizes, doc_idx, range(0, 3), 50, 12, 0.2, 2, seed=7)
    assert len(mapping) >= 50
    for start, end, target in mapping:
        document = np.searchsorted(doc_idx, start, side="right") - 1
        assert doc_idx[document] <= start < end <= doc_idx[document + 1]
        assert end - start >= 2 and 2 <= target <= 12


def test_documents_too_short_for_pairs_are_an_error_naming_the_fix():
    sizes = np.asarray([5, 6], dtype=np.int32)
    with pytest.raises(ConfigError, match="--split-sentences"):
        build_samples_mapping(sizes, np.asarray([0, 1, 2]), range(0, 2), 10, 12, 0.1, 2, seed=1)
