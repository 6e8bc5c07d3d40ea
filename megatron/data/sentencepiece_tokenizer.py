"""SentencePiece ``.model`` tokenizers under Megatron's three names (``--tokenizer-model FILE.model``).

The pieces and their ids always come from the ``sentencepiece`` package itself, so ids are those of
``SentencePieceProcessor.encode`` on the same model. Megatron gives one model three behaviours, and recipes
depend on which name they use, so each is kept as Megatron defines it:

- ``GPTSentencePieceTokenizer``: the model as it is. ``vocab_size`` is its piece count, ``eod`` its eos id
  (``</s>``), and ``tokenize`` adds nothing, so ``--append-eod`` is what separates documents.
- ``Llama2Tokenizer``: the same vocabulary and ``eod``, but ``tokenize`` starts every text with the bos id
  (``<s>``), as Llama 2 was trained for text completion.
- ``SentencePieceTokenizer``: the model's pieces followed by Megatron's own special tokens ``<CLS> <SEP>
  <EOD> <MASK>``, the pad/bos/eos pieces (``<PAD> <BOS> <EOS>`` when the model has none) and the
  ``--vocab-extra-ids`` sentinels, each given the next id unless the model already has that piece. ``eod`` is
  ``<EOD>``, and a special token spelled out in a text becomes its id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from sentencepiece import SentencePieceProcessor

from megatron.config.errors import ConfigError
from megatron.data.bert_tokenizer import sentinel_token

SENTENCEPIECE_TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")


def load_sentencepiece(model_file: str) -> SentencePieceProcessor:
    """The processor of ``--tokenizer-model``, or an error that says what to pass instead."""
    if os.path.isdir(model_file):
        inside = os.path.join(model_file, "tokenizer.model")
        hint = f"pass {inside!r}" if os.path.isfile(inside) else "pass the .model file itself"
        raise ConfigError(f"--tokenizer-model {model_file!r} is a folder; {hint}.")
    if not os.path.isfile(model_file):
        raise ConfigError(
            f"--tokenizer-model {model_file!r} does not exist; pass a SentencePiece .model file (such as "
            "LLaMA's tokenizer.model)."
        )
    try:
        return SentencePieceProcessor(model_file=model_file)
    except RuntimeError as exc:
        raise ConfigError(
            f"--tokenizer-model {model_file!r} is not a SentencePiece model ({exc}); pass a .model file "
            "written by sentencepiece's trainer, or use --tokenizer-type HFTokenizer for a tokenizer.json."
        ) from exc


def _require(piece_id: int, what: str, model_file: str, tokenizer_type: str, fix: str) -> int:
    """SentencePiece reports a piece the model was trained without as id -1, which would silently become
    the last embedding row; refuse it instead."""
    if piece_id < 0:
        raise ConfigError(
            f"--tokenizer-model {model_file!r} has no {what} piece, which --tokenizer-type {tokenizer_type} "
            f"needs; {fix}."
        )
    return piece_id


class GPTSentencePieceTokenizer:
    """The model as it is: ids exactly as ``SentencePieceProcessor.encode``, eos as the end of a document."""

    name = "GPTSentencePieceTokenizer"

    def __init__(self, model_file: str) -> None:
        self.model_file = os.path.abspath(model_file)
        self._sp = load_sentencepiece(model_file)
        _require(
            self._sp.eos_id(),
            "eos (end-of-document)",
            model_file,
            self.name,
            "train the model with an eos piece (eos_id >= 0), or use SentencePieceTokenizer (it adds <EOD>)",
        )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self._sp.eos_id()

    @property
    def bos(self) -> int:
        return self._sp.bos_id()

    @property
    def eos(self) -> int:
        return self._sp.eos_id()

    @property
    def pad(self) -> int:
        """-1 when the model has no pad piece, as SentencePiece reports it (LLaMA's has none)."""
        return self._sp.pad_id()

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod={self.eod}, model_file={self.model_file!r})"


