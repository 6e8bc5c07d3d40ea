"""A small pretrained BERT (pretrain_bert.py on the bundled corpus), the starting point of the finetuning
tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from megatron.checkpointing.layout import read_full_model
from megatron.config.schema import ModelConfig
from megatron.data.tokenizer import build_tokenizer
from tests.launch import BERT_VOCAB_FILE, run_pretrain, write_ds_config

# The model every finetuning test uses: what the pretraining run below trains.
MODEL_FLAGS = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
    "--max-position-embeddings", "64", "--make-vocab-size-divisible-by", "64",
]  # fmt: skip
TOKENIZER_FLAGS = ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(BERT_VOCAB_FILE)]


@dataclass(frozen=True)
class Pretrained:
    checkpoint: Path
    model_config: ModelConfig
    vocab_size: int


@pytest.fixture(scope="session")
def pretrained_bert(sentence_data_prefix, tmp_path_factory) -> Pretrained:
    """Three iterations of masked-LM and sentence-order pretraining, saved (tensor and pipeline size 1)."""
    folder = tmp_path_factory.mktemp("pretrained_bert")
    ds_config = write_ds_config(folder / "ds.json", 0, train_micro_batch_size_per_gpu=4)
    flags = [
        *MODEL_FLAGS, "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "3",
        "--lr", "5e-3", "--lr-warmup-iters", "1", "--data-path", sentence_data_prefix, "--split", "90,10,0",
        "--data-cache-path", str(folder / "cache"), *TOKENIZER_FLAGS, "--log-interval", "1",
        "--eval-interval", "1000", "--eval-iters", "1", "--num-workers", "0", "--deepspeed",
        "--deepspeed_config", str(ds_config), "--save", str(folder / "ckpt"),
    ]  # fmt: skip
    run_pretrain(flags, launcher="python", script="pretrain_bert.py").check()
    tokenizer = build_tokenizer("BertWordPieceLowerCase", str(BERT_VOCAB_FILE), None, None)
    return Pretrained(
        folder / "ckpt", read_full_model(str(folder / "ckpt")).model_config(), tokenizer.vocab_size
    )
