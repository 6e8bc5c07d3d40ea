"""The search: the toolkit's own rules reject layouts with the toolkit's own messages, the ranking follows
the predicted tokens/s, a model too large reports the smallest shortfall, and the ds_config and flags it
writes pass build_config at the cluster's world size."""

from __future__ import annotations

import dataclasses
import shlex
from collections import Counter

import pytest

from megatron.config import parallelism
from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.errors import ConfigError
from megatron.config.schema import ParallelConfig
from megatron.planning.cost import predict_step
from megatron.planning.gpus import GIB, GPUS, Cluster
from megatron.planning.report import render
from megatron.planning.search import PLANNED_DS_CONFIG, PlanRequest, search
from megatron.planning.write import write_layout

GPT = (
    "--num-layers 4 --hidden-size 192 --num-attention-heads 6 --seq-length 256 --max-position-embeddings 256 "
    "--global-batch-size 32 --bf16"
).split()
NODE = Cluster(num_gpus=8, gpus_per_node=4, gpu=GPUS["A100-40"])


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A stand-in for predict_memory's MemoryBreakdown with the fields the search and report read:
    memory grows with the micro batch and shrinks with the model-parallel and ZeRO split, so that the
    memory rejections have a known closest layout."""

    total: float
    host: float = 0.0
    parameters: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    temporary: float = 0.0
    fragmentation: float = 0.0


def footprint(scale_gib: float):
    def memory_model(model, layout, precision, moe=None, dropout=True):
        split = layout.tensor_parallel * layout.pipeline_parallel * layout.ulysses
        states = 1 + layout.zero_stage + (1 if layout.offload_optimizer else 0)
        gib = scale_gib * layout.micro_batch_size / split / states
        return Footprint(total=gib * GIB, activations=gib * GIB, host=GIB if layout.offload_optimizer else 0)

    return memory_model


def request(argv=GPT, cluster=NODE) -> PlanRequest:
    return PlanRequest(tuple(argv), 50257, cluster)


@pytest.fixture(scope="module")
def result():
    return search(request(), footprint(1.0))


def test_a_layout_breaking_a_toolkit_rule_is_rejected_with_that_rules_message(result):
    pipeline_zero2 = [
        r
        for r in result.rejected
        if (r.layout.pipeline_parallel, r.layout.zero_stage, r.layout.tensor_parallel, r.layout.ulysses)
        == (2, 2, 1, 1)
    ]
    assert pipeline_zero2
    parallel = ParallelConfig(world_size=8, pipeline_model_parallel_size=2)
    with pytest.raises(ConfigError) as raised:
        parallelism.check_pipeline_zero_stage(parallel, 2, PLANNED_DS_CONFIG)
    assert {r.detail for r in pipeline_zero2} == {str(raised.value)}
    heads = [r for r in result.rejected if r.layout.tensor_parallel == 4]
    model = request().model(4)
    with pytest.raises(ConfigError) as raised:
        parallelism.check_model_split(
            model, ParallelConfig(world_size=8, tensor_model_parallel_size=4, sequence_parallel=True)
        )
    assert heads and {r.detail for r in heads} == {str(raised.value)}  # 6 heads over 4 ranks
    too_wide = [r for r in result.rejected if r.layout.tensor_parallel == 8]
    assert too_wide and {r.detail for r in too_wide} == {"T=8 > GPUs per node 4"}
    assert not any(c.layout.tensor_parallel in (4, 8) for c in result.feasible)
    rules = Counter(r.rule for r in result.rejected)
    assert (
        rules["--cpu-optimizer with ZeRO stage N"]
        and rules["--pipeline-model-parallel-size N with ZeRO stage N"]
    )


def test_ranking_is_by_predicted_tokens_per_second(result):
    speeds = [c.step.tokens_per_s for c in result.feasible]
    assert len(speeds) > 10 and speeds == sorted(speeds, reverse=True)
    best = result.feasible[0]
    again = predict_step(request().model(best.layout.tensor_parallel), best.layout, NODE, "bf16")
    assert again.tokens_per_s == best.step.tokens_per_s
    assert all(c.layout.num_gpus == 8 and c.layout.global_batch_size == 32 for c in result.feasible)


def test_the_written_layouts_pass_build_config_at_the_world_size(result, tmp_path):
    # The run's own flags, and a T of the user's that the layout's replaces.
    argv = [
        *GPT,
        *"--lr 1e-4 --train-iters 10 --data-path corpus --vocab-file v.json --merge-file m.txt".split(),
    ]
    argv += ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
    shapes = {}
    for candidate in result.feasible:  # one of each shape: T x P x U, ZeRO, recompute, offload
        key = dataclasses.replace(candidate.layout, micro_batch_size=1, gradient_accumulation_steps=1)
        shapes.setdefault(key, candidate.layout)
    assert len(shapes) > 20
    for number, layout in enumerate(shapes.values()):
        _, flags_path = write_layout(tmp_path / str(number), argv, layout, "bf16")
        config = build_config(parse_args(shlex.split(flags_path.read_text())), 8, 50257)
        parallel, batch = config.parallel, config.batch
        assert (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size) == (
            layout.tensor_parallel,
            layout.pipeline_parallel,
        )
        assert (parallel.ds_sequence_parallel_size, parallel.sequence_parallel) == (
            layout.ulysses,
            layout.sequence_parallel,
        )
        assert (batch.micro_batch_size, batch.data_parallel_size, batch.global_batch_size) == (
            layout.micro_batch_size,
            layout.data_parallel,
            32,
        )
        assert config.deepspeed.zero_stage == layout.zero_stage
        assert config.optimizer.cpu_adam == layout.offload_optimizer
        assert config.recompute.granularity == (None if layout.recompute == "none" else layout.recompute)


def test_a_model_too_large_reports_the_smallest_shortfall():
    too_big = search(request(), footprint(2000.0))
    assert not too_big.feasible
    over = [r.shortfall for r in too_big.rejected if r.shortfall is not None]
    # The closest: micro batch 1 over T=2 x P=4 (the widest split that 6 heads and 4 layers allow), ZeRO 1
    # with the optimizer offloaded (ZeRO 2 and 3 refuse pipelines; with P=1, T x U is at most 2).
    assert min(over) == pytest.approx((2000 / (2 * 4) / (1 + 1 + 1) - 40) * GIB)
    text = render(too_big)
    assert f"short by {min(over) / GIB:.1f} GiB" in text and text.startswith("no layout fits: the closest")


def test_host_memory_limits_offload():
    small_host = dataclasses.replace(NODE, host_memory_gib=3.0)  # 4 GPUs x 1 GiB offloaded each
    result = search(request(cluster=small_host), footprint(1.0))
    assert result.feasible and not any(c.layout.offload_optimizer for c in result.feasible)
    assert any(r.rule.startswith("host memory") for r in result.rejected)
