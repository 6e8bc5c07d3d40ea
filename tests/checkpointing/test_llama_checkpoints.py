"""A LLaMA-style model trained by pretrain_gpt.py (T=2, ZeRO 1): its checkpoint reshaped, made universal and
exported to HuggingFace, and each result taken up again where the original run left off."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.checkpointing import layout, universal
from megatron.config.errors import ConfigError
from tests.launch import LLAMA_FLAGS, run_pretrain, tiny_model_flags, write_ds_config
from tools.checkpoint_util import main as checkpoint_util
from tools.convert_checkpoint_to_hf import main as convert_to_hf


def llama_flags(data_prefix: str, tmp_path, iterations: int = 4) -> list[str]:
    return tiny_model_flags(data_prefix, iterations) + LLAMA_FLAGS + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(gpt_data_prefix, tmp_path_factory):
    """4 iterations at T=2, checkpoints at 2 and 4; returns (save folder, losses)."""
    tmp_path = tmp_path_factory.mktemp("llama_trained")
    save = tmp_path / "ckpt"
    flags = llama_flags(gpt_data_prefix, tmp_path) + [
        "--tensor-model-parallel-size", "2", "--save", str(save), "--save-interval", "2",
    ]  # fmt: skip
    result = run_pretrain(flags, nproc=2).check()
    assert "SwiGLU MLP" in result.stdout and "2 key/value heads" in result.stdout
    return save, result.losses


@pytest.mark.slow
def test_reshaped_checkpoint_resumes_at_t1(trained, gpt_data_prefix, tmp_path):
    """T=2 -> T=1: iteration 3 sees the original weights and data, so its loss is the original's (the
    optimizer starts afresh, so later iterations may drift). tools/checkpoint_util.py writes the pipeline
    layout (the untied output layer is a pipeline layer of its own) with the same weights."""
    source, losses = trained
    resume = tmp_path / "t1"
    layout.write_model_checkpoint(str(resume), layout.read_full_model(str(source), tag="global_step2"), 1, 1)
    flags = llama_flags(gpt_data_prefix, tmp_path) + ["--load", str(resume)]
    result = run_pretrain(flags, launcher="python").check()
    assert sorted(result.losses) == [3, 4]
    assert result.losses[3] == pytest.approx(losses[3], rel=1e-5)
    pipeline = tmp_path / "t1p2"
    checkpoint_util(["--load-dir", str(source), "--save-dir", str(pipeline), "--target-tensor-parallel-size",
                     "1", "--target-pipeline-parallel-size", "2"])  # fmt: skip
    original = layout.read_full_model(str(source)).state_dict
    for name, tensor in layout.read_full_model(str(pipeline)).state_dict.items():
        assert torch.equal(tensor, original[name]), name


@pytest.mark.slow
def test_universal_checkpoint_resumes_with_the_optimizer(trained, gpt_data_prefix, tmp_path):
    """T=2 at iteration 2 -> universal -> T=1: iterations 3 and 4 have the original losses, which the
    fourth has only when Adam's moments came along, SwiGLU's [gate; up] cut right included."""
    source, losses = trained
    converted = tmp_path / "universal"
    universal.convert_to_universal(str(source), str(converted), pipeline_size=1, tag="global_step2")
    flags = llama_flags(gpt_data_prefix, tmp_path) + ["--load", str(converted), "--universal-checkpoint"]
    result = run_pretrain(flags, launcher="python").check()
    for iteration in (3, 4):
        assert result.losses[iteration] == pytest.approx(losses[iteration], rel=1e-5), iteration


@pytest.mark.slow
def test_hf_export_and_import_keep_the_model(trained, tmp_path):
    """Export to LlamaForCausalLM: its logits are our model's; import back at T=2: the same weights."""
    transformers = pytest.importorskip("transformers")
    from megatron.model import GPTModel

    source, _ = trained
    hf_folder, back = tmp_path / "hf", tmp_path / "back"
    convert_to_hf(["--load-dir", str(source), "--save-dir", str(hf_folder)])
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_folder).eval()
    full = layout.read_full_model(str(source))
    ours = GPTModel(full.model_config()).eval()
    ours.load_state_dict(full.state_dict)
    tokens = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        expected = ours(tokens)[..., : hf.config.vocab_size]
        torch.testing.assert_close(hf(tokens).logits, expected, rtol=1e-5, atol=1e-5)
    convert_to_hf(
        ["--import-hf", str(hf_folder), "--save-dir", str(back), "--target-tensor-parallel-size", "2"]
    )
    imported = layout.read_full_model(str(back))
    assert imported.tensor_size == 2
    for name, tensor in full.state_dict.items():
        rows = tensor.shape[0] if name.endswith(("word_embeddings.weight", "output_layer.weight")) else None
        torch.testing.assert_close(imported.state_dict[name][:rows], tensor[:rows], rtol=0, atol=0, msg=name)
    assert math.isfinite(float(expected.sum()))


@pytest.mark.slow
def test_megatron_deepspeed_converter_command_line(trained, tmp_path):
    """tools/hf2megads_weight_converter.py with the flags of Megatron-DeepSpeed's fine-tuning script
    (training flags it does not need among them): to HF and back to T=2, and model flags that do not
    describe the HF model refused before anything is written."""
    pytest.importorskip("transformers")
    from tools.hf2megads_weight_converter import main as hf2megads

    source, _ = trained
    hf_folder, back = tmp_path / "hf", tmp_path / "back"
    hf2megads([
        "--hf-ckpt-num-shards", "2", "--hf-ckpt-dir", str(tmp_path / "original"), "--load-mode", "auto",
        "--to-hf-ckpt", "--load", str(source), "--save", str(hf_folder), "--bf16", "--swiglu",
        "--repeated-dataloader",
    ])  # fmt: skip
    model = layout.read_full_model(str(source))
    fields = {
        "num_layers": "--num-layers",
        "hidden_size": "--hidden-size",
        "num_attention_heads": "--num-attention-heads",
        "ffn_hidden_size": "--ffn-hidden-size",
    }
    sizes = [item for field, flag in fields.items() for item in (flag, str(model.config["model"][field]))]
    flags = [
        "--hf-ckpt-dir", str(hf_folder), "--save", str(back), "--tensor-model-parallel-size", "2",
        "--pipeline-model-parallel-size", "1", "--finetune", *sizes,
    ]  # fmt: skip
    hf2megads(flags)
    imported = layout.read_full_model(str(back))
    assert imported.tensor_size == 2
    for name, tensor in model.state_dict.items():
        rows = tensor.shape[0] if name.endswith(("word_embeddings.weight", "output_layer.weight")) else None
        assert torch.equal(imported.state_dict[name][:rows], tensor[:rows]), name
    wrong = [*flags[:3], str(tmp_path / "never"), *flags[4:], "--num-layers", "5"]
    with pytest.raises(ConfigError, match="--num-layers 5 \\(the HF model has 2\\)"):
        hf2megads(wrong)
    assert not (tmp_path / "never").exists()
