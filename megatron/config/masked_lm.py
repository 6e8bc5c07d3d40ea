"""The flags and rules of BERT and T5 pretraining (``pretrain_bert.py``, ``pretrain_t5.py``).

Flag names and meanings are Megatron-DeepSpeed's. They are parsed with every other flag; one given to an
entry point that does not use it (``--bert-no-binary-head`` to ``pretrain_t5.py``) is an error rather than
silently ignored, which is why they default to None here and get their documented defaults in
:func:`masked_lm_config`.
"""

from __future__ import annotations

import argparse

from megatron.config.errors import ConfigError
from megatron.config.schema import MaskedLMConfig, ModelConfig, ParallelConfig
from megatron.data.bert_tokenizer import BERT_TOKENIZER_TYPES

MODEL_TYPES = ("gpt", "bert", "t5")
ENTRY_POINTS = {"gpt": "pretrain_gpt.py", "bert": "pretrain_bert.py", "t5": "pretrain_t5.py"}
# Flag -> the model types that read it.
_FLAG_USERS = {
    "--mask-prob": ("bert", "t5"),
    "--short-seq-prob": ("bert", "t5"),
    "--bert-no-binary-head": ("bert",),
    "--vocab-extra-ids": ("t5",),
    "--encoder-seq-length": ("t5",),
    "--decoder-seq-length": ("t5",),
    # Megatron-DeepSpeed reads per-split data paths in its GPT dataset only; BERT and T5 take --split.
    "--train-data-path": ("gpt",),
    "--valid-data-path": ("gpt",),
    "--test-data-path": ("gpt",),
}
DEFAULT_MASK_PROB = 0.15
DEFAULT_SHORT_SEQ_PROB = 0.1
DEFAULT_DECODER_SEQ_LENGTH = 128


def add_masked_lm_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("BERT and T5")
    group.add_argument(
        "--mask-prob",
        type=float,
        default=None,
        help="Share of tokens masked (BERT: 80%% [MASK], 10%% random, 10%% kept; T5: replaced by sentinel "
        f"spans). Default: {DEFAULT_MASK_PROB}.",
    )
    group.add_argument(
        "--short-seq-prob",
        type=float,
        default=None,
        help="Probability of a sample shorter than the sequence length (a random target length). Default: "
        f"{DEFAULT_SHORT_SEQ_PROB}.",
    )
    group.add_argument(
        "--bert-no-binary-head",
        action="store_true",
        default=None,
        help="BERT without the sentence-order (binary) head: one segment per sample, masked-LM loss only.",
    )
    group.add_argument(
        "--vocab-extra-ids",
        type=int,
        default=None,
        help="T5: sentinel tokens <extra_id_0>.. added to the BertWordPiece vocabulary (e.g. 100).",
    )
    group.add_argument(
        "--encoder-seq-length",
        type=int,
        default=None,
        help="T5: encoder tokens per sample (the same as --seq-length, which it sets).",
    )
    group.add_argument(
        "--decoder-seq-length",
        type=int,
        default=None,
        help=f"T5: decoder tokens per sample. Default: {DEFAULT_DECODER_SEQ_LENGTH}.",
    )


