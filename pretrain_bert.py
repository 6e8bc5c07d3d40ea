"""Pretrain BERT: ``deepspeed pretrain_bert.py <Megatron-DeepSpeed flags> --deepspeed --deepspeed_config F``.

Masked-LM plus sentence-order prediction (``--bert-no-binary-head``: masked-LM only) on a corpus
preprocessed with ``tools/preprocess_data.py --split-sentences``, through the same engine, parallel layouts
(tensor, pipeline and data parallel; ZeRO 0-3, 0-1 with pipeline stages) and checkpoints as GPT. All flags
are checked before any process group starts.
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
from megatron.model.bert import BertModel
from megatron.model.bert_pipe import bert_pipeline_module
from megatron.parallel.context import ParallelContext, parallel_context_for
from megatron.training.determinism import apply_deterministic_mode
from megatron.training.distributed import initialize_distributed
from megatron.training.entry import run_cli
from megatron.training.masked_lm import BertData
from megatron.training.pretrain import Pretraining


def bert_model_provider(config: Config, context: ParallelContext) -> nn.Module:
    """The plain BERT, or its pipeline-stage form when it spans several stages."""
    binary_head = config.masked_lm.binary_head
    if config.parallel.pipeline_model_parallel_size > 1:
        return bert_pipeline_module(
            config.model,
            context,
            config.seed,
            config.recompute,
            config.parallel.pipeline_partition_method,
            binary_head,
        )
    return BertModel(config.model, context, config.seed, config.recompute, binary_head=binary_head)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_tokenizer_type(args.tokenizer_type, "bert")
    tokenizer = build_tokenizer(
        args.tokenizer_type,
        args.vocab_file,
        args.merge_file,
        args.tokenizer_model,
        vocab_size=args.vocab_size,
    )
    config = build_config(args, world_size_from_env(), tokenizer.vocab_size, model_type="bert")
    check_machine(config)
    check_sentence_prefixes(config.data.data_path)
    check_training_data(config.data, tokenizer.vocab_size)
    apply_deterministic_mode(config.kernels.deterministic)
    context = initialize_distributed(config.parallel.distributed_backend)
    data = BertData(tokenizer, config.masked_lm)
    parallel_context = parallel_context_for(config.parallel)
    Pretraining(config, context, parallel_context, bert_model_provider, tokenizer.eod, data).run()


if __name__ == "__main__":
    sys.exit(run_cli(main))
