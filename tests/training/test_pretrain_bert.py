"""pretrain_bert.py end to end on CPU: the loss falls, T=2, P=2 and T=2 x P=2 match one process, and the saved
model (of either layout) exports to transformers' MegatronBert with the same logits, and to Megatron-LM's
model_optim_rng.pt layout."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron.checkpointing.layout import read_full_model
from megatron.config.schema import ModelConfig
from megatron.model.bert import BertModel
from tests.launch import BERT_VOCAB_FILE, REPO_ROOT, VALID_PATTERN, run_pretrain, write_ds_config

ITERATIONS = 10
SOP_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| sop loss: (\S+) \|")
# Under the pipeline engine, which keeps one loss per batch, BERT logs the sum it backpropagates.
PIPELINE_2 = ["--pipeline-model-parallel-size", "2"]


def bert_flags(data_prefix: str, tmp_path, zero_stage: int = 0) -> list[str]:
    ds_config = write_ds_config(tmp_path / "ds.json", zero_stage, train_micro_batch_size_per_gpu=4)
    return [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", str(ITERATIONS),
        "--lr", "5e-3", "--lr-warmup-iters", "1", "--clip-grad", "1.0",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        # 8,002 tokens pad to 8,064 rows both with T=1 (x64) and T=2 (x128): the same model.
        "--make-vocab-size-divisible-by", "64",
        "--data-path", data_prefix, "--split", "90,10,0", "--data-cache-path", str(tmp_path / "cache"),
        "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(BERT_VOCAB_FILE),
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--num-workers", "0",
        "--seed", "1234", "--deepspeed",
        "--deepspeed_config", str(ds_config),
    ]  # fmt: skip


def sop_losses(result) -> dict[int, float]:
    return {int(it): float(value) for it, value in SOP_PATTERN.findall(result.stdout)}


@pytest.fixture(scope="module")
def reference(sentence_data_prefix, tmp_path_factory):
    """One process, saved at the end: the run every other test here compares with."""
    tmp_path = tmp_path_factory.mktemp("bert_reference")
    flags = bert_flags(sentence_data_prefix, tmp_path) + ["--save", str(tmp_path / "ckpt")]
    result = run_pretrain(flags, launcher="python", script="pretrain_bert.py").check()
    return result, tmp_path / "ckpt"


@pytest.fixture(scope="module")
def pipeline(sentence_data_prefix, tmp_path_factory):
    """The reference's run over two pipeline stages (ZeRO 1), saved at the end."""
    tmp_path = tmp_path_factory.mktemp("bert_pipeline")
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + PIPELINE_2
    result = run_pretrain(flags + ["--save", str(tmp_path / "ckpt")], nproc=2, script="pretrain_bert.py")
    return result.check(), tmp_path / "ckpt"


def assert_same_weights(checkpoint, reference_checkpoint, exact: bool = False) -> None:
    """The checkpoint's merged weights are the reference's (to training's rounding unless ``exact``), under
    the same names in the same order."""
    merged, single = read_full_model(str(checkpoint)), read_full_model(str(reference_checkpoint))
    assert list(merged.state_dict) == list(single.state_dict)
    for name, tensor in single.state_dict.items():
        if exact:
            assert torch.equal(merged.state_dict[name], tensor), name
        else:
            torch.testing.assert_close(merged.state_dict[name], tensor, atol=1e-4, rtol=1e-3, msg=name)


def test_masked_lm_loss_falls(reference):
    result, checkpoint = reference
    losses = result.losses
    assert sorted(losses) == list(range(1, ITERATIONS + 1))
    assert losses[ITERATIONS] < losses[1] - 0.8, losses
    sop = sop_losses(result)
    assert sorted(sop) == sorted(losses) and all(0.3 < value < 1.5 for value in sop.values())
    assert "validation loss at the end of training" in result.stdout
    assert (checkpoint / "latest").read_text() == f"global_step{ITERATIONS}"


@pytest.mark.slow
def test_tensor_parallel_matches_one_process(reference, sentence_data_prefix, tmp_path):
    result, checkpoint = reference
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + ["--tensor-model-parallel-size", "2"]
    parallel = run_pretrain(flags + ["--save", str(tmp_path / "ckpt")], nproc=2, script="pretrain_bert.py")
    assert "tensor-parallel 2" in parallel.check().stdout
    assert sorted(parallel.losses) == sorted(result.losses)
    for iteration, loss in result.losses.items():
        assert parallel.losses[iteration] == pytest.approx(loss, rel=1e-5), (iteration, parallel.losses)
    assert sop_losses(parallel) == pytest.approx(sop_losses(result), rel=1e-5)
    # The two ranks' shards (the output bias split by vocabulary like the embedding) merge into the weights
    # the single process trained.
    assert read_full_model(str(tmp_path / "ckpt")).tensor_size == 2
    assert_same_weights(tmp_path / "ckpt", checkpoint)


