"""Train a GPT-2 style byte-level BPE tokenizer and write it as GPT-2's ``vocab.json`` + ``merges.txt``.

The bundled tokenizer under ``data/tokenizer/gpt2-bpe`` was made with the defaults:

    python tools/train_tokenizer.py --input data/corpus/kjv.jsonl --output-dir data/tokenizer/gpt2-bpe

The files follow GPT-2's layout rather than the trainer's own: ``<|endoftext|>`` is the last id (as 50256 is
in GPT-2) and ``merges.txt`` starts with the ``#version`` line, so ``GPT2BPETokenizer`` and
``transformers.GPT2Tokenizer`` both load them unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
from collections.abc import Iterator

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from megatron.config.errors import ConfigError  # noqa: E402
from megatron.data.tokenizer import GPT2_EOD_TOKEN  # noqa: E402

logger = logging.getLogger("tools.train_tokenizer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, nargs="+", help="JSON-lines file(s), .jsonl or .jsonl.gz")
    parser.add_argument("--json-key", default="text", help="the key holding each document's text")
    parser.add_argument("--output-dir", required=True, help="where vocab.json and merges.txt are written")
    parser.add_argument("--vocab-size", type=int, default=8192, help="entries including <|endoftext|>")
    parser.add_argument("--min-frequency", type=int, default=2, help="a pair seen fewer times is not merged")
    args = parser.parse_args(argv)
    if args.vocab_size <= 257:
        raise ConfigError(
            f"--vocab-size {args.vocab_size} leaves no room for merges: the 256 byte symbols and "
            "<|endoftext|> already take 257 entries; pass a larger value such as 8192."
        )
    return args


def iter_texts(paths: list[str], key: str) -> Iterator[str]:
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            f = opener(path, "rt", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"--input {path!r} cannot be read ({exc.strerror}); pass a .jsonl file."
            ) from exc
        with f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)[key]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ConfigError(
                        f"--input {path!r} line {lineno} is not a JSON object with a {key!r} key ({exc}); "
                        "fix the line or pass the right --json-key."
                    ) from exc


def train(texts: Iterator[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train byte-level BPE; <|endoftext|> is appended afterwards so it gets the last id, as in GPT-2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        # All 256 bytes from the start, so that any text (emoji, CJK) can be encoded, never mapped to unk.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def write_gpt2_files(tokenizer: Tokenizer, output_dir: str) -> tuple[str, str]:
    """Write vocab.json (ids ordered, eod last) and merges.txt with GPT-2's '#version' header."""
    state = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(state["vocab"].items(), key=lambda item: item[1]))
    vocab[GPT2_EOD_TOKEN] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    os.makedirs(output_dir, exist_ok=True)
    vocab_path = os.path.join(output_dir, "vocab.json")
    merges_path = os.path.join(output_dir, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("".join(m + "\n" for m in merges))
    return vocab_path, merges_path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    tokenizer = train(iter_texts(args.input, args.json_key), args.vocab_size, args.min_frequency)
    vocab_path, merges_path = write_gpt2_files(tokenizer, args.output_dir)
    size = tokenizer.get_vocab_size() + 1
    logger.info(
        "wrote %s and %s: %d entries, %s = %d", vocab_path, merges_path, size, GPT2_EOD_TOKEN, size - 1
    )


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # the message says what to fix; a traceback would only bury it
        sys.exit(f"train_tokenizer.py: error: {exc}")
