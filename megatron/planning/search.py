"""Enumerate the layouts of a model on a cluster, keep those the toolkit accepts and the GPUs can hold, and
rank them by predicted throughput.

The rules are the toolkit's own: each candidate's flags and ds_config (``megatron.planning.write``, the ones
``--write`` emits) go through the same checks ``build_config`` runs, so a layout is rejected here with the
message the trainer would print. The planner adds only what the trainer cannot know: tensor-parallel groups
must stay inside a node, the memory per GPU and the host memory that offload needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from megatron.config import ds_config, parallelism
from megatron.config.arguments import build_parser, parse_args
from megatron.config.build import _check_fp16_stage, _model_config
from megatron.config.errors import ConfigError
from megatron.config.moe import check_moe_tokens, check_moe_zero_stage, moe_config
from megatron.config.offload import offload_optimizer
from megatron.config.recompute import recompute_config
from megatron.config.schema import ModelConfig, MoEConfig
from megatron.planning.cost import StepTime, predict_step
from megatron.planning.gpus import GIB, Cluster
from megatron.planning.layout import Layout, Precision, Recompute
from megatron.planning.write import ds_config_for, layout_flags

# The host holds more than the offloaded states the memory model counts (the process, DeepSpeed's and the
# allocator's copies): on one H200's host (bench/RESULTS.md) a 2.7B with ZeRO-2 offload peaked at 1.39x
# its predicted states, and a 7B with ZeRO-3 offload predicted at 113 GiB was killed on a 126 GiB host.
HOST_MARGIN = 1.4
RECOMPUTE: tuple[Recompute, ...] = ("none", "selective", "full")
PLANNED_DS_CONFIG = "<planned ds_config.json>"
MemoryModel = Callable[..., Any]


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for: the ``pretrain_gpt.py`` flags (model, batch, precision, anything else the run
    takes; no layout flags), the tokenizer's vocabulary before padding, and the cluster."""

    argv: tuple[str, ...]
    vocab_size: int
    cluster: Cluster

    @functools.cached_property
    def args(self) -> argparse.Namespace:
        return parse_args(list(self.argv))

    @functools.cached_property
    def parser(self) -> argparse.ArgumentParser:
        """One parser for all candidates' flags (building it is most of a parse's time)."""
        return build_parser()

    @property
    def precision(self) -> Precision:
        return "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"

    @property
    def global_batch_size(self) -> int:
        if self.args.global_batch_size is None:
            raise ConfigError("--global-batch-size is required: the planner splits that batch over the GPUs.")
        return self.args.global_batch_size

    def model(self, tensor_parallel: int) -> ModelConfig:
        """The model as ``build_config`` makes it (the vocabulary padding depends on T)."""
        return _model_config(self.args, self.vocab_size, tensor_parallel, "gpt")


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    memory: Any  # megatron.planning.memory.MemoryBreakdown
    step: StepTime


@dataclass(frozen=True)
class Rejection:
    """``rule``: the reason's group (the first sentence of the toolkit's message with its numbers taken
    out, or the planner's own); ``detail``: the message for this layout; ``shortfall``: bytes over the
    memory for a memory rejection."""

    layout: Layout
    rule: str
    detail: str
    shortfall: float | None = None


