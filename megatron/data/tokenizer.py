"""Text <-> token ids, behind one small interface that the data pipeline and the model both rely on.

The tokenizers wrap well-kept libraries rather than re-implementing them, so ids match the reference
implementations exactly and preprocessing is fast: HF ``tokenizers`` (Rust) for GPT-2's BPE, BERT's WordPiece
and any ``tokenizer.json``, and ``sentencepiece`` for ``.model`` files (:mod:`.sentencepiece_tokenizer`).
The wrapper only adds what Megatron needs on top: the unpadded ``vocab_size`` (the model pads it), the
end-of-document id ``eod`` that separates documents in the token stream, and errors that name the flag to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Protocol

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFRustTokenizer

from megatron.config.errors import ConfigError
from megatron.data.bert_tokenizer import BERT_TOKENIZER_TYPES, BertWordPieceTokenizer
from megatron.data.sentencepiece_tokenizer import SENTENCEPIECE_TOKENIZER_TYPES, build_sentencepiece_tokenizer

GPT2_EOD_TOKEN = "<|endoftext|>"
TOKENIZER_TYPES = (
    "GPT2BPETokenizer",
    "HFTokenizer",
    *BERT_TOKENIZER_TYPES,
    *SENTENCEPIECE_TOKENIZER_TYPES,
    "NullTokenizer",
)


class Tokenizer(Protocol):
    """What the rest of the code may rely on; anything else is an implementation detail."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eod(self) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Iterable[int]) -> str: ...


class _RustBacked:
    """Shared plumbing: both tokenizers are a configured ``tokenizers.Tokenizer`` plus an eod id."""

    name = "base"

    def __init__(self, tokenizer: HFRustTokenizer, eod: int, add_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._eod = eod
        self._add_special_tokens = add_special_tokens

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        return self._eod

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=self._add_special_tokens).ids

    def detokenize(self, ids: Iterable[int]) -> str:
        # Special tokens are kept so that a decoded sample shows where documents were joined.
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod={self.eod})"


class GPT2BPETokenizer(_RustBacked):
    """GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt``.

    Configured to reproduce ``transformers.GPT2Tokenizer``: GPT-2's pre-tokenization regex, no prefix space,
    and ``<|endoftext|>`` registered as a special token, so that literal text ``<|endoftext|>`` inside a
    document becomes the eod id, just as it does there.
    """

    name = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        vocab = _read_json(vocab_file, "--vocab-file", "a GPT-2 vocab.json")
        merges = _read_merges(merge_file)
        if GPT2_EOD_TOKEN not in vocab:
            raise ConfigError(
                f"--vocab-file {vocab_file!r} has no {GPT2_EOD_TOKEN!r} entry, which GPT2BPETokenizer uses "
                "as the end-of-document id; use a GPT-2 style vocab.json (tools/train_tokenizer.py writes "
                "one)."
            )
        try:
            model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
        except Exception as exc:  # the Rust side reports merges whose parts are missing from the vocab
            raise ConfigError(
                f"--vocab-file {vocab_file!r} and --merge-file {merge_file!r} do not fit together ({exc}); "
                "pass the vocab.json and merges.txt written together by one tokenizer training run."
            ) from exc
        tokenizer = HFRustTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([AddedToken(GPT2_EOD_TOKEN, special=True, normalized=False)])
        super().__init__(tokenizer, vocab[GPT2_EOD_TOKEN], add_special_tokens=False)


class HFTokenizer(_RustBacked):
    """Any tokenizer saved by HF ``tokenizers`` / ``transformers`` as ``tokenizer.json``: GPT-2 style
    byte-level BPE, or LLaMA style (a SentencePiece BPE converted by transformers, with byte fallback and
    ``<s>`` / ``</s>``), whose ``</s>`` is then ``eod``.

    Encoding applies the tokenizer's own post-processor (for example a Llama BOS), as Megatron's HF wrapper
    does, because that is how such tokenizers expect to see each document.
    """

    name = "HFTokenizer"

    def __init__(self, tokenizer_model: str) -> None:
        path = tokenizer_model
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise ConfigError(
                f"--tokenizer-model {tokenizer_model!r}: no tokenizer.json found there; pass a "
                "tokenizer.json file or a folder that contains one (as saved by tokenizers or transformers)."
            )
        try:
            tokenizer = HFRustTokenizer.from_file(path)
        except Exception as exc:
            raise ConfigError(
                f"--tokenizer-model {path!r} could not be read as a tokenizers JSON file ({exc}); pass a "
                "tokenizer.json saved by tokenizers or transformers."
            ) from exc
        super().__init__(tokenizer, _find_eod(tokenizer, path), add_special_tokens=True)


class NullTokenizer:
    """Megatron's tokenizer for text that already is token ids, written as space-separated integers.

    ``--vocab-size N`` names the ids the data may hold (0 .. N-1); one more id, N, is the end of a document,
    so ``vocab_size`` is N + 1, as in Megatron.
    """

    name = "NullTokenizer"

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise ConfigError(
                f"--vocab-size {vocab_size}: NullTokenizer needs the number of token ids in the data (>= 1)."
            )
        self._eod = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._eod + 1

    @property
    def eod(self) -> int:
        return self._eod

    def tokenize(self, text: str) -> list[int]:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            raise ConfigError(
                f"NullTokenizer reads each text as space-separated integer token ids; got {text[:60]!r}. "
                "Write the ids as integers, or pick the --tokenizer-type that fits the text."
            ) from None
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ConfigError(
                f"NullTokenizer: token id {out_of_range[0]} is outside 0..{self.vocab_size - 1} "
                f"(--vocab-size {self._eod} plus the eod id); raise --vocab-size to cover the data."
            )
        return ids

    def detokenize(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod={self.eod})"


