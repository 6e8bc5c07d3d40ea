"""Run lm-evaluation-harness tasks on a checkpoint and write the results JSON, with the flags of
Megatron-DeepSpeed's ``tasks/eval_harness/evaluate.py``::

    python tasks/eval_harness/evaluate.py --load checkpoints/gpt --task_list hellaswag,lambada_openai \\
        --results_path results.json --num_fewshot 0 --micro-batch-size 8
    python tasks/eval_harness/evaluate.py --load ... --task_list my_task --include_path my_tasks/

The model shape and (unless given) the tokenizer come from the checkpoint, saved in any tensor/pipeline
layout; ``--tensor-model-parallel-size T`` under ``torchrun --nproc_per_node T`` splits it over T processes.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tasks...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.evaluation.harness_run import add_harness_flags, run_harness  # noqa: E402
from megatron.training.entry import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run_harness(parse_args(argv, add_harness_flags))


if __name__ == "__main__":
    sys.exit(run_cli(main))
