"""BERT and T5 flags: defaults, derived settings, and every bad input refused with the flag named."""

from __future__ import annotations

import json

import pytest

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.errors import ConfigError
from megatron.training.entry import run_cli
from tests.launch import BERT_VOCAB_FILE

BERT_FLAGS = {
    "--num-layers": "2", "--hidden-size": "64", "--num-attention-heads": "4", "--seq-length": "128",
    "--micro-batch-size": "4", "--global-batch-size": "8", "--train-iters": "10", "--lr": "1e-4",
    "--data-path": "corpus_text_sentence", "--tokenizer-type": "BertWordPieceLowerCase",
    "--vocab-file": "vocab.txt", "--deepspeed": True,
}  # fmt: skip
T5_FLAGS = {**BERT_FLAGS, "--seq-length": None, "--encoder-seq-length": "128", "--vocab-extra-ids": "100"}


def build(tmp_path, model_type: str, changes=None, world_size: int = 1, zero_stage: int = 1):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": zero_stage}}))
    base = BERT_FLAGS if model_type != "t5" else T5_FLAGS
    flags = {**base, "--deepspeed_config": str(ds), **(changes or {})}
    argv = []
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, value]
    return build_config(parse_args(argv), world_size, 8002, model_type)


def test_bert_defaults(tmp_path):
    config = build(tmp_path, "bert")
    settings = config.masked_lm
    assert (settings.model_type, settings.mask_prob, settings.short_seq_prob) == ("bert", 0.15, 0.1)
    assert settings.binary_head and config.model.openai_gelu is False
    assert not build(tmp_path, "bert", {"--bert-no-binary-head": True}).masked_lm.binary_head
    assert (
        build(tmp_path, "gpt", {"--tokenizer-type": "GPT2BPETokenizer", "--merge-file": "m"}).masked_lm
        is None
    )


def test_t5_lengths_and_head_size(tmp_path):
    config = build(
        tmp_path, "t5", {"--kv-channels": "32", "--decoder-seq-length": "64", "--mask-prob": "0.2"}
    )
    assert config.model.seq_length == 128 and config.model.head_dim == 32
    assert (config.masked_lm.decoder_seq_length, config.masked_lm.vocab_extra_ids) == (64, 100)
    assert config.masked_lm.mask_prob == 0.2
    assert build(tmp_path, "t5").masked_lm.decoder_seq_length == 128


@pytest.mark.parametrize(
    ("model_type", "changes", "message"),
    [
        ("bert", {"--mask-prob": "1.5"}, r"--mask-prob 1.5: a share of tokens, must be in \(0, 1\)"),
        ("bert", {"--short-seq-prob": "-0.1"}, r"--short-seq-prob -0.1: a probability"),
        ("bert", {"--seq-length": "4"}, r"--seq-length 4: a BERT sample needs at least 5 tokens"),
        ("bert", {"--tokenizer-type": "GPT2BPETokenizer", "--merge-file": "m"},
         r"--tokenizer-type GPT2BPETokenizer: pretrain_bert.py needs a BERT WordPiece vocabulary"),
        ("bert", {"--vocab-extra-ids": "10"}, r"--vocab-extra-ids is not used by pretrain_bert.py"),
        ("bert", {"--decoder-seq-length": "10"}, r"--decoder-seq-length is not used by pretrain_bert.py"),
        ("t5", {"--bert-no-binary-head": True}, r"--bert-no-binary-head is not used by pretrain_t5.py"),
        ("gpt", {"--mask-prob": "0.2"}, r"--mask-prob is not used by pretrain_gpt.py"),
        ("t5", {"--vocab-extra-ids": None}, r"--vocab-extra-ids 0: T5 replaces each masked span"),
        ("t5", {"--decoder-seq-length": "256"}, r"--decoder-seq-length 256 is larger than --max-position"),
        ("t5", {"--decoder-seq-length": "2"}, r"--decoder-seq-length 2: the decoder needs at least 3"),
        ("t5", {"--seq-length": "64"}, r"--encoder-seq-length 128 and --seq-length 64 disagree"),
        ("bert", {"--kv-channels": "0"}, r"--kv-channels 0: must be > 0"),
        ("t5", {"--num-experts": "2"}, r"pretrain_t5.py \(T5\) with --num-experts: .* GPT only"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag(tmp_path, model_type, changes, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, model_type, changes)


@pytest.mark.parametrize(
    ("changes", "zero_stage", "message"),
    [
        ({"--ds-sequence-parallel-size": "2"}, 1, r"\(BERT\) with --ds-sequence-parallel-size 2"),
        ({"--tensor-model-parallel-size": "2", "--sequence-parallel": True}, 1,
         r"\(BERT\) with --sequence-parallel"),
        ({"--pipeline-model-parallel-size": "2"}, 2,
         r"--pipeline-model-parallel-size 2 with ZeRO stage 2 .* Use --zero-stage 1"),
        ({"--pipeline-model-parallel-size": "2"}, 3, r"--pipeline-model-parallel-size 2 with ZeRO stage 3"),
    ],
)  # fmt: skip
def test_unsupported_layouts_are_refused_up_front(tmp_path, changes, zero_stage, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, "bert", changes, world_size=2, zero_stage=zero_stage)
    assert build(tmp_path, "bert", {"--tensor-model-parallel-size": "2"}, world_size=2).parallel


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_bert_runs_pipeline_parallel(tmp_path, zero_stage):
    changes = {"--pipeline-model-parallel-size": "2", "--tensor-model-parallel-size": "2"}
    config = build(tmp_path, "bert", changes, world_size=8, zero_stage=zero_stage)
    assert config.parallel.pipeline_model_parallel_size == 2 and config.parallel.use_pipeline_engine
    assert config.batch.data_parallel_size == 2
    no_head = build(tmp_path, "bert", {**changes, "--bert-no-binary-head": True}, world_size=4)
    assert no_head.parallel.pipeline_model_parallel_size == 2 and not no_head.masked_lm.binary_head


def test_t5_pipeline_is_refused_with_what_to_use_instead(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"pretrain_t5.py \(T5\) with --pipeline-model-parallel-size 2: pipeline parallelism is "
        r"implemented for GPT and BERT only; use --pipeline-model-parallel-size 1 \(tensor parallelism",
    ):
        build(tmp_path, "t5", {"--pipeline-model-parallel-size": "2"}, world_size=2)


def test_entry_points_report_a_missing_sentence_corpus(tmp_path, capsys):
    from pretrain_bert import main

    ds = tmp_path / "ds.json"
    ds.write_text("{}")
    argv = [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
        "--micro-batch-size", "2", "--train-iters", "2", "--lr", "1e-3",
        "--data-path", str(tmp_path / "nope"), "--tokenizer-type", "BertWordPieceLowerCase",
        "--vocab-file", str(BERT_VOCAB_FILE),
        "--deepspeed", "--deepspeed_config", str(ds),
    ]  # fmt: skip
    assert run_cli(main, argv) == 2
    error = capsys.readouterr().err
    assert "--data-path prefix" in error and "--split-sentences" in error and "_text_sentence" in error