def assert_pipeline_matches(parallel, reference_result) -> None:
    """The pipeline run logs, at every step, the lm and sop losses the single process logs, and the same
    validation (masked-LM) loss."""
    assert "pipeline 2" in parallel.stdout
    assert sorted(parallel.losses) == sorted(reference_result.losses)
    for iteration, loss in reference_result.losses.items():
        assert parallel.losses[iteration] == pytest.approx(loss, rel=1e-5), (iteration, parallel.losses)
    assert sop_losses(parallel) == pytest.approx(sop_losses(reference_result), rel=1e-5)
    validation = [float(value) for value in VALID_PATTERN.findall(parallel.stdout)]
    reference_validation = [float(value) for value in VALID_PATTERN.findall(reference_result.stdout)]
    assert validation == pytest.approx(reference_validation, rel=1e-5) and validation


@pytest.mark.slow
def test_pipeline_parallel_matches_one_process(reference, pipeline):
    """P=2 (binary head on, ZeRO 1, fp32, dropout off) against one process, and its layer files merge into
    the weights that process trained."""
    result, checkpoint = reference
    parallel, pipeline_checkpoint = pipeline
    assert_pipeline_matches(parallel, result)
    assert read_full_model(str(pipeline_checkpoint)).pipeline_size == 2
    assert_same_weights(pipeline_checkpoint, checkpoint)


@pytest.mark.slow
def test_pipeline_recomputation_keeps_the_losses(pipeline, sentence_data_prefix, tmp_path):
    """DeepSpeed's chunked recomputation (``--recompute-method uniform``) replays the layers with the
    padding mask that travels beside the hidden states."""
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + PIPELINE_2 + [
        "--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
    ]  # fmt: skip
    recomputed = run_pretrain(flags, nproc=2, script="pretrain_bert.py").check()
    assert "activation recomputation: full, chunks of 1 layer(s)" in recomputed.stdout
    assert recomputed.losses == pytest.approx(pipeline[0].losses, rel=1e-6)
    assert len(recomputed.losses) == ITERATIONS
    assert sop_losses(recomputed) == pytest.approx(sop_losses(pipeline[0]), rel=1e-6)


@pytest.mark.slow
def test_tensor_and_pipeline_parallel_match_one_process(reference, sentence_data_prefix, tmp_path):
    """T=2 x P=2 on 4 processes: the activations cross stages split over the tensor-parallel ranks
    (DeepSpeed's pipe partitioning) with the padding mask beside them."""
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + PIPELINE_2
    flags += ["--tensor-model-parallel-size", "2"]
    parallel = run_pretrain(flags, nproc=4, script="pretrain_bert.py").check()
    assert "tensor-parallel 2" in parallel.stdout
    assert_pipeline_matches(parallel, reference[0])


@pytest.mark.slow
def test_pipeline_without_binary_head_matches_one_process(sentence_data_prefix, tmp_path):
    """Masked-LM only: the pipeline's loss is the masked-LM loss, and no sop loss is logged."""
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + ["--bert-no-binary-head"]
    single = run_pretrain(flags, launcher="python", script="pretrain_bert.py").check()
    parallel = run_pretrain(flags + PIPELINE_2, nproc=2, script="pretrain_bert.py").check()
    assert "pipeline 2" in parallel.stdout and "sop loss" not in parallel.stdout
    assert sorted(parallel.losses) == list(range(1, ITERATIONS + 1))
    assert parallel.losses == pytest.approx(single.losses, rel=1e-5)
    assert parallel.losses[ITERATIONS] < parallel.losses[1] - 0.8, parallel.losses


