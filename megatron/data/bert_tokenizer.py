"""BERT's WordPiece tokenizer from a ``vocab.txt`` (``--tokenizer-type BertWordPieceLowerCase|...Case``).

The text pipeline is HF ``tokenizers``' BERT pipeline (BertNormalizer, BertPreTokenizer, WordPiece with
``[UNK]`` and 100 characters per word at most), configured as ``transformers.BertTokenizer`` configures it,
so the ids are the same as that tokenizer's on the same vocabulary (tested). The special tokens found in the
vocabulary (``[PAD] [UNK] [CLS] [SEP] [MASK]``) are registered as special tokens there too, so a literal
``[MASK]`` in a text becomes the mask id in both.

On top, as Megatron's ``BertWordPieceTokenizer`` does: ``[BOS]`` and ``[EOS]`` get ids after the vocabulary
when it lacks them (the T5 decoder starts with one and ends with the other), and ``--vocab-extra-ids N`` adds
the sentinels ``<extra_id_0> .. <extra_id_{N-1}>`` after those. These extra ids never come out of
``tokenize``: a text that spells one is split like any other text, so BERT's ids stay those of the vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFRustTokenizer

from megatron.config.errors import ConfigError

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BOS_TOKEN, EOS_TOKEN = "[BOS]", "[EOS]"
BERT_TOKENIZER_TYPES = ("BertWordPieceLowerCase", "BertWordPieceCase")


def sentinel_token(index: int) -> str:
    return f"<extra_id_{index}>"


def read_vocab_file(path: str) -> dict[str, int]:
    """``vocab.txt``: one token per line, the id is the line number (as BERT and transformers read it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except OSError as exc:
        raise ConfigError(
            f"--vocab-file {path!r} cannot be read ({exc.strerror}); pass a BERT vocab.txt, e.g. "
            "data/tokenizer/bert-wordpiece/vocab.txt."
        ) from exc
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab.setdefault(token.rstrip("\r"), index)
    missing = [token for token in BERT_SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ConfigError(
            f"--vocab-file {path!r} lacks {', '.join(missing)}: it is not a BERT WordPiece vocab.txt "
            "(one token per line, with [PAD] [UNK] [CLS] [SEP] [MASK]). "
            "tools/train_wordpiece.py writes one."
        )
    return vocab


class BertWordPieceTokenizer:
    """Megatron's BertWordPiece tokenizers: ``lower_case`` picks ``...LowerCase`` (which also strips accents,
    as BERT's uncased models do) or ``...Case``."""

    def __init__(self, vocab_file: str, lower_case: bool, vocab_extra_ids: int = 0) -> None:
        if vocab_extra_ids < 0:
            raise ConfigError(f"--vocab-extra-ids {vocab_extra_ids}: must be >= 0.")
        self.name = BERT_TOKENIZER_TYPES[0 if lower_case else 1]
        self.vocab_file = os.path.abspath(vocab_file)
        self.lower_case = lower_case
        vocab = read_vocab_file(vocab_file)
        tokenizer = HFRustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        tokenizer.add_special_tokens([AddedToken(token, special=True) for token in BERT_SPECIAL_TOKENS])
        self._tokenizer = tokenizer
        self.vocab = dict(vocab)
        for token in (BOS_TOKEN, EOS_TOKEN, *(sentinel_token(i) for i in range(vocab_extra_ids))):
            self.vocab.setdefault(token, max(self.vocab.values()) + 1)
        self.inv_vocab = {index: token for token, index in self.vocab.items()}
        self._base_size = max(vocab.values()) + 1
        self.additional_special_tokens_ids = [self.vocab[sentinel_token(i)] for i in range(vocab_extra_ids)]

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    @property
    def cls(self) -> int:
        return self.vocab["[CLS]"]

    @property
    def sep(self) -> int:
        return self.vocab["[SEP]"]

    @property
    def pad(self) -> int:
        return self.vocab["[PAD]"]

    @property
    def mask(self) -> int:
        return self.vocab["[MASK]"]

    @property
    def bos_token_id(self) -> int:
        return self.vocab[BOS_TOKEN]

    @property
    def eos_token_id(self) -> int:
        return self.vocab[EOS_TOKEN]

    @property
    def eod(self) -> int:
        """Megatron's BERT tokenizer ends documents with ``[SEP]`` (used only with ``--append-eod``)."""
        return self.sep

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Iterable[int]) -> str:
        return " ".join(self.convert_ids_to_tokens(ids)).replace(" ##", "")

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.inv_vocab.get(int(i), "[UNK]") for i in ids]

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, vocab_file={self.vocab_file!r})"