class Llama2Tokenizer(GPTSentencePieceTokenizer):
    """Llama 2's convention: each text starts with bos; eos is left to ``--append-eod`` (it adds ``eod``)."""

    name = "Llama2Tokenizer"

    def __init__(self, model_file: str) -> None:
        super().__init__(model_file)
        _require(
            self._sp.bos_id(),
            "bos",
            model_file,
            self.name,
            "train the model with a bos piece (bos_id >= 0), or use GPTSentencePieceTokenizer (it adds none)",
        )

    def tokenize(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        return ([self.bos] if bos else []) + self._sp.encode(text) + ([self.eos] if eos else [])


class SentencePieceTokenizer:
    """Megatron's general SentencePiece tokenizer, with its special tokens added after the model's pieces."""

    name = "SentencePieceTokenizer"

    def __init__(self, model_file: str, vocab_extra_ids: int = 0) -> None:
        if vocab_extra_ids < 0:
            raise ConfigError(f"--vocab-extra-ids {vocab_extra_ids}: must be >= 0.")
        self.model_file = os.path.abspath(model_file)
        self._sp = sp = load_sentencepiece(model_file)
        self.vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        self._special: dict[str, int] = {}
        self.cls = self._add_special("<CLS>")
        self.sep = self._add_special("<SEP>")
        self.eod = self._add_special("<EOD>")
        self.mask = self._add_special("<MASK>")
        self.pad = self._add_special(self._piece_or(sp.pad_id(), "<PAD>"))
        self.bos = self._add_special(self._piece_or(sp.bos_id(), "<BOS>"))
        self.eos = self._add_special(self._piece_or(sp.eos_id(), "<EOS>"))
        self.additional_special_tokens_ids = [
            self._add_special(sentinel_token(i)) for i in range(vocab_extra_ids)
        ]
        self._special_by_id = {index: token for token, index in self._special.items()}
        # Longest first, so that at one position the longer of two special tokens wins.
        alternatives = sorted(self._special, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    def _piece_or(self, piece_id: int, fallback: str) -> str:
        return self._sp.id_to_piece(piece_id) if piece_id >= 0 else fallback

    def _add_special(self, token: str) -> int:
        index = self.vocab.setdefault(token, len(self.vocab))
        self._special[token] = index
        return index

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens spelled in the text become their ids; the text between them is encoded by the
        model, each stretch on its own (so each gets SentencePiece's leading space, as in Megatron)."""
        ids: list[int] = []
        for position, part in enumerate(self._special_pattern.split(text)):
            if position % 2:
                ids.append(self._special[part])
            elif part:
                ids += self._sp.encode(part)
        return ids

    def detokenize(self, ids: Iterable[int]) -> str:
        """The inverse of ``tokenize``: each stretch between special tokens is decoded on its own, which
        drops exactly the leading space its encoding added. (Megatron puts a space on both sides of every
        special token instead, which doubles spaces for models that keep whitespace, like LLaMA's.)"""
        parts: list[str] = []
        stretch: list[int] = []
        for index in map(int, ids):
            if index in self._special_by_id:
                parts += [self._sp.decode(stretch), self._special_by_id[index]]
                stretch = []
            else:
                stretch.append(index)
        parts.append(self._sp.decode(stretch))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod={self.eod}, model_file={self.model_file!r})"


def build_sentencepiece_tokenizer(
    tokenizer_type: str, tokenizer_model: str | None, vocab_extra_ids: int
) -> SentencePieceTokenizer | GPTSentencePieceTokenizer:
    """One of :data:`SENTENCEPIECE_TOKENIZER_TYPES`; ``--vocab-extra-ids`` only for SentencePieceTokenizer,
    the one Megatron adds sentinels to."""
    if not tokenizer_model:
        raise ConfigError(
            f"--tokenizer-model is required with --tokenizer-type {tokenizer_type} (got None); pass a "
            "SentencePiece .model file, such as LLaMA's tokenizer.model."
        )
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model, vocab_extra_ids)
    if vocab_extra_ids:
        raise ConfigError(
            f"--vocab-extra-ids {vocab_extra_ids} with --tokenizer-type {tokenizer_type}: this tokenizer "
            "keeps the model's vocabulary as it is; use SentencePieceTokenizer for sentinel tokens."
        )
    if tokenizer_type == "Llama2Tokenizer":
        return Llama2Tokenizer(tokenizer_model)
    return GPTSentencePieceTokenizer(tokenizer_model)


def train_llama_style(lines: Iterable[str], model_prefix: str, vocab_size: int, threads: int = 1) -> str:
    """Train a SentencePiece model with LLaMA's settings (BPE, byte fallback, digits split, text kept as
    written, ``<unk> <s> </s>`` at ids 0 1 2 and no pad) on ``lines``; returns the ``.model`` path. For the
    examples and tests, which cannot download a tokenizer."""
    from sentencepiece import SentencePieceTrainer

    SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=threads,
        minloglevel=2,
    )
    return f"{model_prefix}.model"
