"""Pretrain GPT: ``deepspeed pretrain_gpt.py <Megatron-DeepSpeed flags> --deepspeed --deepspeed_config FILE``.

All flags are checked (and the ds_config reconciled with them) before any process group starts.
"""

from __future__ import annotations

import sys

from torch import nn

from megatron.config.arguments import parse_args
from megatron.config.build import build_config, check_machine, world_size_from_env
from megatron.config.schema import Config
from megatron.data.gpt_dataset import check_data_prefixes
from megatron.data.tokenizer import build_tokenizer
from megatron.data.verify import check_training_data
from megatron.model import GPTModel
from megatron.model.gpt_pipe import gpt_pipeline_module
from megatron.parallel.context import ParallelContext, parallel_context_for
from megatron.training.determinism import apply_deterministic_mode
from megatron.training.distributed import initialize_distributed
from megatron.training.entry import run_cli
from megatron.training.pretrain import Pretraining


def gpt_model_provider(config: Config, context: ParallelContext) -> nn.Module:
    """The plain GPT, or its pipeline-stage form when it spans several stages."""
    if config.parallel.pipeline_model_parallel_size > 1:
        return gpt_pipeline_module(
            config.model, context, config.seed, config.recompute, config.parallel.pipeline_partition_method
        )
    return GPTModel(config.model, context, config.seed, config.recompute, config.moe)


def build_pretraining(argv: list[str] | None = None) -> Pretraining:
    """Flags to a run ready to train: checks, process group, engine, data (``bench/`` drives it too)."""
    args = parse_args(argv)
    tokenizer = build_tokenizer(
        args.tokenizer_type,
        args.vocab_file,
        args.merge_file,
        args.tokenizer_model,
        vocab_size=args.vocab_size,
    )
    config = build_config(args, world_size_from_env(), tokenizer.vocab_size)
    check_machine(config)
    for flag, blend in config.data.blends().items():
        check_data_prefixes(blend, flag)
    check_training_data(config.data, tokenizer.vocab_size)
    apply_deterministic_mode(config.kernels.deterministic)
    context = initialize_distributed(config.parallel.distributed_backend)
    parallel_context = parallel_context_for(config.parallel)
    return Pretraining(config, context, parallel_context, gpt_model_provider, eod=tokenizer.eod)


def main(argv: list[str] | None = None) -> None:
    build_pretraining(argv).run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
