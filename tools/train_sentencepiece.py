"""Train a LLaMA-style SentencePiece model (BPE with byte fallback) on JSON-lines documents, for
``--tokenizer-type GPTSentencePieceTokenizer | Llama2Tokenizer --tokenizer-model PREFIX.model``.

    python tools/train_sentencepiece.py --input data/corpus/kjv.jsonl --model-prefix data/processed/llama-sp
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Iterator

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.data.sentencepiece_tokenizer import train_llama_style  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, nargs="+", help="JSON-lines file(s), .jsonl or .jsonl.gz")
    parser.add_argument("--json-key", default="text", help="the key holding each document's text")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=8000, help="pieces, <unk> <s> </s> included")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="trainer threads")
    return parser.parse_args(argv)


def lines_of(paths: list[str], key: str) -> Iterator[str]:
    """Every non-empty line of every document (SentencePiece trains on sentences, not whole documents)."""
    for path in paths:
        with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as source:
            for record in source:
                yield from (line for line in json.loads(record)[key].split("\n") if line)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
    model = train_llama_style(
        lines_of(args.input, args.json_key), args.model_prefix, args.vocab_size, args.workers
    )
    print(f"wrote {model}; use --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model {model}")
    return model


if __name__ == "__main__":
    main()
