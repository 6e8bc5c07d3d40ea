"""pretrain_t5.py end to end on CPU: the loss falls, T=2 matches T=1, T5 export to HF is refused clearly."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.launch import BERT_VOCAB_FILE, run_pretrain, write_ds_config

ITERATIONS = 10


def t5_flags(data_prefix: str, tmp_path, zero_stage: int = 0) -> list[str]:
    ds_config = write_ds_config(tmp_path / "ds.json", zero_stage, train_micro_batch_size_per_gpu=4)
    return [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--kv-channels", "32",
        "--ffn-hidden-size", "128", "--encoder-seq-length", "64", "--decoder-seq-length", "24",
        "--max-position-embeddings", "64", "--vocab-extra-ids", "100",
        "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", str(ITERATIONS),
        "--lr", "5e-3", "--lr-warmup-iters", "1", "--clip-grad", "1.0",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        # 8,102 tokens pad to 8,128 rows both with T=1 (x32) and T=2 (x64): the same model.
        "--make-vocab-size-divisible-by", "32",
        "--data-path", data_prefix, "--split", "90,10,0", "--data-cache-path", str(tmp_path / "cache"),
        "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(BERT_VOCAB_FILE),
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--num-workers", "0",
        "--seed", "1234", "--deepspeed", "--deepspeed_config", str(ds_config),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(sentence_data_prefix, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("t5_reference")
    flags = t5_flags(sentence_data_prefix, tmp_path) + ["--save", str(tmp_path / "ckpt")]
    return run_pretrain(flags, launcher="python", script="pretrain_t5.py").check(), tmp_path / "ckpt"


def test_loss_falls(reference):
    result, checkpoint = reference
    losses = result.losses
    assert sorted(losses) == list(range(1, ITERATIONS + 1))
    assert losses[ITERATIONS] < losses[1] - 0.8, losses
    assert "validation loss at the end of training" in result.stdout
    assert (checkpoint / "latest").read_text() == f"global_step{ITERATIONS}"


@pytest.mark.slow
def test_tensor_parallel_matches_one_process(reference, sentence_data_prefix, tmp_path):
    result, _ = reference
    flags = t5_flags(sentence_data_prefix, tmp_path, zero_stage=2) + ["--tensor-model-parallel-size", "2"]
    parallel = run_pretrain(flags, nproc=2, script="pretrain_t5.py").check()
    assert "tensor-parallel 2" in parallel.stdout
    assert sorted(parallel.losses) == sorted(result.losses)
    for iteration, loss in result.losses.items():
        assert parallel.losses[iteration] == pytest.approx(loss, rel=1e-5), (iteration, parallel.losses)


def test_export_to_huggingface_is_refused_naming_the_alternative(reference, tmp_path):
    from tools.convert_checkpoint_to_hf import main as convert

    _, checkpoint = reference
    with pytest.raises(ConfigError, match="T5 .* no HuggingFace equivalent.*--megatron-lm-out"):
        convert(["--load-dir", str(checkpoint), "--save-dir", str(tmp_path / "hf")])
    assert not (tmp_path / "hf").exists()


def test_pipeline_layout_conversion_is_refused(reference, tmp_path):
    from tools.checkpoint_util import main as checkpoint_util

    _, checkpoint = reference
    with pytest.raises(ConfigError, match="--target-pipeline-parallel-size 2: the checkpoint is a T5"):
        checkpoint_util(["--load-dir", str(checkpoint), "--save-dir", str(tmp_path / "p2"),
                         "--target-pipeline-parallel-size", "2"])  # fmt: skip
