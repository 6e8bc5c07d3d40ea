"""Megatron-LM's ``tasks/main.py``: zero-shot evaluation of a GPT checkpoint, or finetuning of a BERT one.

WikiText-103 perplexity (token-level and word-adjusted) and LAMBADA last-word accuracy::

    python tasks/main.py --task WIKITEXT103 --valid-data wiki.test.tokens --load checkpoints/gpt \\
        --overlapping-eval 32 --micro-batch-size 8
    python tasks/main.py --task LAMBADA --valid-data lambada_test.jsonl --strict-lambada --load ...

The model shape and (unless given) the tokenizer come from the checkpoint, saved in any tensor/pipeline
layout; ``--tensor-model-parallel-size T`` under ``torchrun --nproc_per_node T`` splits it over T processes.

GLUE MNLI / QQP classification and RACE multiple choice, from a ``pretrain_bert.py`` checkpoint, through
the DeepSpeed engine with the training flags::

    deepspeed tasks/main.py --task MNLI --train-data MNLI/train.tsv \\
        --valid-data MNLI/dev_matched.tsv MNLI/dev_mismatched.tsv --epochs 3 \\
        --pretrained-checkpoint checkpoints/bert --tokenizer-type BertWordPieceLowerCase \\
        --vocab-file vocab.txt <model, batch, LR flags> --deepspeed --deepspeed_config ds_config.json
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tasks...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.finetuning.tasks import FINETUNE_FLAGS, FINETUNE_TASKS, add_finetune_flags  # noqa: E402
from megatron.training.entry import run_cli  # noqa: E402
from tasks.zeroshot_gpt import ZEROSHOT_TASKS, add_task_flags, run_zeroshot  # noqa: E402


def add_flags(parser) -> None:
    add_task_flags(parser, ZEROSHOT_TASKS + FINETUNE_TASKS)
    add_finetune_flags(parser)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, add_flags)
    if args.task in FINETUNE_TASKS:
        from megatron.finetuning.trainer import run_finetuning

        run_finetuning(args)
        return
    given = [flag for dest, flag in FINETUNE_FLAGS.items() if getattr(args, dest) not in (None, False)]
    if given:
        raise ConfigError(
            f"{', '.join(given)} with --task {args.task}: zero-shot tasks do not train; drop it."
        )
    run_zeroshot(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
