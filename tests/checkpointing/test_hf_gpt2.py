"""HuggingFace GPT-2 conversion (megatron/checkpointing/hf_gpt2.py, megatron_lm.py and
tools/convert_checkpoint_to_hf.py): the converted model must compute the same logits as ours, both ways.

Every parameter, biases and LayerNorms included, is given random values first, so that a misplaced or
mis-ordered tensor changes the logits. The fast tests convert in-process and through the tool on
checkpoints written by ``write_model_checkpoint``; the slow one exports a checkpoint that pretrain_gpt.py
trained with T=2, imports the exported folder back, and checks that training from it (--finetune) gives
the losses of training from the original checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megatron.checkpointing import layout  # noqa: E402
from megatron.checkpointing.hf_gpt2 import from_gpt2, qkv_from_hf, qkv_to_hf, to_gpt2  # noqa: E402
from megatron.checkpointing.megatron_lm import megatron_lm_checkpoint  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.config.schema import ModelConfig, ParallelConfig  # noqa: E402
from megatron.data.tokenizer import GPT2BPETokenizer, build_tokenizer  # noqa: E402
from megatron.model import GPTModel  # noqa: E402
from tests.launch import MERGE_FILE, VOCAB_FILE, run_pretrain, tiny_model_flags, write_ds_config  # noqa: E402
from tools.convert_checkpoint_to_hf import main as convert  # noqa: E402

VOCAB = 100  # the "tokenizer" size of the small models: 28 padding rows in a 128-row embedding
HF_CONVERTER_MODULE = "transformers.models.megatron_gpt2.convert_megatron_gpt2_checkpoint"
HF_CONVERTER_ENV = "HF_MEGATRON_GPT2_CONVERTER"


def small_model(padded_vocab_size: int = 128, **overrides) -> ModelConfig:
    shape = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=192, seq_length=16,
        max_position_embeddings=16, padded_vocab_size=padded_vocab_size, attention_dropout=0.0,
        hidden_dropout=0.0, layernorm_epsilon=1e-5,
    )  # fmt: skip
    return ModelConfig(**{**shape, **overrides})


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model in eval mode with noise on every parameter (biases start at 0 and LayerNorms at 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def our_model(config: ModelConfig, seed: int = 11) -> GPTModel:
    return randomised(GPTModel(config, seed=seed), seed)


def tokens(vocab: int, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (3, seq), generator=torch.Generator().manual_seed(5))


def our_logits(state_dict: dict, config: ModelConfig, batch: torch.Tensor) -> torch.Tensor:
    model = GPTModel(config).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model(batch)


def hf_logits(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batch).logits


def random_gpt2(vocab_size: int = VOCAB, **overrides):
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=16, n_embd=64, n_layer=2, n_head=4, n_inner=None,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, **overrides,
    )  # fmt: skip
    torch.manual_seed(3)
    return randomised(transformers.GPT2LMHeadModel(config), 3)


# --- The mapping, in-process ------------------------------------------------------------------------------


def test_qkv_reordering_is_per_head_to_q_k_v_and_back():
    heads, head_dim, hidden = 4, 3, 5
    # Ours: output row (head, part, d) holds the value 100 * part + 10 * head + d.
    ours = torch.tensor(
        [100 * part + 10 * head + d for head in range(heads) for part in range(3) for d in range(head_dim)]
    )
    hf = qkv_to_hf(ours, heads)
    expected = [
        100 * part + 10 * head + d for part in range(3) for head in range(heads) for d in range(head_dim)
    ]
    assert hf.tolist() == expected
    weight = torch.randn(3 * heads * head_dim, hidden)
    assert torch.equal(qkv_from_hf(qkv_to_hf(weight, heads), heads), weight)


@pytest.mark.parametrize("vocab_size", [None, VOCAB], ids=["padded", "trimmed"])
def test_exported_gpt2_computes_our_logits(vocab_size):
    config = small_model()
    model = our_model(config)
    hf_config, hf_state = to_gpt2(model.state_dict(), config, vocab_size)
    assert hf_config.activation_function == "gelu_new"
    assert hf_config.n_inner == config.ffn_hidden_size
    assert hf_config.vocab_size == (vocab_size or config.padded_vocab_size)
    assert hf_state["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: [in, out]
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict(hf_state, strict=True)
    batch = tokens(VOCAB)
    with torch.no_grad():
        expected = model(batch)[..., : hf_config.vocab_size]
    torch.testing.assert_close(hf_logits(hf_model, batch), expected, atol=1e-5, rtol=1e-5)


def test_imported_gpt2_computes_its_logits_in_our_model():
    hf_model = random_gpt2()
    state, config = from_gpt2(hf_model.state_dict(), hf_model.config)
    assert config.padded_vocab_size == 128 and config.ffn_hidden_size == 4 * 64
    assert torch.equal(state[layout.EMBEDDING_PREFIX + "word_embeddings.weight"][VOCAB:], torch.zeros(28, 64))
    batch = tokens(VOCAB)
    ours = our_logits(state, config, batch)
    torch.testing.assert_close(ours[..., :VOCAB], hf_logits(hf_model, batch), atol=1e-5, rtol=1e-5)
    # Back to GPT-2: the very same tensors.
    _, again = to_gpt2(state, config, VOCAB)
    for name, tensor in hf_model.state_dict().items():
        assert torch.equal(again[name], tensor), name


def test_import_pads_to_make_vocab_size_divisible_by():
    hf_model = random_gpt2(vocab_size=130)
    state, config = from_gpt2(hf_model.state_dict(), hf_model.config, make_vocab_size_divisible_by=64)
    assert config.padded_vocab_size == 192 and config.make_vocab_size_divisible_by == 64
    assert state[layout.EMBEDDING_PREFIX + "word_embeddings.weight"].shape == (192, 64)


def test_save_pretrained_round_trip(tmp_path):
    config = small_model()
    model = our_model(config)
    hf_config, hf_state = to_gpt2(model.state_dict(), config, VOCAB)
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict(hf_state)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    batch = tokens(VOCAB)
    with torch.no_grad():
        expected = model(batch)[..., :VOCAB]
    torch.testing.assert_close(hf_logits(loaded, batch), expected, atol=1e-5, rtol=1e-5)
    state, back_config = from_gpt2(loaded.state_dict(), loaded.config)
    assert dataclasses.replace(back_config, init_method_std=config.init_method_std) == config
    for name, tensor in model.state_dict().items():
        if not name.endswith("word_embeddings.weight"):
            assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"activation_function": "gelu"}, "activation_function 'gelu'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"scale_attn_weights": False}, "scale_attn_weights"),
    ],
)
def test_gpt2_variants_our_model_cannot_compute_are_refused(overrides, message):
    hf_model = random_gpt2(**overrides)
    with pytest.raises(ConfigError, match=message):
        from_gpt2(hf_model.state_dict(), hf_model.config)


def test_untied_or_incomplete_gpt2_weights_are_refused():
    hf_model = random_gpt2()
    state = dict(hf_model.state_dict())
    untied = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    with pytest.raises(ConfigError, match="lm_head.weight different"):
        from_gpt2(untied, hf_model.config)
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ConfigError, match=r"h\.1\.mlp\.c_fc\.bias"):
        from_gpt2(state, hf_model.config)
    with pytest.raises(ConfigError, match="'llama'"):
        from_gpt2(state, transformers.LlamaConfig())


def test_export_refuses_a_vocab_size_beyond_the_embedding():
    config = small_model()
    with pytest.raises(ConfigError, match="--vocab-size 129"):
        to_gpt2(GPTModel(config).state_dict(), config, 129)


# --- Megatron-LM's model_optim_rng.pt ---------------------------------------------------------------------


def flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_megatron_lm_file_nests_our_weights_as_megatron_does(tmp_path):
    config = small_model()
    state = our_model(config).state_dict()
    data = {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": "v.json", "merge_file": "m.txt"}
    path = tmp_path / "model_optim_rng.pt"
    torch.save(megatron_lm_checkpoint(state, config, data, iteration=7), path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["checkpoint_version"] == 3.0 and checkpoint["iteration"] == 7
    language_model = checkpoint["model"]["language_model"]
    assert set(language_model) == {"embedding", "encoder"}
    assert set(language_model["embedding"]) == {"word_embeddings", "position_embeddings"}
    assert "layers.1.self_attention.query_key_value.weight" in language_model["encoder"]
    assert "final_layernorm.bias" in language_model["encoder"]
    flat = flatten(checkpoint["model"])
    assert list(flat) == list(state)
    for name, tensor in state.items():
        assert torch.equal(flat[name], tensor), name
    args = checkpoint["args"]
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.ffn_hidden_size) == (
        2,
        64,
        4,
        192,
    )
    assert (args.padded_vocab_size, args.max_position_embeddings) == (128, 16)
    # HF's converter picks gelu_new from these two, and the tokenizer from tokenizer_type.
    assert args.openai_gelu and not args.bias_gelu_fusion
    assert args.tokenizer_type == "GPT2BPETokenizer"


def hf_megatron_converter():
    """``convert_megatron_checkpoint`` of HF's script: from transformers when it ships it, or from the copy
    of the script that HF_MEGATRON_GPT2_CONVERTER names (transformers' wheels leave the script out)."""
    try:
        return importlib.import_module(HF_CONVERTER_MODULE).convert_megatron_checkpoint
    except ImportError:
        pass
    path = os.environ.get(HF_CONVERTER_ENV)
    if not path:
        pytest.skip(
            f"transformers {transformers.__version__} does not ship {HF_CONVERTER_MODULE}; set "
            f"{HF_CONVERTER_ENV} to a copy of convert_megatron_gpt2_checkpoint.py to run this test"
        )
    spec = importlib.util.spec_from_file_location("convert_megatron_gpt2_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert_megatron_checkpoint


def test_hf_converter_turns_the_megatron_lm_file_into_our_model(tmp_path):
    convert_megatron_checkpoint = hf_megatron_converter()
    config = small_model()
    model = our_model(config)
    path = tmp_path / "model_optim_rng.pt"
    torch.save(megatron_lm_checkpoint(model.state_dict(), config), path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # as the script loads it
    # The script's main() starts from this config, with the GeLU that args' flags select.
    hf_config = transformers.GPT2Config(activation_function="gelu_new", layer_norm_epsilon=1e-5)
    hf_state = convert_megatron_checkpoint(None, checkpoint, hf_config)
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    assert missing == [] and all(re.search(r"\.attn\.(masked_)?bias$", name) for name in unexpected)
    batch = tokens(config.padded_vocab_size)
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(hf_logits(hf_model, batch), expected, atol=1e-5, rtol=1e-5)


# --- The tool, on checkpoints in any layout ---------------------------------------------------------------


def write_checkpoint(folder: Path, model: GPTModel, tensor: int, pipeline: int) -> None:
    """Our (T=1) model as a checkpoint of the given layout, as training would have saved it."""
    config = {
        "model": dataclasses.asdict(model.config),
        "parallel": dataclasses.asdict(ParallelConfig()),
        "batch": {"data_parallel_size": 1},
        "data": {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": None, "merge_file": None},
    }
    full = layout.FullModel(model.state_dict(), config, 10, 80, 16, 1, 1)
    layout.write_model_checkpoint(str(folder), full, tensor, pipeline, true_vocab_size=VOCAB)


@pytest.mark.parametrize("tensor,pipeline", [(1, 1), (2, 2)], ids=["t1p1", "t2p2"])
def test_tool_exports_any_layout_to_a_folder_from_pretrained_loads(tmp_path, tensor, pipeline):
    model = our_model(small_model())
    write_checkpoint(tmp_path / "ckpt", model, tensor, pipeline)
    out, megatron_lm = tmp_path / "hf", tmp_path / "mlm" / "model_optim_rng.pt"
    written = convert(
        ["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(out), "--vocab-size", str(VOCAB),
         "--megatron-lm-out", str(megatron_lm)]
    )  # fmt: skip
    assert written == [str(out), str(megatron_lm)]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    loaded = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert loaded.config.vocab_size == VOCAB
    batch = tokens(VOCAB)
    with torch.no_grad():
        expected = model(batch)[..., :VOCAB]
    torch.testing.assert_close(hf_logits(loaded, batch), expected, atol=1e-5, rtol=1e-5)
    # Megatron-LM at T=1 pads the 100 tokens to 128 rows (T=2 padded them to 256).
    args = torch.load(megatron_lm, weights_only=False)["args"]
    assert args.padded_vocab_size == 128


def test_tool_writes_no_tokenizer_for_a_sentencepiece_run(tmp_path, sentencepiece_model):
    """transformers' conversion of a .model does not always give its ids, so no tokenizer is written rather
    than one that encodes differently; the model and its eos id still are."""
    config = small_model(padded_vocab_size=1024)
    data = {"tokenizer_type": "Llama2Tokenizer", "tokenizer_model": sentencepiece_model}
    full = layout.FullModel(
        our_model(config).state_dict(),
        {"model": dataclasses.asdict(config), "parallel": dataclasses.asdict(ParallelConfig()), "data": data},
        3, 24, 0, 1, 1,
    )  # fmt: skip
    layout.write_model_checkpoint(str(tmp_path / "ckpt"), full, 1, 1)
    convert(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "hf")])
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    eos = build_tokenizer("Llama2Tokenizer", None, None, sentencepiece_model).eod
    assert (hf_config["eos_token_id"], hf_config["vocab_size"]) == (eos, 1000)


def test_tool_writes_the_training_tokenizer_for_auto_tokenizer(tmp_path):
    tokenizer = GPT2BPETokenizer(str(VOCAB_FILE), str(MERGE_FILE))
    config = small_model(padded_vocab_size=tokenizer.vocab_size)  # 8192: already a multiple of 128
    model = our_model(config)
    data = {
        "tokenizer_type": "GPT2BPETokenizer",
        "vocab_file": str(VOCAB_FILE),
        "merge_file": str(MERGE_FILE),
    }
    parallel = ParallelConfig()
    full = layout.FullModel(
        model.state_dict(),
        {"model": dataclasses.asdict(config), "parallel": dataclasses.asdict(parallel), "data": data},
        3, 24, 0, 1, 1,
    )  # fmt: skip
    layout.write_model_checkpoint(str(tmp_path / "ckpt"), full, 1, 1)
    convert(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "hf")])
    files = sorted(os.listdir(tmp_path / "hf"))
    assert files == ["config.json", "merges.txt", "model.safetensors", "tokenizer_config.json", "vocab.json"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "In the beginning God created the heaven and the earth.<|endoftext|> And the earth was"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.tokenize(text)
    assert hf_tokenizer.eos_token_id == tokenizer.eod
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["eos_token_id"], hf_config["vocab_size"]) == (tokenizer.eod, tokenizer.vocab_size)


