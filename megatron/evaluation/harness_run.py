"""lm-evaluation-harness tasks on a checkpoint of this toolkit, with the flags of Megatron-DeepSpeed's
``tasks/eval_harness/evaluate.py``: the flags, the checks and the run (``tasks/eval_harness/evaluate.py``
only parses the flags and calls :func:`run_harness`).

The model is loaded as for generation (``megatron.text_generation.loading``): any saved tensor/pipeline
layout, split over the tensor-parallel ranks of this run. Every rank runs every request; rank 0 writes the
results JSON. The task names are checked against the harness's registry (and ``--include_path``) before
the checkpoint is read or any process group starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch.distributed as dist

from megatron.config.errors import ConfigError
from megatron.text_generation.loading import build_text_generator, read_generation_checkpoint
from megatron.training.distributed import initialize_distributed

logger = logging.getLogger("megatron")


def add_harness_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lm-evaluation-harness (Megatron-DeepSpeed's tasks/eval_harness)")
    group.add_argument(
        "--task_list", required=True,
        help="comma-separated harness tasks or groups, e.g. hellaswag,lambada_openai",
    )  # fmt: skip
    group.add_argument("--results_path", default="results.json", help="where rank 0 writes the results JSON")
    group.add_argument(
        "--num_fewshot",
        type=int,
        default=None,
        help="few-shot examples per prompt (default: each task's own)",
    )
    group.add_argument(
        "--include_path", default=None, help="a folder of task YAMLs to register besides the harness's"
    )
    group.add_argument(
        "--only_include_path", action="store_true",
        help="register only the tasks of --include_path, not the harness's own (indexing its ~14,000 task "
        "files takes seconds a process)",
    )  # fmt: skip
    group.add_argument(
        "--limit", type=float, default=None,
        help="documents per task: a count, or below 1 a fraction (for trying a setup, not for reporting)",
    )  # fmt: skip
    group.add_argument(
        "--eval_fp32", action="store_true", help="run the model in fp32 even with --bf16/--fp16"
    )
    group.add_argument(
        "--adaptive_seq_len", action="store_true",
        help="accepted for Megatron-DeepSpeed command lines; always on here: a batch is as long as its "
        "longest request",
    )  # fmt: skip
    group.add_argument(
        "--overlapping-eval", type=int, default=None,
        help="loglikelihood_rolling (perplexity tasks): each window predicts this many new tokens after as "
        "much context as fits; default --seq-length (the harness's windows, without overlap)",
    )  # fmt: skip
    group.add_argument(
        "--log_samples",
        action="store_true",
        help="also write every document's prompt, responses and scores to the results JSON (its 'samples')",
    )
    group.add_argument(
        "--bootstrap_iters", type=int, default=100000,
        help="bootstrap resamples for the standard errors of metrics without a closed form (0: none)",
    )  # fmt: skip


def task_names(args: argparse.Namespace, task_manager) -> list[str]:
    """``--task_list`` as names the harness knows."""
    names = [name.strip() for name in args.task_list.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--task_list {args.task_list!r}: give one or more task names, comma-separated.")
    unknown = [name for name in names if name not in task_manager.all_tasks]
    if unknown:
        where = f" or in --include_path {args.include_path}" if args.include_path else ""
        raise ConfigError(
            f"--task_list: no task {', '.join(unknown)} in lm-evaluation-harness{where}. List the known ones "
            "with `lm-eval ls tasks`, or pass the folder of a local task's YAML as --include_path."
        )
    return names


def check_harness_args(args: argparse.Namespace) -> None:
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise ConfigError(
            f"--include_path {args.include_path}: not a folder; give the folder of the task YAMLs."
        )
    if args.only_include_path and args.include_path is None:
        raise ConfigError("--only_include_path needs --include_path: the folder of the task YAMLs to run.")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(
            f"--limit {args.limit:g}: give a count of documents (>= 1) or a fraction in (0, 1)."
        )
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError(f"--num_fewshot {args.num_fewshot}: give 0 or more.")
    if args.bootstrap_iters < 0:
        raise ConfigError(f"--bootstrap_iters {args.bootstrap_iters}: give 0 or more.")
    folder = os.path.dirname(os.path.abspath(args.results_path))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"--results_path {args.results_path}: the folder {folder} does not exist; create it."
        )


def harness_lengths(args: argparse.Namespace, positions: int) -> tuple[int, int]:
    """(the longest input, the rolling windows' stride): --seq-length, by default the model's positions,
    and --overlapping-eval, by default the same (windows without overlap)."""
    max_length = args.seq_length or positions
    if not 1 <= max_length <= positions:
        raise ConfigError(
            f"--seq-length {max_length}: the model has {positions} positions. Give at most that."
        )
    stride = args.overlapping_eval or max_length
    if not 1 <= stride <= max_length:
        raise ConfigError(
            f"--overlapping-eval {stride}: give 1 to the sequence length {max_length} (default: windows "
            "without overlap)."
        )
    return max_length, stride


def run_harness(args: argparse.Namespace) -> dict | None:
    """Run the tasks and return the harness's results on rank 0 (None on the other ranks), which rank 0
    also writes to ``--results_path`` (with the per-document samples under --log_samples)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable

        from megatron.evaluation.harness import HarnessModel
    except ImportError as error:
        raise ConfigError(
            f"lm-evaluation-harness is not installed ({error}): pip install -e '.[eval]' (or lm-eval)."
        ) from None
    check_harness_args(args)
    task_manager = TaskManager(include_path=args.include_path, include_defaults=not args.only_include_path)
    tasks = task_names(args, task_manager)
    full, tokenizer = read_generation_checkpoint(args)
    max_length, stride = harness_lengths(args, full.config["model"]["max_position_embeddings"])
    if args.eval_fp32:
        args.bf16 = args.fp16 = False
    context = initialize_distributed(args.distributed_backend)
    generator = build_text_generator(args, full, tokenizer, context.device)
    model = HarnessModel(generator, args.micro_batch_size or 1, max_length, stride)
    limit = None if args.limit is None else args.limit if args.limit < 1 else int(args.limit)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        batch_size=model.batch_size,
        limit=limit,
        bootstrap_iters=args.bootstrap_iters,
        log_samples=args.log_samples,
        task_manager=task_manager,
    )
    if dist.get_rank() != 0:
        return None
    results["config"]["model"] = args.load
    with open(args.results_path, "w") as file:
        json.dump(results, file, indent=2, default=handle_non_serializable)
    logger.info("wrote the results of %s to %s", ", ".join(tasks), args.results_path)
    return results
