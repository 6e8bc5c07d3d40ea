"""Pretrain T5: ``deepspeed pretrain_t5.py <Megatron-DeepSpeed flags> --deepspeed --deepspeed_config FILE``.

Span corruption with ``--vocab-extra-ids`` sentinels, ``--encoder-seq-length`` (or ``--seq-length``) and
``--decoder-seq-length`` tokens per sample, on a corpus preprocessed with ``tools/preprocess_data.py
--split-sentences``; the same engine, parallel layouts (tensor and data parallel, ZeRO 0-3) and checkpoints
as GPT. All flags are checked before any process group starts.
"""

from __future__ import annotations

import sys

from torch import nn

from megatron.config.arguments import parse_args
from megatron.config.build import build_config, check_machine, world_size_from_env
from megatron.config.masked_lm import check_tokenizer_type
from megatron.config.schema import Config
from megatron.data.sentence_samples import check_sentence_prefixes
from megatron.data.tokenizer import build_tokenizer
from megatron.data.verify import check_training_data
from megatron.model.t5 import T5Model
from megatron.parallel.context import ParallelContext, parallel_context_for
from megatron.training.determinism import apply_deterministic_mode
from megatron.training.distributed import initialize_distributed
from megatron.training.entry import run_cli
from megatron.training.masked_lm import T5Data
from megatron.training.pretrain import Pretraining


def t5_model_provider(config: Config, context: ParallelContext) -> nn.Module:
    return T5Model(config.model, context, config.seed, config.recompute)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_tokenizer_type(args.tokenizer_type, "t5")
    tokenizer = build_tokenizer(
        args.tokenizer_type,
        args.vocab_file,
        args.merge_file,
        args.tokenizer_model,
        args.vocab_extra_ids or 0,
        args.vocab_size,
    )
    config = build_config(args, world_size_from_env(), tokenizer.vocab_size, model_type="t5")
    check_machine(config)
    check_sentence_prefixes(config.data.data_path)
    check_training_data(config.data, tokenizer.vocab_size)
    apply_deterministic_mode(config.kernels.deterministic)
    context = initialize_distributed(config.parallel.distributed_backend)
    data = T5Data(tokenizer, config.masked_lm)
    parallel_context = parallel_context_for(config.parallel)
    Pretraining(config, context, parallel_context, t5_model_provider, tokenizer.eod, data).run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