@pytest.mark.parametrize("tensor,pipeline", [(1, 1), (2, 2)], ids=["t1p1", "t2p2"])
def test_tool_imports_a_gpt2_folder_in_any_layout(tmp_path, tensor, pipeline):
    hf_model = random_gpt2()
    hf_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    out = tmp_path / "ckpt"
    written = convert(
        ["--import-hf", str(tmp_path / "hf"), "--save-dir", str(out), "--target-tensor-parallel-size",
         str(tensor), "--target-pipeline-parallel-size", str(pipeline),
         "--megatron-lm-out", str(tmp_path / "model_optim_rng.pt")]
    )  # fmt: skip
    assert written[0] == str(out / "global_step0")
    full = layout.read_full_model(str(out))
    assert (full.tensor_size, full.pipeline_size, full.iteration) == (tensor, pipeline, 0)
    config = ModelConfig(**full.config["model"])
    assert config.padded_vocab_size == 128 * tensor
    batch = tokens(VOCAB)
    expected = hf_logits(hf_model, batch)
    torch.testing.assert_close(
        our_logits(full.state_dict, config, batch)[..., :VOCAB], expected, atol=1e-5, rtol=1e-5
    )


def test_tool_errors_name_the_flag_or_file(tmp_path):
    def error(*argv: str) -> str:
        with pytest.raises(ConfigError) as caught:
            convert(list(argv))
        return str(caught.value)

    assert "--load-dir" in error("--load-dir", str(tmp_path / "nope"), "--save-dir", str(tmp_path / "hf"))
    assert "no config.json" in error("--import-hf", str(tmp_path), "--save-dir", str(tmp_path / "c"))
    (tmp_path / "bloom").mkdir()
    (tmp_path / "bloom" / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    assert "model_type 'bloom'" in error(
        "--import-hf", str(tmp_path / "bloom"), "--save-dir", str(tmp_path / "c")
    )
    random_gpt2().config.save_pretrained(tmp_path / "noweights")
    assert "model.safetensors" in error(
        "--import-hf", str(tmp_path / "noweights"), "--save-dir", str(tmp_path / "c")
    )
    write_checkpoint(tmp_path / "ckpt", our_model(small_model()), 1, 1)
    assert "nothing to write" in error("--load-dir", str(tmp_path / "ckpt"))
    assert "not empty" in error("--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "ckpt"))
    wrong = error(
        "--load-dir",
        str(tmp_path / "ckpt"),
        "--save-dir",
        str(tmp_path / "x"),
        "--target-tensor-parallel-size",
        "2",
    )
    assert "--target-tensor-parallel-size: not used when exporting" in wrong
    random_gpt2().save_pretrained(tmp_path / "gpt2")
    too_many = error(
        "--import-hf",
        str(tmp_path / "gpt2"),
        "--save-dir",
        str(tmp_path / "c"),
        "--target-tensor-parallel-size",
        "3",
    )
    assert "--target-tensor-parallel-size 3" in too_many


# --- Slow: real training runs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_tensor_parallel_checkpoint_exports_and_imports(gpt_data_prefix, tmp_path):
    """pretrain_gpt.py with T=2 -> the tool -> GPT2LMHeadModel computes the merged checkpoint's logits, and
    its tokenizer is the run's. That folder imported back at T=2 is the same model to training: --finetune
    from it gives the losses of --finetune from the original checkpoint."""
    ds_config = str(write_ds_config(tmp_path / "ds.json", 1))
    tensor_parallel = ["--deepspeed_config", ds_config, "--tensor-model-parallel-size", "2"]
    flags = tiny_model_flags(gpt_data_prefix, 2) + tensor_parallel
    fresh = run_pretrain(flags + ["--save", str(tmp_path / "ckpt")], nproc=2).check().losses
    convert(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "hf")])
    full = layout.read_full_model(str(tmp_path / "ckpt"))
    config = ModelConfig(**full.config["model"])
    tokenizer = GPT2BPETokenizer(str(VOCAB_FILE), str(MERGE_FILE))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert loaded.config.vocab_size == tokenizer.vocab_size
    text = "And God said, Let there be light: and there was light."
    hf_ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"]
    assert hf_ids == tokenizer.tokenize(text)
    batch = torch.tensor([tokenizer.tokenize(text)[: config.seq_length]])
    expected = our_logits(full.state_dict, config, batch)[..., : tokenizer.vocab_size]
    torch.testing.assert_close(hf_logits(loaded, batch), expected, atol=1e-5, rtol=1e-5)

    convert(["--import-hf", str(tmp_path / "hf"), "--save-dir", str(tmp_path / "imported"),
             "--target-tensor-parallel-size", "2"])  # fmt: skip
    losses = {}
    for source in ("ckpt", "imported"):
        load = ["--load", str(tmp_path / source), "--finetune"]
        losses[source] = run_pretrain(flags + load, nproc=2).check().losses
    assert sorted(losses["imported"]) == [1, 2]
    # Both start from the trained weights: the first batch's loss is below what the fresh model had on it.
    assert losses["ckpt"][1] < fresh[1] - 1e-3
    for iteration in (1, 2):
        assert losses["imported"][iteration] == pytest.approx(losses["ckpt"][iteration], rel=1e-6)