@pytest.mark.slow
def test_resume_without_binary_head_continues_exactly(sentence_data_prefix, tmp_path):
    """6 iterations straight vs 3, stop, resume for 3 more: the same losses and bit-identical weights, with
    dropout on so that the RNG streams must be restored too (BERT without its sentence-order head)."""
    flags = bert_flags(sentence_data_prefix, tmp_path) + [
        "--bert-no-binary-head", "--attention-dropout", "0.1", "--hidden-dropout", "0.1",
        "--train-iters", "6",
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = run_pretrain(flags + ["--save", str(straight)], launcher="python", script="pretrain_bert.py")
    assert "sop loss" not in whole.check().stdout
    first = flags + ["--save", str(split), "--exit-interval", "3"]
    run_pretrain(first, launcher="python", script="pretrain_bert.py").check()
    second = flags + ["--save", str(split), "--load", str(split)]
    resumed = run_pretrain(second, launcher="python", script="pretrain_bert.py").check()
    assert sorted(resumed.losses) == [4, 5, 6]
    for iteration in (4, 5, 6):
        assert resumed.loss_strings[iteration] == whole.loss_strings[iteration]
    for name, tensor in read_full_model(str(straight)).state_dict.items():
        assert torch.equal(read_full_model(str(split)).state_dict[name], tensor), name


@pytest.mark.slow
def test_pipeline_resume_continues_exactly(sentence_data_prefix, tmp_path):
    """As above over two stages, with the binary head: the heads' layer file and the stages' RNG streams
    are restored."""
    flags = bert_flags(sentence_data_prefix, tmp_path, zero_stage=1) + PIPELINE_2 + [
        "--attention-dropout", "0.1", "--hidden-dropout", "0.1", "--train-iters", "6",
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = run_pretrain(flags + ["--save", str(straight)], nproc=2, script="pretrain_bert.py").check()
    first = flags + ["--save", str(split), "--exit-interval", "3"]
    run_pretrain(first, nproc=2, script="pretrain_bert.py").check()
    second = flags + ["--save", str(split), "--load", str(split)]
    resumed = run_pretrain(second, nproc=2, script="pretrain_bert.py").check()
    assert sorted(resumed.losses) == [4, 5, 6]
    for iteration in (4, 5, 6):
        assert resumed.loss_strings[iteration] == whole.loss_strings[iteration]
        assert sop_losses(resumed)[iteration] == sop_losses(whole)[iteration]
    for name, tensor in read_full_model(str(straight)).state_dict.items():
        assert torch.equal(read_full_model(str(split)).state_dict[name], tensor), name


def our_model(checkpoint) -> tuple[BertModel, ModelConfig]:
    full = read_full_model(str(checkpoint))
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    config = ModelConfig(**{key: value for key, value in full.config["model"].items() if key in names})
    model = BertModel(config, binary_head=full.config["masked_lm"]["binary_head"])
    model.load_state_dict(full.state_dict)
    return model.eval(), config


@pytest.mark.parametrize(
    "run", ["reference", pytest.param("pipeline", marks=pytest.mark.slow)], ids=["p1", "p2"]
)
def test_export_to_megatron_bert_gives_the_same_logits(request, run, sentence_data_prefix, tmp_path):
    transformers = pytest.importorskip("transformers")
    from megatron.data.indexed_dataset import MMapIndexedDataset
    from tools.convert_checkpoint_to_hf import main as convert

    _, checkpoint = request.getfixturevalue(run)
    hf_folder = tmp_path / "hf"
    convert(["--load-dir", str(checkpoint), "--save-dir", str(hf_folder)])
    model, config = our_model(checkpoint)
    tokenizer = transformers.BertTokenizer.from_pretrained(str(hf_folder))
    indexed = MMapIndexedDataset(sentence_data_prefix)
    first = tokenizer.decode(indexed[3].tolist())
    second = tokenizer.decode(indexed[4].tolist())
    encoded = tokenizer(
        [first, "and god said"], [second, "let there be light"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        lm_logits, sop_logits = model(
            encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]
        )
    real = encoded["attention_mask"].bool()
    vocab = tokenizer.vocab_size + 2  # [BOS] and [EOS] follow the vocabulary, as in Megatron
    for cls in (transformers.MegatronBertForPreTraining, transformers.MegatronBertForMaskedLM):
        theirs = cls.from_pretrained(str(hf_folder)).eval()
        with torch.no_grad():
            output = theirs(**encoded)
        logits = output.prediction_logits if hasattr(output, "prediction_logits") else output.logits
        assert logits.shape[-1] == vocab
        torch.testing.assert_close(logits[real], lm_logits[..., :vocab][real], atol=1e-4, rtol=1e-4)
        if hasattr(output, "seq_relationship_logits"):
            torch.testing.assert_close(output.seq_relationship_logits, sop_logits, atol=1e-5, rtol=1e-5)
    assert config.openai_gelu is False


def test_megatron_lm_file_has_the_layout_hf_converter_reads(reference, tmp_path):
    """The structure ``convert_megatron_bert_checkpoint.py`` walks (it is not shipped with transformers 5;
    ``HF_MEGATRON_BERT_CONVERTER`` pointing at a copy runs it too)."""
    from tools.convert_checkpoint_to_hf import main as convert

    _, checkpoint = reference
    out = tmp_path / "release" / "mp_rank_00" / "model_optim_rng.pt"
    convert(["--load-dir", str(checkpoint), "--megatron-lm-out", str(out)])
    saved = torch.load(out, weights_only=False)
    model, config = our_model(checkpoint)
    args = saved["args"]
    assert saved["checkpoint_version"] == 3.0
    assert (args.num_layers, args.hidden_size, args.num_attention_heads) == (2, 64, 4)
    assert args.ffn_hidden_size == 256 and args.max_position_embeddings == 64
    assert args.tokenizer_type == "BertWordPieceLowerCase" and args.bert_binary_head is True
    assert args.openai_gelu is False
    lm = saved["model"]["language_model"]
    embedding = lm["embedding"]
    padded = args.padded_vocab_size
    assert embedding["word_embeddings"]["weight"].shape == (padded, 64)
    assert embedding["position_embeddings"]["weight"].shape == (64, 64)
    assert embedding["tokentype_embeddings"]["weight"].shape == (2, 64)
    encoder = list(lm["encoder"])
    # The converter reads layer keys until the first other key, so the final LayerNorm must come last.
    assert encoder[-2:] == ["final_layernorm.weight", "final_layernorm.bias"]
    assert all(re.match(r"layers\.\d+\.[a-z0-9_.]+\.(weight|bias)$", key) for key in encoder[:-2])
    assert set(lm["pooler"]) == {"dense.weight", "dense.bias"}
    assert set(saved["model"]["lm_head"]) == {
        "dense.weight",
        "dense.bias",
        "layernorm.weight",
        "layernorm.bias",
        "bias",
    }
    assert saved["model"]["lm_head"]["bias"].shape == (padded,)
    assert set(saved["model"]["binary_head"]) == {"weight", "bias"}
    ours = model.state_dict()
    qkv = "layers.1.self_attention.query_key_value.weight"
    torch.testing.assert_close(lm["encoder"][qkv], ours[f"language_model.encoder.{qkv}"])
    converter = os.environ.get("HF_MEGATRON_BERT_CONVERTER")
    if converter:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run([sys.executable, converter, str(out)], check=True, env=env, cwd=tmp_path)
        hf_model = pytest.importorskip("transformers").MegatronBertForPreTraining.from_pretrained(
            str(out.parent)
        )
        assert hf_model.config.num_hidden_layers == 2


def test_checkpoint_util_resplits_bert_for_another_tensor_size(reference, tmp_path):
    from tools.checkpoint_util import main as checkpoint_util

    _, checkpoint = reference
    target = tmp_path / "t2"
    checkpoint_util(
        ["--load-dir", str(checkpoint), "--save-dir", str(target), "--target-tensor-parallel-size", "2"]
    )
    resplit, original = read_full_model(str(target)), read_full_model(str(checkpoint))
    assert resplit.tensor_size == 2
    for name, tensor in original.state_dict.items():
        assert torch.equal(resplit.state_dict[name], tensor), name


@pytest.mark.slow
def test_checkpoint_util_moves_bert_between_pipeline_layouts(reference, pipeline, tmp_path):
    """P=1 -> P=2 writes the layer files that training over two stages writes, with the same keys; P=2 ->
    P=1 merges them back. Weights are carried unchanged both ways."""
    from tools.checkpoint_util import main as checkpoint_util

    _, checkpoint = reference
    _, pipeline_checkpoint = pipeline
    to_pipeline = checkpoint_util(["--load-dir", str(checkpoint), "--save-dir", str(tmp_path / "p2"),
                                   "--target-pipeline-parallel-size", "2"])  # fmt: skip
    trained_folder = pipeline_checkpoint / f"global_step{ITERATIONS}"
    trained_layers = sorted(path.name for path in trained_folder.glob("layer_*"))
    assert sorted(path.name for path in Path(to_pipeline).glob("layer_*")) == trained_layers
    for name in trained_layers:
        converted = torch.load(Path(to_pipeline) / name, weights_only=True)
        assert set(converted) == set(torch.load(trained_folder / name, weights_only=True)), name
    assert_same_weights(tmp_path / "p2", checkpoint, exact=True)
    checkpoint_util(["--load-dir", str(pipeline_checkpoint), "--save-dir", str(tmp_path / "p1")])
    assert read_full_model(str(tmp_path / "p1")).pipeline_size == 1
    assert_same_weights(tmp_path / "p1", pipeline_checkpoint, exact=True)
