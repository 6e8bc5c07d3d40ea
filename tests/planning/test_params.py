"""Parameter counts from the shape alone equal the parameters of the model the toolkit builds: GPT,
LLaMA-style, tensor-parallel shards, MoE layers, and the pipeline stages DeepSpeed cuts."""

from __future__ import annotations

import os

import deepspeed
import pytest
import torch
import torch.multiprocessing as mp

from megatron.config.schema import ModelConfig, MoEConfig, RecomputeConfig
from megatron.model import GPTModel
from megatron.model.gpt_pipe import gpt_pipeline_module
from megatron.parallel.context import ParallelContext, build_parallel_context
from megatron.planning.layout import Layout
from megatron.planning.params import count_parameters
from tests.launch import free_port

GPT = dict(
    num_layers=3, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, seq_length=32,
    max_position_embeddings=48, padded_vocab_size=256,
)  # fmt: skip
# rotary, SwiGLU, RMSNorm, no biases, untied output, 4 query heads sharing 2 key/value heads
LLAMA = dict(
    GPT, rotary_position_embeddings=True, learned_position_embeddings=False, swiglu=True,
    normalization="rmsnorm", add_bias_linear=False, untie_embeddings_and_output_weights=True,
    num_key_value_heads=2, ffn_hidden_size=96,
)  # fmt: skip
SHAPES = {"gpt": GPT, "llama": LLAMA}


def layout(tensor: int = 1, pipeline: int = 1) -> Layout:
    return Layout(tensor, pipeline, 1, 0, 1, 1)


def built_parameters(model: torch.nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("tensor", [1, 2])
def test_counts_equal_the_built_model_on_each_tensor_parallel_rank(shape, tensor):
    config = ModelConfig(**SHAPES[shape])
    counts = count_parameters(config, layout(tensor))
    for rank in range(tensor):
        model = GPTModel(config, ParallelContext(tensor_rank=rank, tensor_size=tensor))
        assert counts.per_rank == built_parameters(model)
    assert counts.total == built_parameters(GPTModel(config))


@pytest.mark.parametrize("mlp_type", ["standard", "residual"])
def test_moe_layers_count_gate_experts_and_residual_mlp(mlp_type):
    config = ModelConfig(**GPT)
    moe = MoEConfig(experts_per_layer=(1, 4, 1), mlp_type=mlp_type)
    model = GPTModel(config, ParallelContext.single(), moe=moe)
    assert count_parameters(config, layout(), moe).per_rank == built_parameters(model)
    assert count_parameters(config, layout(), moe).total > count_parameters(config, layout()).total


def _pipeline_stage(rank: int, port: int, shape: str, tensor: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = str(2 * tensor)
    deepspeed.init_distributed("gloo", verbose=False)
    try:
        context = build_parallel_context(tensor, pipeline_size=2)
        module = gpt_pipeline_module(
            ModelConfig(**SHAPES[shape]), context, 1234, RecomputeConfig(), "parameters"
        )
        results[rank] = (context.pipeline_rank, built_parameters(module))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("shape,tensor", [("gpt", 1), ("llama", 2)])
def test_pipeline_stages_hold_what_deepspeed_partitions(shape, tensor):
    world = 2 * tensor
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _pipeline_stage, args=(free_port(), shape, tensor, results), nprocs=world, start_method="spawn"
        )
        measured = dict(results)
    counts = count_parameters(ModelConfig(**SHAPES[shape]), layout(tensor, pipeline=2))
    assert sorted(stage for stage, _ in measured.values()) == sorted(list(range(2)) * tensor)
    for stage, parameters in measured.values():
        assert parameters == counts.per_stage[stage]
    assert counts.per_rank == max(counts.per_stage)
