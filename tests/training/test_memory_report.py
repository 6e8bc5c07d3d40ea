"""The trainer's memory lines: pretrain_gpt.py logs predict_memory's prediction for its own config before
the engine is built and beside the actual peak after the first iteration; a model the memory model does
not cover, or a failure in it, logs why and the run goes on."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.schema import MaskedLMConfig
from megatron.data.tokenizer import build_tokenizer
from megatron.planning.from_config import buckets_of, layout_of, precision_of, trains_with_dropout
from megatron.planning.memory import predict_memory
from megatron.training import memory_report
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

PREDICTED = re.compile(r"memory: predicted peak per GPU (\S+) GiB = parameters (\S+) \+ gradients (\S+) \+")
AFTER_FIRST = re.compile(r"memory after the first iteration: predicted (\S+) GiB .*, actual ")


def config_of(flags: list[str], world_size: int):
    args = parse_args(flags)
    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    return build_config(args, world_size, tokenizer.vocab_size)


@pytest.mark.slow
def test_pretrain_gpt_logs_the_prediction_and_the_first_iteration(gpt_data_prefix, tmp_path):
    ds_config = write_ds_config(tmp_path / "ds.json", 1, bf16={"enabled": True})
    flags = tiny_model_flags(gpt_data_prefix, train_iters=2) + ["--deepspeed_config", str(ds_config)]
    result = run_pretrain(flags, nproc=2).check()
    config = config_of(flags, world_size=2)
    expected = predict_memory(
        config.model,
        layout_of(config),
        precision_of(config),
        dropout=trains_with_dropout(config),
        buckets=buckets_of(config),
    )
    predicted = PREDICTED.findall(result.stdout)
    assert len(predicted) == 1, result.stdout[-3000:]
    total, parameters, gradients = predicted[0]
    assert total == memory_report.gib(expected.total)
    assert (parameters, gradients) == (
        memory_report.gib(expected.parameters),
        memory_report.gib(expected.gradients),
    )
    assert AFTER_FIRST.findall(result.stdout) == [total]
    assert "the cpu allocator keeps no statistics" in result.stdout


@pytest.fixture(scope="module")
def gpt_config(tmp_path_factory):
    ds_config = write_ds_config(tmp_path_factory.mktemp("ds") / "ds.json", 0)
    return config_of(tiny_model_flags("unused-prefix") + ["--deepspeed_config", str(ds_config)], world_size=1)


def test_a_bert_config_logs_that_there_is_no_prediction(gpt_config, caplog):
    bert = dataclasses.replace(gpt_config, masked_lm=MaskedLMConfig("bert"))
    with caplog.at_level(logging.INFO, logger="megatron"):
        assert memory_report.log_prediction(bert) is None
    assert "memory: no prediction (the memory model covers GPT only, not BERT)" in caplog.text


def test_a_failing_prediction_does_not_stop_the_run(gpt_config, caplog, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("zero_stage 7")

    monkeypatch.setattr(memory_report, "memory_of", fail)
    with caplog.at_level(logging.INFO, logger="megatron"):
        assert memory_report.log_prediction(gpt_config) is None
    assert "memory: no prediction (ValueError: zero_stage 7)" in caplog.text
