"""The step-time model against the toolkit's own FLOP count and the real model's parameters: compute is
the FLOPs of ``flops_per_token`` (plus selective recomputation's attention core) at the achieved rate, the
pipeline bubble is (P-1)/(m+P-1) of the pipelined part, ZeRO's traffic is what its message sizes say."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron.model import GPTModel
from megatron.planning.cost import predict_step
from megatron.planning.gpus import GB, GPUS, Cluster
from megatron.planning.layout import Layout
from megatron.planning.search import PlanRequest
from megatron.training.throughput import flops_per_token

LLAMA = (
    "--num-layers 4 --hidden-size 256 --num-attention-heads 8 --num-key-value-heads 4 --ffn-hidden-size 704 "
    "--seq-length 512 --max-position-embeddings 512 --global-batch-size 64 --bf16 --position-embedding-type "
    "rope --swiglu --normalization rmsnorm --disable-bias-linear --untie-embeddings-and-output-weights"
).split()
NODE = Cluster(num_gpus=8, gpus_per_node=8, gpu=GPUS["H100"])


def model_at(tensor_parallel: int = 1):
    return PlanRequest(tuple(LLAMA), 32000, NODE).model(tensor_parallel)


def layout(**sizes) -> Layout:
    fields = dict(tensor_parallel=1, pipeline_parallel=1, data_parallel=8, zero_stage=1, micro_batch_size=2)
    fields.update(sizes)
    d, micro = fields["data_parallel"], fields["micro_batch_size"]
    tp_up = fields["tensor_parallel"] * fields["pipeline_parallel"] * fields.get("ulysses", 1)
    fields.setdefault("gradient_accumulation_steps", 64 // (micro * d) if tp_up * d == 8 else 1)
    return Layout(**fields)


def achieved_flops(cluster: Cluster) -> float:
    return cluster.gpu.peak_tflops * 1e12 * cluster.efficiencies.matmul


@pytest.mark.parametrize(
    "sizes",
    [
        dict(),
        dict(tensor_parallel=2, data_parallel=4, sequence_parallel=True),
        dict(ulysses=2, data_parallel=4),
    ],
)
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_compute_is_the_flop_count_at_the_achieved_rate(sizes, recompute):
    model = model_at(sizes.get("tensor_parallel", 1))
    plan = layout(recompute=recompute, **sizes)
    step = predict_step(model, plan, NODE, "bf16")
    tokens = plan.global_batch_size * model.seq_length
    expected = flops_per_token(model, recompute == "full") * tokens
    if recompute == "selective":  # the attention core's forward once more: a third of its 3-pass FLOPs
        core = flops_per_token(model) - flops_per_token(dataclasses.replace(model, seq_length=0))
        expected += core / 3 * tokens
    assert step.compute * achieved_flops(NODE) * NODE.num_gpus == pytest.approx(expected, rel=1e-9)
    assert step.model_flops_per_step == pytest.approx(flops_per_token(model) * tokens)
    assert step.tokens_per_s == pytest.approx(tokens / step.total)
    assert step.mfu == pytest.approx(step.model_flops_per_step / step.total / (NODE.num_gpus * 989e12))


def test_bubble_is_the_pipeline_fill_and_vanishes_with_many_micro_batches():
    model, p = model_at(), 4
    fractions = []
    for micro_batches in (1, 4, 16, 256):
        plan = layout(
            pipeline_parallel=p,
            data_parallel=2,
            micro_batch_size=1,
            gradient_accumulation_steps=micro_batches,
        )
        step = predict_step(model, plan, NODE, "bf16")
        pipelined = step.compute + step.memory_bound + step.tensor_parallel + step.pipeline_p2p + step.bubble
        assert step.bubble / pipelined == pytest.approx((p - 1) / (micro_batches + p - 1))
        fractions.append(step.bubble / pipelined)
    assert fractions == sorted(fractions, reverse=True) and fractions[-1] < 0.012
    no_pipeline = predict_step(model, layout(micro_batch_size=1, gradient_accumulation_steps=8), NODE, "bf16")
    assert no_pipeline.bubble == 0 and no_pipeline.pipeline_p2p == 0


def real_parameters(model) -> int:
    """The parameters of the toolkit's GPT built on the meta device."""
    with torch.device("meta"):
        module = GPTModel(model)
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("stage, per_step", [(0, 2.0), (1, 3.0), (2, None), (3, None)])
def test_zero_traffic_is_the_message_sizes_of_the_real_parameters(stage, per_step):
    model = model_at()
    parameters = real_parameters(model)
    d, m = 8, 4
    plan = layout(zero_stage=stage, micro_batch_size=2, gradient_accumulation_steps=m)
    step = predict_step(model, plan, NODE, "bf16")
    share = (d - 1) / d * parameters * 2  # bf16 bytes
    # stage 2: a gradient reduce-scatter per micro batch, one weight all-gather; stage 3: two weight
    # all-gathers (forward, backward) and a gradient reduce-scatter per micro batch.
    collectives = {0: per_step, 1: per_step, 2: m + 1, 3: 3 * m}[stage]
    assert step.data_parallel_bytes == pytest.approx(collectives * share, rel=1e-12)
    overlap = (
        NODE.efficiencies.zero3_prefetch_overlap if stage == 3 else NODE.efficiencies.data_parallel_overlap
    )
    bandwidth = NODE.gpu.intra_node_gbps * GB * NODE.efficiencies.intra_node
    assert step.data_parallel == pytest.approx((1 - overlap) * collectives * share / bandwidth)


def test_data_parallel_over_nodes_uses_the_network():
    model = model_at()
    two_nodes = dataclasses.replace(NODE, num_gpus=16)
    within = layout(tensor_parallel=8, data_parallel=2, gradient_accumulation_steps=1)
    across = predict_step(model_at(8), within, two_nodes, "bf16")
    network = two_nodes.gpu.inter_node_gbps * GB * two_nodes.efficiencies.inter_node
    assert across.data_parallel == pytest.approx(across.data_parallel_bytes / network)
    one_node = predict_step(model, layout(data_parallel=8, gradient_accumulation_steps=4), NODE, "bf16")
    nvlink = NODE.gpu.intra_node_gbps * GB * NODE.efficiencies.intra_node
    assert one_node.data_parallel == pytest.approx(one_node.data_parallel_bytes / nvlink)


def test_offload_moves_the_update_to_the_cpu():
    model = model_at()
    on_gpu = predict_step(model, layout(zero_stage=2), NODE, "bf16")
    offloaded = predict_step(model, layout(zero_stage=2, offload_optimizer=True), NODE, "bf16")
    assert on_gpu.offload == 0 and offloaded.offload > 0
    assert offloaded.optimizer > on_gpu.optimizer  # CPU Adam is slower than the GPU's HBM-bound update
