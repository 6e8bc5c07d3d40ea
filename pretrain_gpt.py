"""Pretrain GPT: ``deepspeed pretrain_gpt.py <Megatron-DeepSpeed flags> --deepspeed --deepspeed_config FILE``.

All flags are checked (and the ds_config reconciled with them) before any process group starts.
"""

from __future__ import annotations

import sys

from megatron.config.arguments import parse_args
from megatron.config.build import build_config, world_size_from_env
from megatron.data.gpt_dataset import check_data_prefixes
from megatron.data.tokenizer import build_tokenizer
from megatron.model import GPTModel
from megatron.training.distributed import initialize_distributed
from megatron.training.entry import run_cli
from megatron.training.pretrain import Pretraining


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    config = build_config(args, world_size_from_env(), tokenizer.vocab_size)
    check_data_prefixes(config.data.data_path)
    context = initialize_distributed()
    Pretraining(config, context, lambda: GPTModel(config.model), eod=tokenizer.eod).run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
