"""Evaluate a checkpoint on a downstream task, with Megatron-LM's ``tasks/main.py`` flags.

WikiText-103 perplexity (token-level and word-adjusted) and LAMBADA last-word accuracy::

    python tasks/main.py --task WIKITEXT103 --valid-data wiki.test.tokens --load checkpoints/gpt \\
        --overlapping-eval 32 --micro-batch-size 8
    python tasks/main.py --task LAMBADA --valid-data lambada_test.jsonl --strict-lambada --load ...

The model shape and (unless given) the tokenizer come from the checkpoint, saved in any tensor/pipeline
layout; ``--tensor-model-parallel-size T`` under ``torchrun --nproc_per_node T`` splits it over T processes.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tasks...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.training.entry import run_cli  # noqa: E402
from tasks.zeroshot_gpt import add_task_flags, run_zeroshot  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run_zeroshot(parse_args(argv, add_task_flags))


if __name__ == "__main__":
    sys.exit(run_cli(main))
