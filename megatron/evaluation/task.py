"""Megatron-LM's ``tasks/main.py`` zero-shot GPT tasks on a checkpoint of this toolkit: the flags, the
checks and the run (``tasks/main.py`` only parses the flags and calls :func:`run_zeroshot`).

The model is loaded as for generation (``megatron.text_generation.loading``): any saved tensor/pipeline
layout, split over the tensor-parallel ranks of this run (``torchrun --nproc_per_node T``). Every rank
scores the same batches; rank 0 logs the result.
"""

from __future__ import annotations

import argparse
import logging

from megatron.config.errors import ConfigError
from megatron.evaluation.lambada import accuracy, read_lambada
from megatron.evaluation.scoring import score_samples
from megatron.evaluation.wikitext import perplexity, read_wikitext
from megatron.text_generation.loading import build_text_generator, read_generation_checkpoint
from megatron.training.distributed import initialize_distributed

logger = logging.getLogger("megatron")

ZEROSHOT_TASKS = ("WIKITEXT103", "LAMBADA")
# Megatron-LM's default window stride for WikiText: overlapping windows, 32 new tokens each.
DEFAULT_OVERLAPPING_EVAL = 32


def add_task_flags(parser: argparse.ArgumentParser, tasks: tuple[str, ...] = ZEROSHOT_TASKS) -> None:
    """The flags of ``tasks/main.py``; ``tasks``: the --task choices (the finetuning tasks add theirs)."""
    group = parser.add_argument_group("tasks (Megatron's tasks/main.py)")
    group.add_argument("--task", required=True, choices=tasks, help="the task to run")
    group.add_argument(
        "--valid-data", nargs="*", default=None,
        help="the evaluation file: WikiText's raw text (wiki.test.tokens) or LAMBADA's jsonl; finetuning: "
        "the validation files (MNLI, QQP) or folders (RACE), each reported apart",
    )  # fmt: skip
    group.add_argument(
        "--overlapping-eval", type=int, default=DEFAULT_OVERLAPPING_EVAL,
        help="WikiText: windows start this many tokens apart and score only their new tokens; "
        "--seq-length for windows that do not overlap",
    )  # fmt: skip
    group.add_argument(
        "--strict-lambada", action="store_true",
        help="LAMBADA: the target is the whole last word, not the last token",
    )  # fmt: skip


def eval_file(args: argparse.Namespace) -> str:
    if not args.valid_data or len(args.valid_data) != 1:
        raise ConfigError(
            f"--valid-data {' '.join(args.valid_data or []) or '(none)'}: give the one file of {args.task}."
        )
    return args.valid_data[0]


def eval_seq_length(args: argparse.Namespace, max_positions: int) -> int:
    """--seq-length, by default the model's positions; never past them."""
    seq_length = args.seq_length or max_positions
    if not 1 <= seq_length <= max_positions:
        raise ConfigError(
            f"--seq-length {seq_length}: the model has {max_positions} positions. Give at most that."
        )
    if args.task == "WIKITEXT103" and not 1 <= args.overlapping_eval <= seq_length:
        raise ConfigError(
            f"--overlapping-eval {args.overlapping_eval}: give 1 to the sequence length {seq_length} "
            f"(--overlapping-eval {seq_length}: windows that do not overlap)."
        )
    return seq_length


def run_zeroshot(args: argparse.Namespace) -> str:
    """Run ``args.task`` and return its result line (Megatron-LM's), which rank 0 also logs."""
    path = eval_file(args)
    full, tokenizer = read_generation_checkpoint(args)
    seq_length = eval_seq_length(args, full.config["model"]["max_position_embeddings"])
    batch_size = args.micro_batch_size or 1
    try:
        if args.task == "WIKITEXT103":
            data = read_wikitext(path, tokenizer, seq_length, args.overlapping_eval)
            samples = data.samples
        else:
            samples = read_lambada(path, tokenizer, args.strict_lambada, seq_length)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"--valid-data {path}: {error}") from None
    context = initialize_distributed(args.distributed_backend)
    model = build_text_generator(args, full, tokenizer, context.device).model
    scores = score_samples(model, samples, tokenizer.vocab_size, tokenizer.eod, batch_size)
    result = perplexity(data, scores) if args.task == "WIKITEXT103" else accuracy(scores)
    line = result.report(args.task)
    rule = "-" * (len(line) + 1)
    logger.info("%s\n%s\n%s", rule, line, rule)
    return line
