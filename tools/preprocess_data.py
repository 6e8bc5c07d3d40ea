"""Tokenize a JSON-lines corpus into Megatron's mmap indexed dataset (``PREFIX_{key}_document.bin/.idx``).

    python tools/preprocess_data.py --input data/corpus/kjv.jsonl --output-prefix data/kjv \\
        --tokenizer-type GPT2BPETokenizer --vocab-file data/tokenizer/gpt2-bpe/vocab.json \\
        --merge-file data/tokenizer/gpt2-bpe/merges.txt --append-eod --workers 4

For a LLaMA-style SentencePiece model use ``--tokenizer-type Llama2Tokenizer`` (each document starts with
``<s>``) or ``GPTSentencePieceTokenizer`` (no ``<s>``) with ``--tokenizer-model tokenizer.model``; with
``--append-eod`` both end each document with ``</s>``.

Each line of the input is one JSON object and becomes one document. Training then takes
``--data-path data/kjv_text_document``. With ``--split-sentences`` (BERT and T5 data) each sentence of a
document is one item and the document index marks where documents end, as in Megatron; the output is then
``PREFIX_{key}_sentence.bin/.idx`` (sentences found by :mod:`megatron.data.sentence_split`). Lines are
tokenized by a pool of workers but written in input order, so the output is the same for any ``--workers``.
Empty documents are skipped, as in Megatron; an input without any document is an error. The outputs appear
only when complete, replacing the previous ones (``megatron.data.staged_output``); a failed or killed run
leaves those untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import signal
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from megatron.config.errors import ConfigError  # noqa: E402
from megatron.data.indexed_dataset import best_fitting_dtype  # noqa: E402
from megatron.data.jsonl_input import check_input, numbered_lines  # noqa: E402
from megatron.data.sentence_split import split_sentences  # noqa: E402
from megatron.data.staged_output import StagedDataset  # noqa: E402
from megatron.data.tokenizer import TOKENIZER_TYPES, Tokenizer, build_tokenizer  # noqa: E402

logger = logging.getLogger("tools.preprocess_data")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_argument_group("input")
    group.add_argument("--input", required=True, help="JSON-lines file, .jsonl or .jsonl.gz")
    group.add_argument(
        "--json-keys", nargs="+", default=["text"], help="keys to tokenize; one output per key"
    )
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument(
        "--vocab-file", default=None, help="GPT2BPETokenizer: vocab.json; BertWordPiece*: vocab.txt"
    )
    group.add_argument("--merge-file", default=None, help="GPT2BPETokenizer: merges.txt")
    group.add_argument(
        "--tokenizer-model",
        default=None,
        help="HFTokenizer: tokenizer.json or its folder; SentencePiece types: the .model file",
    )
    group.add_argument(
        "--vocab-size", type=int, default=None, help="NullTokenizer: ids in the data are 0..N-1 (eod is N)"
    )
    group.add_argument("--append-eod", action="store_true", help="end every document with the eod token")
    group.add_argument(
        "--vocab-extra-ids",
        type=int,
        default=0,
        help="BertWordPiece*, SentencePieceTokenizer: sentinel tokens to add (T5)",
    )
    group = parser.add_argument_group("documents")
    group.add_argument(
        "--split-sentences",
        action="store_true",
        help="one item per sentence (BERT, T5), written as PREFIX_{key}_sentence; documents end in the index",
    )
    group = parser.add_argument_group("output")
    group.add_argument("--output-prefix", required=True, help="outputs are PREFIX_{key}_document.bin/.idx")
    group.add_argument("--dataset-impl", default="mmap", choices=["mmap"])
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    group.add_argument("--chunk-size", type=int, default=64, help="lines handed to a worker at a time")
    group.add_argument("--log-interval", type=int, default=1000, help="documents between progress lines")
    args = parser.parse_args(argv)
    for flag in ("workers", "chunk_size", "log_interval"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name} {getattr(args, flag)} must be at least 1.")
    return args


class _Encoder:
    """Per-process state: the tokenizer is built once per worker, not pickled with every line."""

    tokenizer: Tokenizer
    args: argparse.Namespace

    @classmethod
    def setup(cls, args: argparse.Namespace) -> None:
        cls.args = args
        cls.tokenizer = build_tokenizer(
            args.tokenizer_type,
            args.vocab_file,
            args.merge_file,
            args.tokenizer_model,
            args.vocab_extra_ids,
            args.vocab_size,
        )

    @classmethod
    def encode(cls, numbered_line: tuple[int, str]) -> tuple[dict[str, list[np.ndarray]], int]:
        """One input line -> the items per key (the document, or its sentences; none for empty text), plus
        its size in bytes."""
        lineno, line = numbered_line
        args = cls.args
        if not line.strip():
            return {key: [] for key in args.json_keys}, len(line)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--input {args.input!r} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                'each line must hold one JSON object such as {"text": "..."}.'
            ) from None
        if not isinstance(record, dict):
            raise ConfigError(
                f"--input {args.input!r} line {lineno} holds a JSON {type(record).__name__}, not an object; "
                'each line must hold one JSON object such as {"text": "..."}.'
            )
        out = {}
        for key in args.json_keys:
            if key not in record:
                raise ConfigError(
                    f"--json-keys {key!r} is missing from --input {args.input!r} line {lineno} (keys there: "
                    f"{sorted(record)}); pass the key that holds the text."
                )
            text = record[key]
            if not isinstance(text, str):
                raise ConfigError(
                    f"--json-keys {key!r} in --input {args.input!r} line {lineno} is a "
                    f"{type(text).__name__}, not a string; pass the key that holds the text."
                )
            pieces = split_sentences(text) if args.split_sentences else [text]
            # Empty text is dropped before tokenizing, as Llama2Tokenizer would turn even "" into [bos].
            items = [ids for ids in map(cls.tokenizer.tokenize, filter(None, pieces)) if ids]
            if items and args.append_eod:
                items[-1].append(cls.tokenizer.eod)
            out[key] = [np.asarray(ids, dtype=np.int64) for ids in items]
        return out, len(line)


def output_prefix(args: argparse.Namespace, key: str) -> str:
    return f"{args.output_prefix}_{key}_{'sentence' if args.split_sentences else 'document'}"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    _Encoder.setup(args)  # in this process too: validates the tokenizer flags before any worker starts
    check_input(args.input)  # before any output file exists, so a bad --input leaves none behind
    vocab_size = _Encoder.tokenizer.vocab_size
    dtype = best_fitting_dtype(vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    # Written under staging names and renamed over the previous outputs only once complete (see
    # megatron/data/staged_output.py): a failed or killed run leaves the previous outputs as they were.
    outputs = {key: StagedDataset(output_prefix(args, key), dtype) for key in args.json_keys}
    logger.info(
        "tokenizing %s with %s (vocab %d, %s) into %s",
        args.input,
        _Encoder.tokenizer.name,
        vocab_size,
        np.dtype(dtype),
        ", ".join(output_prefix(args, k) for k in args.json_keys),
    )
    try:
        documents, lines, skipped, elapsed = _tokenize_into(args, outputs)
        for key, count in documents.items():
            if count == 0:
                raise ConfigError(
                    f"--input {args.input!r} gave no documents for --json-keys {key!r} ({lines} lines, all "
                    "empty or with empty text); nothing to train on: check the file and the key."
                )
        for output in outputs.values():
            output.commit()
    except BaseException:
        for output in outputs.values():
            output.discard()
        raise
    logger.info(
        "done: %d lines in %.1f s, %d empty documents skipped; use --data-path %s",
        lines,
        elapsed,
        skipped,
        output_prefix(args, args.json_keys[0]),
    )


def _tokenize_into(
    args: argparse.Namespace, outputs: dict[str, StagedDataset]
) -> tuple[dict[str, int], int, int, float]:
    """Tokenize every line into the builders, in input order; returns documents written per key, lines
    read, empty documents skipped and the seconds taken."""
    start = time.time()
    documents = dict.fromkeys(outputs, 0)
    lines = skipped = total_bytes = 0
    source = numbered_lines(args.input)
    if args.workers == 1:
        results = map(_Encoder.encode, source)
        pool = None
    else:
        # spawn, not fork: the parent may already run tokenizer or torch threads, which fork would copy.
        pool = multiprocessing.get_context("spawn").Pool(args.workers, _Encoder.setup, (args,))
        results = pool.imap(_Encoder.encode, source, args.chunk_size)
    try:
        for doc, size in results:
            total_bytes += size
            for key, items in doc.items():
                if not items:
                    skipped += 1
                    continue
                for ids in items:
                    outputs[key].builder.add_item(ids)
                outputs[key].builder.end_document()
                documents[key] += 1
            lines += 1
            if lines % args.log_interval == 0:
                elapsed = max(time.time() - start, 1e-9)
                logger.info(
                    "processed %d documents (%.0f docs/s, %.2f MB/s)",
                    lines,
                    lines / elapsed,
                    total_bytes / elapsed / 1e6,
                )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return documents, lines, skipped, time.time() - start


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's kill, ``timeout``) unwinds like Ctrl-C, so the staging files are removed."""
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        main()
    except ConfigError as exc:  # the message says what to fix; a traceback would only bury it
        sys.exit(f"preprocess_data.py: error: {exc}")