@dataclass
class SearchResult:
    feasible: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def enumerate_layouts(request: PlanRequest) -> Iterator[Layout]:
    """Every layout of the request's GPUs and batch: T x Ulysses x P dividing the GPUs (T up to the whole
    cluster, so that too-wide T is reported), P dividing the layers, D the rest, ZeRO 0-3, every micro
    batch dividing global / D, each recomputation, offload of the optimizer (and with ZeRO-3 of the
    parameters too). Megatron's sequence parallelism is on whenever T > 1 without Ulysses (the toolkit
    takes one sequence split at a time): it moves the same bytes as the plain all-reduces and keeps 1/T of
    the norms' and dropouts' activations. The expert-parallel size is the run's --moe-expert-parallel-size."""
    gpus, layers, global_batch = request.cluster.num_gpus, request.args.num_layers, request.global_batch_size
    for t in divisors(gpus):
        for u in divisors(gpus // t):
            for p in (p for p in divisors(gpus // (t * u)) if layers % p == 0):
                d = gpus // (t * u * p)
                micro_batches = divisors(global_batch // d) if global_batch % d == 0 else [0]
                for stage in range(4):
                    for offload in _offloads(stage):
                        for recompute in RECOMPUTE:
                            for micro in micro_batches:
                                yield Layout(
                                    tensor_parallel=t,
                                    pipeline_parallel=p,
                                    data_parallel=d,
                                    zero_stage=stage,
                                    micro_batch_size=micro,
                                    gradient_accumulation_steps=global_batch // (micro * d) if micro else 0,
                                    recompute=recompute,
                                    offload_optimizer=offload[0],
                                    offload_parameters=offload[1],
                                    sequence_parallel=t > 1 and u == 1,
                                    ulysses=u,
                                    expert_parallel=request.args.moe_expert_parallel_size,
                                )


def _offloads(stage: int) -> list[tuple[bool, bool]]:
    return [(False, False), (True, False)] + ([(True, True)] if stage == 3 else [])


def search(request: PlanRequest, memory_model: MemoryModel | None = None) -> SearchResult:
    """Ranked feasible layouts (by predicted tokens/s; ties: less memory first) and the rejected ones."""
    if memory_model is None:
        from megatron.planning.memory import predict_memory as memory_model
    request.model(1)  # a model that no layout can fix (its own flags contradict) is an error, not a rejection
    result = SearchResult()
    cluster, precision = request.cluster, request.precision
    capacity = cluster.gpu.memory_gib * GIB
    host_capacity = cluster.host_memory_gib * GIB
    gpus_on_node = min(cluster.gpus_per_node, cluster.num_gpus)
    dropout = request.args.attention_dropout > 0 or request.args.hidden_dropout > 0
    for layout in enumerate_layouts(request):
        verdict = check_layout(request, layout)
        if isinstance(verdict, Rejection):
            result.rejected.append(verdict)
            continue
        model, moe = verdict
        memory = memory_model(model, layout, precision, moe if moe.enabled else None, dropout)
        if memory.total > capacity:
            result.rejected.append(
                Rejection(
                    layout,
                    "memory: the layout does not fit on a GPU",
                    f"needs {memory.total / GIB:.1f} GiB > {capacity / GIB:.0f} GiB",
                    memory.total - capacity,
                )
            )
            continue
        host_need = HOST_MARGIN * memory.host * gpus_on_node
        if host_need > host_capacity:
            result.rejected.append(
                Rejection(
                    layout,
                    "host memory: offload does not fit in a node's memory",
                    f"host needs {host_need / GIB:.0f} GiB (the offloaded states x {HOST_MARGIN}) "
                    f"> {host_capacity / GIB:.0f} GiB",
                )
            )
            continue
        step = predict_step(model, layout, cluster, precision, moe if moe.enabled else None)
        result.feasible.append(Candidate(layout, memory, step))
    result.feasible.sort(key=lambda c: (-c.step.tokens_per_s, c.memory.total))
    return result


def check_layout(request: PlanRequest, layout: Layout) -> tuple[ModelConfig, MoEConfig] | Rejection:
    """The model and MoE config of ``layout`` when the toolkit accepts it, else why not."""
    cluster, t = request.cluster, layout.tensor_parallel
    if cluster.gpus_per_node % t:
        return Rejection(
            layout,
            "planner: T must divide the GPUs per node",
            f"T={t} > GPUs per node {cluster.gpus_per_node}"
            if t > cluster.gpus_per_node
            else f"T={t} does not divide GPUs per node {cluster.gpus_per_node}",
        )
    if layout.micro_batch_size == 0:
        return Rejection(
            layout,
            "planner: the global batch must split evenly over D",
            f"--global-batch-size {request.global_batch_size} is not divisible by D={layout.data_parallel}",
        )
    # The rules do not depend on the batch split except through the MoE gate's token count.
    verdict = _toolkit_rules(
        request, dataclasses.replace(layout, micro_batch_size=1, gradient_accumulation_steps=1)
    )
    if not isinstance(verdict, ConfigError):
        model, moe = verdict
        try:
            check_moe_tokens(moe, layout.micro_batch_size, model.seq_length)
        except ConfigError as error:
            verdict = error
    if isinstance(verdict, ConfigError):
        message = str(verdict)
        # The group: the message's first clause, numbers and the parenthesised ds_config key left out.
        rule = re.sub(r" \([^)]*\)", "", re.sub(r"\d+", "N", message.split(": ", 1)[0]))
        return Rejection(layout, rule, message)
    return verdict


@functools.lru_cache(maxsize=4096)
def _toolkit_rules(request: PlanRequest, layout: Layout) -> tuple[ModelConfig, MoEConfig] | ConfigError:
    """The checks of ``build_config`` that depend on the layout, on the layout's own flags and ds_config;
    the error is returned rather than raised so that the cache keeps it too."""
    try:
        args = request.parser.parse_args([*request.argv, *layout_flags(layout, PLANNED_DS_CONFIG)])
        ds = ds_config.DsConfigFile(PLANNED_DS_CONFIG, ds_config_for(layout, request.precision))
        parallel = parallelism.parallel_config(args, layout.num_gpus)
        model = request.model(layout.tensor_parallel)
        parallelism.check_model_split(model, parallel)
        recompute_config(args, model.num_layers, parallel.pipeline_model_parallel_size)
        moe = moe_config(args, model, parallel)
        stage = ds_config.zero_stage(ds, args)
        _check_fp16_stage(ds_config.precision_config(ds, args), stage, ds.path)
        offload_optimizer(ds, args, stage)
        parallelism.check_pipeline_zero_stage(parallel, stage, ds.path)
        check_moe_zero_stage(moe, stage, ds.path)
    except ConfigError as error:
        return error
    return model, moe


def smallest_shortfall(result: SearchResult) -> Rejection | None:
    """The memory rejection closest to fitting (what "no layout fits" reports)."""
    over = [r for r in result.rejected if r.shortfall is not None]
    return min(over, key=lambda r: r.shortfall) if over else None