def resolve_sequence_flags(args: argparse.Namespace, model_type: str) -> argparse.Namespace:
    """A copy of ``args`` with T5's ``--encoder-seq-length`` applied to ``--seq-length`` (Megatron's alias),
    and every flag this model type does not read refused."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type {model_type!r}: expected one of {MODEL_TYPES}")
    for flag, users in _FLAG_USERS.items():
        if getattr(args, _dest(flag), None) is not None and model_type not in users:
            where = " and ".join(ENTRY_POINTS[user] for user in users)
            raise ConfigError(
                f"{flag} is not used by {ENTRY_POINTS[model_type]} (only by {where}); remove it."
            )
    args = argparse.Namespace(**vars(args))
    encoder = getattr(args, "encoder_seq_length", None)
    if encoder is not None:
        if args.seq_length is not None and args.seq_length != encoder:
            raise ConfigError(
                f"--encoder-seq-length {encoder} and --seq-length {args.seq_length} disagree; they name the "
                "same length (T5's encoder), give one of them."
            )
        args.seq_length = encoder
    return args


def check_tokenizer_type(tokenizer_type: str, model_type: str) -> None:
    """BERT and T5 need [CLS]/[SEP]/[MASK]/[PAD] (and T5 its sentinels): a BERT WordPiece vocabulary."""
    if model_type != "gpt" and tokenizer_type not in BERT_TOKENIZER_TYPES:
        raise ConfigError(
            f"--tokenizer-type {tokenizer_type}: {ENTRY_POINTS[model_type]} needs a BERT WordPiece "
            f"vocabulary ([CLS] [SEP] [MASK] [PAD]); use {' or '.join(BERT_TOKENIZER_TYPES)} with "
            "--vocab-file vocab.txt (data/tokenizer/bert-wordpiece/vocab.txt is bundled)."
        )


def masked_lm_config(args: argparse.Namespace, model_type: str, model: ModelConfig) -> MaskedLMConfig | None:
    """BERT's and T5's settings, checked against the model shape; None for GPT."""
    if model_type == "gpt":
        return None
    check_tokenizer_type(args.tokenizer_type, model_type)
    mask_prob = DEFAULT_MASK_PROB if args.mask_prob is None else args.mask_prob
    short_seq_prob = DEFAULT_SHORT_SEQ_PROB if args.short_seq_prob is None else args.short_seq_prob
    if not 0.0 < mask_prob < 1.0:
        raise ConfigError(f"--mask-prob {mask_prob}: a share of tokens, must be in (0, 1); BERT uses 0.15.")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ConfigError(f"--short-seq-prob {short_seq_prob}: a probability, must be in [0, 1].")
    if model_type == "bert":
        binary_head = not args.bert_no_binary_head
        minimum = 5 if binary_head else 3  # [CLS] a [SEP] b [SEP] / [CLS] a [SEP]
        if model.seq_length < minimum:
            raise ConfigError(
                f"--seq-length {model.seq_length}: a BERT sample needs at least {minimum} tokens "
                f"({'[CLS] A [SEP] B [SEP]' if binary_head else '[CLS] A [SEP]'}); use 128 or 512."
            )
        return MaskedLMConfig("bert", mask_prob, short_seq_prob, binary_head=binary_head)
    extra_ids = args.vocab_extra_ids or 0
    if extra_ids < 1:
        raise ConfigError(
            f"--vocab-extra-ids {extra_ids}: T5 replaces each masked span by a sentinel token "
            "<extra_id_N>, so it needs some; add --vocab-extra-ids 100 (Megatron's T5 recipes)."
        )
    decoder = DEFAULT_DECODER_SEQ_LENGTH if args.decoder_seq_length is None else args.decoder_seq_length
    if decoder < 3:
        raise ConfigError(
            f"--decoder-seq-length {decoder}: the decoder needs at least 3 tokens ([BOS], a sentinel and a "
            "masked token); Megatron's T5 uses 128."
        )
    if decoder > model.max_position_embeddings:
        raise ConfigError(
            f"--decoder-seq-length {decoder} is larger than --max-position-embeddings "
            f"{model.max_position_embeddings}: encoder and decoder share the position table. Raise "
            "--max-position-embeddings."
        )
    return MaskedLMConfig(
        "t5", mask_prob, short_seq_prob, vocab_extra_ids=extra_ids, decoder_seq_length=decoder
    )


def check_masked_lm_parallel(masked_lm: MaskedLMConfig | None, parallel: ParallelConfig) -> None:
    """BERT runs tensor, pipeline and data parallel, T5 tensor and data parallel (ZeRO stages as for GPT:
    any, or 0-1 with pipeline stages); the rest is refused up front."""
    if masked_lm is None:
        return
    name = f"{ENTRY_POINTS[masked_lm.model_type]} ({masked_lm.model_type.upper()})"
    pipeline = parallel.pipeline_model_parallel_size
    refused = [
        (masked_lm.model_type == "t5" and pipeline > 1, f"--pipeline-model-parallel-size {pipeline}: "
         "pipeline parallelism is implemented for GPT and BERT only", "--pipeline-model-parallel-size 1 "
         "(tensor parallelism and ZeRO split the model instead)"),
        (parallel.ds_sequence_parallel_size > 1, "--ds-sequence-parallel-size "
         f"{parallel.ds_sequence_parallel_size}: DeepSpeed-Ulysses is implemented for GPT's causal attention "
         "only", "--ds-sequence-parallel-size 1"),
        (parallel.sequence_parallel, "--sequence-parallel: Megatron sequence parallelism is implemented for "
         "GPT only", "no --sequence-parallel"),
    ]  # fmt: skip
    for is_refused, what, instead in refused:
        if is_refused:
            raise ConfigError(f"{name} with {what}; use {instead}.")


def check_masked_lm_features(masked_lm: MaskedLMConfig | None, moe: bool, curriculum: bool) -> None:
    """GPT's mixture of experts and sequence-length curriculum are not wired into BERT and T5."""
    if masked_lm is None:
        return
    name = f"{ENTRY_POINTS[masked_lm.model_type]} ({masked_lm.model_type.upper()})"
    if moe:
        raise ConfigError(
            f"{name} with --num-experts: mixture of experts is implemented for GPT only; use --num-experts 1."
        )
    if curriculum:
        raise ConfigError(
            f"{name} with the ds_config's curriculum_learning section: the sequence-length curriculum cuts "
            "GPT's token windows and is implemented for GPT only; remove the section."
        )


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
