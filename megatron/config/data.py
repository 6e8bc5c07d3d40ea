"""The data flags: --data-path divided by --split, or a blend per split, and the tokenizer's files.

Megatron-DeepSpeed takes either ``--data-path`` (one prefix or ``w1 prefix1 w2 prefix2 ...``) that
``--split`` divides into training, validation and test documents, or ``--train-data-path``,
``--valid-data-path`` and ``--test-data-path`` (each in the same format), each read whole; the two ways
exclude each other. Whether the files exist is checked by the entry points (``check_data_prefixes``).
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError, flag_dest
from megatron.config.schema import Blend, DataConfig

_TOKENIZER_FILES = {
    "GPT2BPETokenizer": ("--vocab-file", "--merge-file"),
    "HFTokenizer": ("--tokenizer-model",),
    "BertWordPieceLowerCase": ("--vocab-file",),
    "BertWordPieceCase": ("--vocab-file",),
    "SentencePieceTokenizer": ("--tokenizer-model",),
    "GPTSentencePieceTokenizer": ("--tokenizer-model",),
    "Llama2Tokenizer": ("--tokenizer-model",),
    "NullTokenizer": ("--vocab-size",),
}
_SPLIT_PATH_FLAGS = ("--train-data-path", "--valid-data-path", "--test-data-path")


def data_config(args: argparse.Namespace, needs_corpus: bool = True) -> DataConfig:
    for flag in _TOKENIZER_FILES[args.tokenizer_type]:
        if getattr(args, flag_dest(flag)) is None:
            needed = " and ".join(_TOKENIZER_FILES[args.tokenizer_type])
            raise ConfigError(f"--tokenizer-type {args.tokenizer_type} needs {needed}; {flag} is missing.")
    if args.data_impl != "mmap":
        raise ConfigError(
            f"--data-impl {args.data_impl} is not supported; only mmap (.bin/.idx indexed datasets) is. "
            "Convert the data to mmap or drop the flag."
        )
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers {args.num_workers}: must be >= 0.")
    _check_split(args.split)
    split_paths = _split_paths(args, needs_corpus)
    return DataConfig(
        data_path=parse_data_path(args.data_path) if args.data_path is not None else (),
        split=args.split,
        tokenizer_type=args.tokenizer_type,
        vocab_file=args.vocab_file,
        merge_file=args.merge_file,
        tokenizer_model=args.tokenizer_model,
        data_impl="mmap",
        eod_mask_loss=args.eod_mask_loss,
        num_workers=args.num_workers,
        data_cache_path=args.data_cache_path,
        verify_data=args.verify_data,
        **split_paths,
    )


def _split_paths(args: argparse.Namespace, needs_corpus: bool) -> dict[str, Blend]:
    """Megatron-DeepSpeed's --train-data-path, --valid-data-path and --test-data-path: a blend per split
    instead of --data-path divided by --split (the two ways exclude each other)."""
    given = {flag: getattr(args, flag_dest(flag)) for flag in _SPLIT_PATH_FLAGS}
    given = {flag: values for flag, values in given.items() if values is not None}
    if args.data_path is not None and given:
        raise ConfigError(
            f"--data-path with {', '.join(given)}: --data-path is divided by --split into training, "
            "validation and test data, the per-split flags give each split its own. Use one way or the other."
        )
    if needs_corpus and args.data_path is None and "--train-data-path" not in given:
        others = f" ({', '.join(given)} alone has nothing to train on)" if given else ""
        raise ConfigError(
            f"missing required flag --data-path (or --train-data-path){others}. Add the training data."
        )
    return {flag_dest(flag): parse_data_path(values, flag) for flag, values in given.items()}


def parse_data_path(values: list[str], flag: str = "--data-path") -> Blend:
    """Megatron's --data-path (and its per-split forms, named by ``flag``): one prefix, or ``w1 prefix1 w2
    prefix2 ...``, with weights normalised to sum to 1. Whether the files exist is the data layer's
    concern."""
    if not values:
        raise ConfigError(f"{flag} was given no value; give a dataset prefix or 'weight prefix' pairs.")
    if len(values) == 1:
        return ((1.0, values[0]),)
    if len(values) % 2:
        raise ConfigError(
            f"{flag} has {len(values)} values: with several datasets it takes 'weight prefix' pairs, so "
            "the count must be even."
        )
    pairs = []
    for raw_weight, prefix in zip(values[::2], values[1::2]):
        try:
            weight = float(raw_weight)
        except ValueError:
            raise ConfigError(
                f"{flag} weight {raw_weight!r} (before {prefix!r}) is not a number; give 'weight prefix' "
                "pairs."
            ) from None
        if not weight > 0 or weight == float("inf"):
            raise ConfigError(f"{flag} weight {raw_weight} (before {prefix!r}) must be a positive number.")
        pairs.append((weight, prefix))
    total = sum(weight for weight, _ in pairs)
    return tuple((weight / total, prefix) for weight, prefix in pairs)


def _check_split(split: str) -> None:
    try:
        parts = [float(part) for part in split.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if not parts or len(parts) > 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ConfigError(
            f"--split {split!r}: give up to three non-negative train,validation,test proportions, "
            "e.g. 969,30,1."
        )
