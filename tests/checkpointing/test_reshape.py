"""Converting checkpoints between tensor/pipeline layouts (tools/checkpoint_util.py and
megatron/checkpointing/layout.py, reshape.py).

The fast tests write checkpoints in-process from a randomly initialised GPTModel. The slow ones train a tiny
GPT with T=2, P=2 on 4 processes through pretrain_gpt.py, convert its checkpoint, and check that every
target layout holds the same model: the same logits in-process (T=1 model, and T=1 pipeline stages loaded
from the layer files) and the same loss when pretrain_gpt.py continues from it in the target layout, which
must also carry on counting iterations and samples from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron.checkpointing import layout, reshape, universal
from megatron.config.errors import ConfigError
from megatron.config.schema import ModelConfig, ParallelConfig
from megatron.model import GPTModel
from megatron.model.gpt import parallel_lm_logits
from megatron.model.gpt_pipe import EmbeddingPipe, OutputLayerPipe, TransformerLayerPipe
from megatron.model.norm import build_norm
from megatron.parallel.context import ParallelContext
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config
from tools.checkpoint_util import main as checkpoint_util

TARGETS = [(1, 1), (1, 2), (2, 1)]


def small_model(padded_vocab_size: int = 128, make_vocab_size_divisible_by: int = 64) -> ModelConfig:
    return ModelConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16,
        max_position_embeddings=16, padded_vocab_size=padded_vocab_size,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by, attention_dropout=0.0, hidden_dropout=0.0,
    )  # fmt: skip


def full_model(model: ModelConfig, tensor_size: int = 1, pipeline_size: int = 1, seed: int = 7):
    """A FullModel as read_full_model returns it, from a fresh GPTModel (no tokenizer files in its config)."""
    parallel = ParallelConfig(
        tensor_model_parallel_size=tensor_size, pipeline_model_parallel_size=pipeline_size
    )
    config = {
        "model": dataclasses.asdict(model),
        "parallel": dataclasses.asdict(parallel),
        "batch": {"data_parallel_size": 1},
        "data": {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": None, "merge_file": None},
    }
    state = GPTModel(model, seed=seed).state_dict()
    return layout.FullModel(state, config, 10, 80, 16, tensor_size, pipeline_size, 1, {"num_samples": 80})


def assert_same_state(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_split_dimensions_are_those_of_the_parallel_layers():
    """The converter's table and the layers' own partition_dim attributes must never disagree."""
    for name, param in GPTModel(small_model()).named_parameters():
        expected = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        assert reshape.tensor_parallel_dim(name) == expected, name


def test_every_layout_round_trips(tmp_path):
    source = full_model(small_model(padded_vocab_size=256))
    previous = source
    for index, (tensor, pipeline) in enumerate([(2, 2), (1, 2), (4, 1), (2, 1), (1, 1)]):
        out = str(tmp_path / str(index))
        folder = Path(layout.write_model_checkpoint(out, previous, tensor, pipeline, true_vocab_size=256))
        files = sorted(path.name for path in folder.iterdir())
        assert files == sorted(
            layout.required_files(tensor, pipeline, layout.layer_prefixes_of(previous.config))
        )
        back = layout.read_full_model(str(tmp_path / str(index)))
        assert_same_state(back.state_dict, source.state_dict)
        assert (back.tensor_size, back.pipeline_size) == (tensor, pipeline)
        assert (back.iteration, back.consumed_train_samples, back.consumed_valid_samples) == (10, 80, 16)
        assert (back.skipped_iterations, back.lr_scheduler) == (1, {"num_samples": 80})
        client = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)
        assert client["converted_from"] == {
            "tensor": previous.tensor_size,
            "pipeline": previous.pipeline_size,
        }
        assert client["config"]["parallel"]["tensor_model_parallel_size"] == tensor
        assert client["config"]["parallel"]["pipeline_model_parallel_size"] == pipeline
        assert client["checkpoint_version"] == 3.0 and "rng_state" not in client
        assert not list(folder.glob("*optim_states.pt"))
        assert (folder.parent / "latest").read_text() == "global_step10"
        assert (folder.parent / "latest_checkpointed_iteration.txt").read_text() == "10"
        previous = back


# LLaMA-style: SwiGLU's [gate; up] is split in two parts, key/value heads are grouped, the output layer is
# a pipeline layer of its own.
LLAMA_VARIANT = dict(
    num_key_value_heads=2, swiglu=True, normalization="rmsnorm", add_bias_linear=False,
    untie_embeddings_and_output_weights=True, learned_position_embeddings=False,
    rotary_position_embeddings=True,
)  # fmt: skip


@pytest.mark.parametrize("variant", [{}, LLAMA_VARIANT], ids=["gpt", "llama"])
def test_tensor_parallel_files_hold_what_each_rank_builds(tmp_path, variant):
    """Per-rank state dicts are, value for value, what GPTModel(T=2) ranks build from the same seed (the
    initialisation does not depend on T), and the pipeline layer files load strictly into the pipeline
    layers (their shapes and names are what DeepSpeed's loaders hand to those modules)."""
    model = dataclasses.replace(small_model(), **variant)
    source = full_model(model)
    folder = Path(layout.write_model_checkpoint(str(tmp_path / "t2"), source, 2, 1))
    for rank in range(2):
        context = ParallelContext(tensor_rank=rank, tensor_size=2)
        module = torch.load(folder / f"mp_rank_{rank:02d}_model_states.pt", weights_only=True)["module"]
        assert_same_state(module, GPTModel(model, context, seed=7).state_dict())
    folder = Path(layout.write_model_checkpoint(str(tmp_path / "t2p2"), source, 2, 2))
    context = ParallelContext(tensor_rank=1, tensor_size=2)
    for index, module in pipeline_layers(model, context):
        state = torch.load(folder / f"layer_{index:02d}-model_01-model_states.pt", weights_only=True)
        module.load_state_dict(state, strict=True)
    assert layout.read_full_model(str(tmp_path / "t2p2")).state_dict.keys() == source.state_dict.keys()


def test_vocabulary_is_repadded_for_the_target_tensor_size(tmp_path):
    """A 60-token tokenizer pads to 128 rows for T=2 (multiples of 64 x 2), to 64 for T=1 and 256 for T=4."""
    source = full_model(small_model(padded_vocab_size=128), tensor_size=2)
    table = source.state_dict[reshape.WORD_EMBEDDINGS]
    layout.write_model_checkpoint(str(tmp_path / "t1"), source, 1, 1, true_vocab_size=60)
    smaller = layout.read_full_model(str(tmp_path / "t1"))
    assert torch.equal(smaller.state_dict[reshape.WORD_EMBEDDINGS], table[:64])
    assert smaller.config["model"]["padded_vocab_size"] == 64
    # 256 rows whatever the tokenizer's size (1..128), so no size is needed; the new rows are zeros.
    layout.write_model_checkpoint(str(tmp_path / "t4"), source, 4, 1)
    larger = layout.read_full_model(str(tmp_path / "t4")).state_dict[reshape.WORD_EMBEDDINGS]
    assert torch.equal(larger[:128], table) and not larger[128:].any()
    with pytest.raises(ConfigError, match=r"one of \[64, 128\] rows.*--true-vocab-size"):
        layout.write_model_checkpoint(str(tmp_path / "ambiguous"), source, 1, 1)
    with pytest.raises(ConfigError, match="--true-vocab-size 200 does not match the checkpoint"):
        layout.write_model_checkpoint(str(tmp_path / "wrong"), source, 1, 1, true_vocab_size=200)


def test_client_state_with_numpy_rng_state_loads(tmp_path):
    """Checkpoints saved before the RNG state was stored as tensors hold numpy arrays: still read with
    weights_only=True, numpy's array and dtype classes allowed by name."""
    path = tmp_path / "old.pt"
    torch.save({"rng_state": {"np_rng_state": np.random.get_state()}, "module": {"w": torch.ones(2)}}, path)
    state = layout.load_file(str(path))
    assert state["rng_state"]["np_rng_state"][1].dtype == np.uint32
    assert torch.equal(state["module"]["w"], torch.ones(2))


def test_truncated_file_is_named(tmp_path):
    folder = Path(layout.write_model_checkpoint(str(tmp_path / "ckpt"), full_model(small_model()), 2, 1))
    damaged = folder / "mp_rank_01_model_states.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(ConfigError, match=f"checkpoint file {damaged} cannot be read .*truncated"):
        layout.read_full_model(str(tmp_path / "ckpt"))


def test_missing_file_is_named(tmp_path):
    folder = Path(layout.write_model_checkpoint(str(tmp_path / "ckpt"), full_model(small_model()), 2, 2))
    missing = folder / "layer_02-model_01-model_states.pt"
    missing.unlink()
    with pytest.raises(ConfigError, match=f"checkpoint file {missing} is missing .*incomplete"):
        layout.read_full_model(str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "latest").unlink()
    with pytest.raises(ConfigError, match="has no 'latest' file"):
        layout.read_full_model(str(tmp_path / "ckpt"))


def test_command_line_errors_name_the_flag(tmp_path):
    layout.write_model_checkpoint(str(tmp_path / "ckpt"), full_model(small_model()), 1, 1)

    def convert(*flags: str) -> None:
        checkpoint_util(["--load-dir", str(tmp_path / "ckpt"), "--save-dir", str(tmp_path / "out"), *flags])

    with pytest.raises(ConfigError, match="--load-dir .*nowhere does not exist"):
        checkpoint_util(["--load-dir", str(tmp_path / "nowhere"), "--save-dir", str(tmp_path / "out")])
    with pytest.raises(
        ConfigError, match="--target-tensor-parallel-size 3 does not divide .* 4 attention heads"
    ):
        convert("--target-tensor-parallel-size", "3")
    with pytest.raises(ConfigError, match="--target-pipeline-parallel-size 3 is more than .* 2 transformer"):
        convert("--target-pipeline-parallel-size", "3")
    with pytest.raises(ConfigError, match="--target-tensor-parallel-size 0: must be >= 1"):
        convert("--target-tensor-parallel-size", "0")
    # Megatron's habitual flags are accepted.
    convert(
        "--model-type",
        "GPT",
        "--loader",
        "megatron",
        "--saver",
        "megatron",
        "--target-tensor-parallel-size",
        "2",
    )
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        convert()


@pytest.mark.parametrize("variant", [{}, LLAMA_VARIANT], ids=["gpt", "llama"])
@pytest.mark.parametrize("pipeline", [1, 2])
def test_universal_checkpoint_info_describes_every_parameter(pipeline, variant):
    """Each parameter, under the name DeepSpeed's engine gives it, falls in the category of its split."""
    model = dataclasses.replace(small_model(), **variant)
    parallel = ParallelConfig(pipeline_model_parallel_size=pipeline)
    config = {"model": dataclasses.asdict(model), "parallel": dataclasses.asdict(parallel), "data": {}}
    info = universal.universal_checkpoint_info(config)
    renames = layout.engine_parameter_prefixes(config)
    used = set()
    for name, param in GPTModel(model).named_parameters():
        vocabulary = name.endswith(("word_embeddings.weight", "output_layer.weight"))
        if pipeline > 1:
            name = next(engine + name[len(prefix) :] for prefix, engine in renames if name.startswith(prefix))
        dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        categories = {
            key: [pattern for pattern in info[key] if re.match(pattern, name)]
            for key in (
                "tp_replicated_parameter_patterns",
                "parameter_with_row_parallelism_patterns",
                "vocabulary_parameter_patterns",
                "parameter_with_2_sub_params_cat_dim_0",
            )
            if key in info
        }
        assert bool(categories["tp_replicated_parameter_patterns"]) == (dim is None), name
        assert bool(categories["parameter_with_row_parallelism_patterns"]) == (dim == 1), name
        assert bool(categories["vocabulary_parameter_patterns"]) == vocabulary, name
        if model.swiglu:
            two_parts = param.partition_stride == 2
            assert bool(categories["parameter_with_2_sub_params_cat_dim_0"]) == two_parts, name
        used.update(pattern for patterns in categories.values() for pattern in patterns)
    everything = [pattern for key, value in info.items() if key.endswith("_patterns") for pattern in value]
    unused = set(everything) - used - set(info.get("pipeline_replicated_parameter_patterns", []))
    assert not unused, "DeepSpeed's converter refuses patterns that match nothing"


def pipeline_layers(model: ModelConfig, context: ParallelContext) -> list[tuple[int, torch.nn.Module]]:
    """The modules DeepSpeed builds for the pipeline layers that have files, by layer index."""
    layers = [
        (number + 1, TransformerLayerPipe(model, context, number, 0)) for number in range(model.num_layers)
    ]
    final = build_norm(model, context)
    output = [(model.num_layers + 2, OutputLayerPipe(model, context, 0))]
    return [
        (0, EmbeddingPipe(model, context, 0)),
        *layers,
        (model.num_layers + 1, final),
        *(output if model.untie_embeddings_and_output_weights else []),
    ]


def pipeline_logits(folder: Path, model: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Logits through the pipeline layers of a T=1 checkpoint, each loaded from its own file, run in order
    as the stages run them (the last stage's output layer is the first stage's word embedding)."""
    layers = pipeline_layers(model, ParallelContext.single())
    hidden = tokens
    for index, module in layers:
        module.load_state_dict(
            torch.load(folder / f"layer_{index:02d}-model_00-model_states.pt", weights_only=True)
        )
        hidden = module.eval()(hidden)
    embedding = layers[0][1]
    return parallel_lm_logits(hidden, embedding.word_embeddings.weight, ParallelContext.single())


def t1_logits(state_dict: dict, model: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    gpt = GPTModel(model)
    gpt.load_state_dict(state_dict, strict=True)
    return gpt.eval()(tokens)


# --- Slow: a real T=2, P=2 training run, converted, loaded and trained on ---------------------------------


@pytest.fixture(scope="module")
def trained(gpt_data_prefix, tmp_path_factory):
    """4 iterations with T=2, P=2, ZeRO 1 (checkpoints at 2 and 4): the run's losses and its checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(folder / "ds.json", 1)),
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--save", str(folder / "ckpt"), "--save-interval", "2",
    ]  # fmt: skip
    result = run_pretrain(flags, nproc=4).check()
    return folder / "ckpt", result.losses


@pytest.mark.slow
def test_every_target_layout_computes_the_same_logits(trained, tmp_path):
    source, _ = trained
    full = layout.read_full_model(str(source))
    model = ModelConfig(**full.config["model"])
    tokens = torch.randint(0, 8192, (2, model.seq_length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = t1_logits(full.state_dict, model, tokens)
        for tensor, pipeline in TARGETS:
            out = tmp_path / f"t{tensor}p{pipeline}"
            flags = [
                "--target-tensor-parallel-size",
                str(tensor),
                "--target-pipeline-parallel-size",
                str(pipeline),
            ]
            folder = Path(checkpoint_util(["--load-dir", str(source), "--save-dir", str(out), *flags]))
            converted = layout.read_full_model(str(out))
            torch.testing.assert_close(t1_logits(converted.state_dict, model, tokens), expected)
            if (tensor, pipeline) == (1, 1):
                raw = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)["module"]
                torch.testing.assert_close(t1_logits(raw, model, tokens), expected)
            if (tensor, pipeline) == (1, 2):
                torch.testing.assert_close(pipeline_logits(folder, model, tokens), expected)
    assert (converted.iteration, converted.consumed_train_samples) == (4, 32)


@pytest.mark.slow
@pytest.mark.parametrize("tensor,pipeline", TARGETS, ids=[f"t{t}p{p}" for t, p in TARGETS])
def test_training_continues_from_a_converted_checkpoint(trained, gpt_data_prefix, tmp_path, tensor, pipeline):
    """The iteration-2 checkpoint, converted, resumed in the target layout: iteration 3 sees the same weights
    and data as iteration 3 of the original run, so its loss is the original's; counting goes on from 2.

    Needs megatron/checkpointing/checkpoint.py::load_checkpoint to take a checkpoint whose client state has
    ``converted_from`` module-only (no optimizer shards exist), keep its counters and LR schedule, and skip
    its RNG state (there is none).
    """
    source, original_losses = trained
    converted, resumed = tmp_path / "converted", tmp_path / "resumed"
    layout.write_model_checkpoint(
        str(converted), layout.read_full_model(str(source), tag="global_step2"), tensor, pipeline
    )
    flags = tiny_model_flags(gpt_data_prefix, 4) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 1)),
        "--tensor-model-parallel-size", str(tensor), "--pipeline-model-parallel-size", str(pipeline),
        "--load", str(converted), "--save", str(resumed),
    ]  # fmt: skip
    nproc = tensor * pipeline
    result = run_pretrain(flags, nproc=nproc, launcher="python" if nproc == 1 else "torchrun").check()
    assert sorted(result.losses) == [3, 4]
    assert all(math.isfinite(loss) for loss in result.losses.values())
    assert result.losses[3] == pytest.approx(original_losses[3], rel=1e-5)
    assert re.search(r"iteration\s+4/\s+4 .*\| consumed samples:\s+32 \|", result.stdout)
    assert (resumed / "latest").read_text() == "global_step4"
    saved = layout.read_full_model(str(resumed))
    assert (saved.iteration, saved.consumed_train_samples, saved.tensor_size) == (4, 32, tensor)


@pytest.mark.slow
def test_universal_checkpoint_carries_the_optimizer_state(trained, gpt_data_prefix, tmp_path):
    """T=2, P=2 at iteration 2 -> universal -> T=1, P=1: iterations 3 and 4 have the original run's losses,
    which iteration 4 only has when the Adam moments came along (a fresh optimizer gives another loss).

    ``--universal-checkpoint`` sets the ds_config's ``"checkpoint": {"load_universal": true}``.
    """
    source, original_losses = trained
    converted = tmp_path / "universal"
    universal.convert_to_universal(str(source), str(converted), pipeline_size=1, tag="global_step2")
    for tracker in ("latest", "latest_universal"):
        assert (converted / tracker).read_text() == "global_step2"
    ds_config = write_ds_config(tmp_path / "ds.json", 1)
    flags = tiny_model_flags(gpt_data_prefix, 4) + ["--deepspeed_config", str(ds_config)]
    flags += ["--load", str(converted), "--universal-checkpoint"]
    result = run_pretrain(flags, launcher="python").check()
    assert sorted(result.losses) == [3, 4]
    for iteration in (3, 4):
        assert result.losses[iteration] == pytest.approx(original_losses[iteration], rel=1e-5), iteration