def build_tokenizer(
    tokenizer_type: str,
    vocab_file: str | None,
    merge_file: str | None,
    tokenizer_model: str | None = None,
    vocab_extra_ids: int = 0,
    vocab_size: int | None = None,
) -> Tokenizer:
    """Build the tokenizer named by ``--tokenizer-type`` from the files its flags point to.

    ``vocab_extra_ids`` (T5's sentinels) applies to the BERT WordPiece tokenizers and SentencePieceTokenizer,
    ``vocab_size`` to NullTokenizer only: the others take their size from their files.
    """
    if vocab_size is not None and tokenizer_type != "NullTokenizer":
        raise ConfigError(
            f"--vocab-size {vocab_size} with --tokenizer-type {tokenizer_type}: only NullTokenizer reads it, "
            "the other tokenizers take the size from their files; drop --vocab-size."
        )
    if tokenizer_type in SENTENCEPIECE_TOKENIZER_TYPES:
        return build_sentencepiece_tokenizer(tokenizer_type, tokenizer_model, vocab_extra_ids)
    if tokenizer_type in BERT_TOKENIZER_TYPES:
        if not vocab_file:
            raise ConfigError(
                f"--vocab-file is required with --tokenizer-type {tokenizer_type}; pass a BERT vocab.txt, "
                "e.g. data/tokenizer/bert-wordpiece/vocab.txt."
            )
        lower_case = tokenizer_type == "BertWordPieceLowerCase"
        return BertWordPieceTokenizer(vocab_file, lower_case, vocab_extra_ids)
    if vocab_extra_ids:
        raise ConfigError(
            f"--vocab-extra-ids {vocab_extra_ids} with --tokenizer-type {tokenizer_type}: sentinel tokens "
            "are added to the BERT WordPiece tokenizers and SentencePieceTokenizer only; use one of those."
        )
    if tokenizer_type == "NullTokenizer":
        if vocab_size is None:
            raise ConfigError(
                "--vocab-size is required with --tokenizer-type NullTokenizer (got None); pass the number of "
                "token ids the data holds (the largest id + 1)."
            )
        return NullTokenizer(vocab_size)
    if tokenizer_type == "GPT2BPETokenizer":
        if not vocab_file or not merge_file:
            missing = "--vocab-file" if not vocab_file else "--merge-file"
            raise ConfigError(
                f"{missing} is required with --tokenizer-type GPT2BPETokenizer (got "
                f"vocab_file={vocab_file!r}, merge_file={merge_file!r}); pass the vocab.json and merges.txt "
                "of the tokenizer, e.g. "
                "data/tokenizer/gpt2-bpe/vocab.json and data/tokenizer/gpt2-bpe/merges.txt."
            )
        return GPT2BPETokenizer(vocab_file, merge_file)
    if tokenizer_type == "HFTokenizer":
        if not tokenizer_model:
            raise ConfigError(
                "--tokenizer-model is required with --tokenizer-type HFTokenizer (got None); pass a "
                "tokenizer.json file or a folder that contains one."
            )
        return HFTokenizer(tokenizer_model)
    raise ConfigError(
        f"--tokenizer-type {tokenizer_type!r} is not supported; choose one of {', '.join(TOKENIZER_TYPES)}."
    )


def _read_json(path: str, flag: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path!r} cannot be read ({exc.strerror}); pass the path of {what}."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {path!r} is not valid JSON ({exc}); pass the path of {what}.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path!r} holds a {type(data).__name__}, not a JSON object; pass {what}.")
    return data


def _read_merges(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise ConfigError(
            f"--merge-file {path!r} cannot be read ({exc.strerror}); pass the path of a GPT-2 merges.txt."
        ) from exc
    merges = []
    for lineno, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ConfigError(
                f"--merge-file {path!r} line {lineno} is {line!r}, not two space-separated symbols; pass a "
                "GPT-2 merges.txt (a '#version' header line, then one merge per line)."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _find_eod(tokenizer: HFRustTokenizer, path: str) -> int:
    """The end-of-document id: GPT's ``<|endoftext|>`` first, then ``</s>``, then the declared eos token."""
    candidates = [GPT2_EOD_TOKEN, "</s>"]
    config_eos = _eos_from_tokenizer_config(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
    if config_eos:
        candidates.append(config_eos)
    candidates += ["<eos>", "<|end_of_text|>"]
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ConfigError(
        f"--tokenizer-model {path!r} has no end-of-document token (looked for {', '.join(candidates)}); add "
        "one of these to the tokenizer, or set eos_token in a tokenizer_config.json next to tokenizer.json."
    )


def _eos_from_tokenizer_config(path: str) -> str | None:
    """transformers keeps the eos designation in tokenizer_config.json, not in tokenizer.json."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None
