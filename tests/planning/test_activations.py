"""The activation bytes the memory model counts per transformer layer equal what autograd keeps for the
backward of one real layer's forward: its saved tensors (each storage once, the weights left out) and the
inputs DeepSpeed's checkpoint holds for recomputation, for GPT and LLaMA shapes, no/selective/full
recomputation, one rank and two tensor-parallel ranks with and without sequence parallelism.

In fp32: on CPU LayerNorm keeps its mean and rstd in the input's dtype (float32 on CUDA) and dropout keeps
its mask in it too (bool on CUDA), so fp32 is where CPU and CUDA keep the same bytes; the dropout masks
are checked apart, by their element count.
"""

from __future__ import annotations

import os
from dataclasses import replace

import deepspeed
import pytest
import torch
import torch.multiprocessing as mp

from megatron.config.schema import ModelConfig
from megatron.model.transformer import ParallelTransformerLayer
from megatron.parallel.context import ParallelContext, build_parallel_context
from megatron.planning.activations import FLOAT32, MASK, layer_activation_bytes
from megatron.planning.layout import Layout
from tests.launch import free_port
from tests.planning.test_params import GPT, LLAMA

SHAPES = {"gpt": GPT, "llama": LLAMA}
MICRO_BATCH = 2
RECOMPUTE = {"none": {}, "selective": {"recompute_core": True}, "full": {"recompute_layer": True}}


def model_config(shape: str, dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(**SHAPES[shape], attention_dropout=0.0, hidden_dropout=dropout)


def checkpoint_inputs(output: torch.Tensor) -> list[torch.Tensor]:
    """The tensors DeepSpeed's checkpoint functions in ``output``'s graph hold for their recomputation
    (kept on the autograd node as ``deepspeed_saved_tensors``, invisible to saved-tensor hooks)."""
    held, stack, seen = [], [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        held += [
            tensor
            for tensor in getattr(node, "deepspeed_saved_tensors", None) or ()
            if torch.is_tensor(tensor)
        ]
        stack += [parent for parent, _ in node.next_functions]
    return held


def saved_bytes(layer: torch.nn.Module, hidden: torch.Tensor) -> int:
    weights = {param.untyped_storage().data_ptr() for param in layer.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = layer(hidden)
    for tensor in checkpoint_inputs(output):
        keep(tensor)
    return sum(storages.values())


def layer_layout(recompute: str, tensor: int = 1, sequence_parallel: bool = False) -> Layout:
    return Layout(tensor, 1, 1, 0, MICRO_BATCH, 1, recompute=recompute, sequence_parallel=sequence_parallel)


def measure(config: ModelConfig, context: ParallelContext, recompute: str) -> int:
    layer = ParallelTransformerLayer(config, context, 0, 1234, **RECOMPUTE[recompute])
    tokens = config.seq_length // (context.tensor_size if context.sequence_parallel else 1)
    hidden = torch.randn(MICRO_BATCH, tokens, config.hidden_size, requires_grad=True)
    return saved_bytes(layer, hidden)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("recompute", list(RECOMPUTE))
def test_one_rank_layer_keeps_what_the_model_counts(shape, recompute):
    config = model_config(shape)
    predicted = layer_activation_bytes(config, layer_layout(recompute), FLOAT32, dropout=False)
    assert measure(config, ParallelContext.single(), recompute) == predicted


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("recompute", list(RECOMPUTE))
def test_autocast_layer_keeps_its_bf16_weight_copies_too(shape, recompute):
    """fp32 weights under torch.autocast: bf16 activations, an fp32 residual stream, and the bf16 copies
    of the layer's matrices that the linears keep for their backward."""
    config = model_config(shape)
    layout = layer_layout(recompute)
    predicted = layer_activation_bytes(config, layout, 2, FLOAT32, dropout=False, autocast=True)
    with torch.autocast("cpu", torch.bfloat16):
        assert measure(config, ParallelContext.single(), recompute) == predicted


def test_dropout_masks_are_counted_per_element():
    config = model_config("gpt", dropout=0.1)
    layout = layer_layout("none")
    torch.manual_seed(0)
    measured = measure(config, ParallelContext.single(), "none") - measure(
        replace(config, hidden_dropout=0.0), ParallelContext.single(), "none"
    )
    predicted = layer_activation_bytes(config, layout, FLOAT32) - layer_activation_bytes(
        config, layout, FLOAT32, dropout=False
    )
    # CPU's dropout keeps its mask in the activations' dtype, CUDA's one byte per element
    assert measured // FLOAT32 == predicted // MASK > 0


def _tensor_parallel_rank(rank: int, port: int, sequence_parallel: bool, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    deepspeed.init_distributed("gloo", verbose=False)
    try:
        context = build_parallel_context(2, sequence_parallel=sequence_parallel)
        for shape in SHAPES:
            for recompute in RECOMPUTE:
                results[(rank, shape, recompute)] = measure(model_config(shape), context, recompute)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tensor_parallel_layer_keeps_what_the_model_counts(sequence_parallel):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _tensor_parallel_rank,
            args=(free_port(), sequence_parallel, results),
            nprocs=2,
            start_method="spawn",
        )
        measured = dict(results)
    assert len(measured) == 2 * len(SHAPES) * len(RECOMPUTE)
    for (_, shape, recompute), saved in measured.items():
        layout = layer_layout(recompute, tensor=2, sequence_parallel=sequence_parallel)
        assert saved == layer_activation_bytes(model_config(shape), layout, FLOAT32, dropout=False), (
            shape,
            recompute,
        )