def test_tool_casts_the_weights_with_dtype(tmp_path):
    model = our_model(small_model())
    write_checkpoint(tmp_path / "ckpt", model, 1, 1)
    convert(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "hf"), "--dtype", "bf16"])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", dtype="auto")
    assert loaded.transformer.wte.weight.dtype == torch.bfloat16
    assert loaded.config.vocab_size == 128  # no tokenizer known, no --vocab-size: the padded vocabulary
    expected = model.state_dict()[layout.EMBEDDING_PREFIX + "word_embeddings.weight"].to(torch.bfloat16)
    assert torch.equal(loaded.transformer.wte.weight, expected)


def test_import_takes_gpt2model_keys_and_old_attention_buffers():
    """Older GPT-2 files (OpenAI's too) have GPT2Model's names, no lm_head and the causal-mask buffers."""
    hf_model = random_gpt2()
    expected, _ = from_gpt2(hf_model.state_dict(), hf_model.config)
    old = {name.removeprefix("transformer."): tensor for name, tensor in hf_model.state_dict().items()}
    del old["lm_head.weight"]
    for layer in range(2):
        old[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        old[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    state, _ = from_gpt2(old, hf_model.config)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_tool_reads_sharded_and_pytorch_weight_files(tmp_path):
    hf_model = random_gpt2()
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hf_model.config.save_pretrained(tmp_path / "bin")
    batch = tokens(VOCAB)
    for folder in ("sharded", "bin"):
        convert(["--import-hf", str(tmp_path / folder), "--save-dir", str(tmp_path / f"ckpt_{folder}")])
        full = layout.read_full_model(str(tmp_path / f"ckpt_{folder}"))
        logits = our_logits(full.state_dict, ModelConfig(**full.config["model"]), batch)[..., :VOCAB]
        torch.testing.assert_close(logits, hf_logits(hf_model, batch), atol=1e-5, rtol=1e-5)


def test_tool_copies_an_hf_tokenizer_json(tmp_path):
    from megatron.data.tokenizer import HFTokenizer

    (tmp_path / "tok").mkdir()
    GPT2BPETokenizer(str(VOCAB_FILE), str(MERGE_FILE))._tokenizer.save(
        str(tmp_path / "tok" / "tokenizer.json")
    )
    tokenizer = HFTokenizer(str(tmp_path / "tok" / "tokenizer.json"))
    config = small_model(padded_vocab_size=tokenizer.vocab_size)
    data = {"tokenizer_type": "HFTokenizer", "tokenizer_model": str(tmp_path / "tok" / "tokenizer.json")}
    config_dict = {
        "model": dataclasses.asdict(config),
        "parallel": dataclasses.asdict(ParallelConfig()),
        "data": data,
    }
    full = layout.FullModel(our_model(config).state_dict(), config_dict, 1, 8, 0, 1, 1)
    layout.write_model_checkpoint(str(tmp_path / "ckpt"), full, 1, 1)
    convert(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "hf")])
    assert sorted(os.listdir(tmp_path / "hf")) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    text = "Thou shalt love thy neighbour as thyself.<|endoftext|>"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer(text)["input_ids"] == tokenizer.tokenize(text)
