"""The model presets: each one's flags pass the toolkit's own validation at the preset's world size, and
the model they build has the parameter count its name says (built on the meta device, the real modules)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
import torch
import transformers

from megatron.checkpointing.hf_gpt2 import gpt2_config
from megatron.checkpointing.hf_llama import llama_config
from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.presets import PRESETS, Preset, get_preset, main
from megatron.model import GPTModel
from megatron.model.bert import BertModel
from tests.launch import REPO_ROOT

# Parameters in the published models (dense parts for the MoE one), from the names and the papers'
# tables: GPT-3 (Brown et al., table 2.1), LLaMA-2 (6.74B, 13.0B, 69.0B), BERT (110M, 340M).
PUBLISHED = {
    "gpt-125m": 125e6, "gpt-350m": 350e6, "gpt-1.3b": 1.3e9, "gpt-2.7b": 2.7e9, "gpt-6.7b": 6.7e9,
    "gpt-13b": 13e9, "gpt-175b": 175e9, "llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama2-70b": 69.0e9,
    "bert-base": 110e6, "bert-large": 340e6,
}  # fmt: skip
TOKENIZER_FLAGS = {
    "gpt": ["--vocab-file", "vocab.json", "--merge-file", "merges.txt"],
    "llama": ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", "tokenizer.model"],
    "bert": ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", "vocab.txt"],
}


def preset_config(preset: Preset, tmp_path, flags: list[str], world_size: int):
    ds = tmp_path / "ds_config.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}}))
    # The run's own flags first, so that the preset's (given later) win where both say (--lr, the batch).
    argv = ["--train-iters", "10", "--lr", "1e-4", "--micro-batch-size", "1", "--data-path", "data"]
    argv += ["--deepspeed", "--deepspeed_config", str(ds), *TOKENIZER_FLAGS[preset.shape.family], *flags]
    model_type = "bert" if preset.shape.family == "bert" else "gpt"
    return build_config(parse_args(argv), world_size, preset.shape.vocab_size, model_type)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_flags_validate_at_its_world_size(name, tmp_path):
    preset = get_preset(name)
    config = preset_config(preset, tmp_path, preset.flags(), preset.layout.world_size)
    layout = preset.layout
    assert config.parallel.tensor_model_parallel_size == layout.tensor_parallel
    assert config.parallel.pipeline_model_parallel_size == layout.pipeline_parallel
    assert config.batch.data_parallel_size == layout.data_parallel
    assert (config.batch.micro_batch_size, config.batch.global_batch_size) == (
        layout.micro_batch_size,
        layout.global_batch_size,
    )
    assert config.deepspeed.zero_stage == layout.zero_stage
    assert config.optimizer.lr == preset.lr
    assert max(config.moe.experts_per_layer, default=1) == preset.shape.num_experts


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_builds_the_published_parameter_count(name, tmp_path):
    preset = get_preset(name)
    model = preset_config(preset, tmp_path, preset.model_flags(), 1).model
    with torch.device("meta"):
        module = GPTModel(model) if preset.shape.family != "bert" else BertModel(model)
    parameters = sum(p.numel() for p in module.parameters())
    assert parameters == pytest.approx(PUBLISHED[name], rel=0.06), parameters


def test_llama_presets_are_llama_shaped(tmp_path):
    model = preset_config(get_preset("llama2-70b"), tmp_path, get_preset("llama2-70b").model_flags(), 1).model
    assert (model.swiglu, model.normalization, model.add_bias_linear) == (True, "rmsnorm", False)
    assert model.rotary_position_embeddings and not model.learned_position_embeddings
    assert model.untie_embeddings_and_output_weights and model.kv_heads == 8
    assert model.padded_vocab_size == 32000


def test_cli_prints_the_flags_and_recipe_variables(capsys):
    assert main(["gpt-1.3b", "--flags"]) == 0
    assert shlex.split(capsys.readouterr().out) == get_preset("gpt-1.3b").flags()
    script = 'eval "$(python3 -m megatron.config.presets llama2-70b --shell)"; echo $TP $NUM_LAYERS'
    shell = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT, env={**os.environ, "NUM_LAYERS": "2"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shell.stdout.split() == ["8", "2"]  # the environment overrides the preset
    assert main(["--list"]) == 0
    assert len(re.findall(r"node\(s\)", capsys.readouterr().out)) == len(PRESETS)


def test_llama2_7b_is_transformers_default_llama(tmp_path):
    """transformers' LlamaConfig defaults are LLaMA-2 7B's shape; the preset's exported config has it."""
    model = preset_config(get_preset("llama2-7b"), tmp_path, get_preset("llama2-7b").model_flags(), 1).model
    exported, default = llama_config(model, 32000), transformers.LlamaConfig()
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    assert {f: getattr(exported, f) for f in fields} == {f: getattr(default, f) for f in fields}
    assert exported.num_key_value_heads == default.num_key_value_heads


@pytest.mark.parametrize("name", ["gpt-1.3b", "gpt-13b", "llama2-13b", "llama2-70b"])
def test_preset_has_the_parameters_of_its_huggingface_export(name, tmp_path):
    """Our modules and HF's GPT2LMHeadModel / LlamaForCausalLM of the exported config, both on the meta
    device, hold the same number of parameters (GPT-2 at the padded vocabulary, which export keeps)."""
    preset = get_preset(name)
    model = preset_config(preset, tmp_path, preset.model_flags(), 1).model
    with torch.device("meta"):
        ours = sum(p.numel() for p in GPTModel(model).parameters())
        if preset.shape.family == "llama":
            hf = transformers.LlamaForCausalLM(llama_config(model, model.padded_vocab_size))
        else:
            hf = transformers.GPT2LMHeadModel(gpt2_config(model, model.padded_vocab_size))
    assert sum(p.numel() for p in hf.parameters()) == ours
