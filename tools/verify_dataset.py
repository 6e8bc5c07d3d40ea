"""Check preprocessed ``.bin``/``.idx`` pairs: the checks training runs, from the command line.

    python tools/verify_dataset.py data/kjv_text_document --tokenizer-type GPT2BPETokenizer \\
        --vocab-file data/tokenizer/gpt2-bpe/vocab.json --merge-file data/tokenizer/gpt2-bpe/merges.txt --full

Without a vocabulary only the structure is checked (index against itself and the ``.bin``'s size). With
``--vocab-size N`` (ids 0..N-1) or the tokenizer flags of the training run, the dtype must hold the ids, and
``--full`` reads every token and checks it is one of them. Prints one line per problem; exit status 0 when
every pair is sound, 1 otherwise (2 for bad flags).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.errors import ConfigError  # noqa: E402
from megatron.data.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402
from megatron.data.verify import find_problems  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefixes", nargs="+", metavar="PREFIX", help="dataset prefix, without .bin/.idx")
    parser.add_argument("--full", action="store_true", help="also check every token (reads the .bin)")
    group = parser.add_argument_group("vocabulary (either)")
    group.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="ids 0..N-1 are valid; with --tokenizer-type NullTokenizer, Megatron's meaning (eod is N)",
    )
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None)
    group.add_argument("--vocab-file", default=None)
    group.add_argument("--merge-file", default=None)
    group.add_argument("--tokenizer-model", default=None)
    group.add_argument("--vocab-extra-ids", type=int, default=0)
    return parser.parse_args(argv)


def vocabulary_size(args: argparse.Namespace) -> int | None:
    """The number of valid ids: the tokenizer's, ``--vocab-size`` alone, or None (structure only)."""
    if args.tokenizer_type is None:
        if args.vocab_size is not None and args.vocab_size < 1:
            raise ConfigError(f"--vocab-size {args.vocab_size}: must be at least 1.")
        return args.vocab_size
    tokenizer = build_tokenizer(
        args.tokenizer_type,
        args.vocab_file,
        args.merge_file,
        args.tokenizer_model,
        args.vocab_extra_ids,
        args.vocab_size,
    )
    return tokenizer.vocab_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    vocab_size = vocabulary_size(args)
    if args.full and vocab_size is None:
        raise ConfigError("--full checks token ids: give --vocab-size N or the tokenizer flags.")
    failed = False
    for prefix in args.prefixes:
        problems = find_problems(prefix, vocab_size, args.full)
        for problem in problems:
            print(problem)
        if not problems:
            print(f"{prefix}: ok")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"verify_dataset.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
