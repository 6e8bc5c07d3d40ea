"""The peak memory per GPU of a layout, from the model's shape: the planner's filter and the trainer's
start-up prediction (``megatron/training/memory_report.py``) are this one function.

The model states count what DeepSpeed 0.19 allocates for this toolkit's engine (an optimizer built
outside DeepSpeed, ``megatron/training/optimizer.py``), read from its code and checked against the
tensors it holds at the update (tests/planning/test_memory_model_state.py). With N parameters on the rank
and Z ranks that ZeRO partitions over (data-parallel x Ulysses), w bytes per weight:

- ZeRO 0 in bf16/fp16 (``FP16_UnfusedOptimizer``: bf16 with the default bf16 gradient accumulation):
  w*N weights and gradients, 4N fp32 master weights, 8N Adam moments, and at the step 4N fp32 gradients.
  Under the pipeline engine bf16 goes through ``BF16_Optimizer`` instead: its fp32 master weights and
  moments are partitioned over Z, and a w*N gradient accumulation buffer comes beside the w*N gradients.
- ZeRO 0 in fp32 or under autocast: the plain torch optimizer, 4N weights, 4N gradients, 8N moments.
- ZeRO 1 and 2 (``DeepSpeedZeroOptimizer``; in DeepSpeed 0.19 both reduce-scatter in the backward hooks,
  so both keep only the gradient partition): w*N weights, w*N/Z gradients (a few percent more on some
  ranks of a toy model: the partition keeps views into gradients beyond its share), 4N/Z master weights
  (a copy even of fp32 weights), 8N/Z moments, 4N/Z fp32 gradients at the step, one reduce bucket.
- ZeRO 3: as ZeRO 2 with the weights partitioned too (w*N/Z), plus the gathered weights of the layer that
  runs and of the prefetch bucket.
- offload_optimizer moves the master weights, moments and fp32 gradient partition to the host, with
  ZeRO 1/2's fp32 host accumulation buffers (4N/Z) or ZeRO 3's gradient partition (w*N/Z): gradients
  go there from the reduce bucket. offload_parameters (ZeRO 3) moves the weight partition too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from megatron.config.schema import ModelConfig, MoEConfig
from megatron.planning.activations import FLOAT32, layer_activation_bytes, logits_bytes, stage_extra_bytes
from megatron.planning.layout import Layout, Precision
from megatron.planning.params import count_parameters, layer_parameters, stage_layers

# The caching allocator's overhead over the bytes allocated (blocks rounded up, memory freed into its
# pool but not reusable for a larger request), as a fraction of ``allocated``: the mean of
# max_memory_reserved / max_memory_allocated over the 13 runs measured on an H200 (bench/RESULTS.md; they
# ranged from 2% to 29%, so the reserved figure is the less certain half of the prediction).
FRAGMENTATION = 0.17
# cuBLAS's workspace on Hopper (torch reserves 32 MiB per handle and stream there; 4 MiB before sm90),
# plus cuBLASLt's, each allocated once through the caching allocator.
CUBLAS_WORKSPACE = 32 * 2**20 + 32 * 2**20
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class BucketSizes:
    """The ds_config's zero_optimization sizes (elements) that size DeepSpeed's transient buffers; the
    defaults are DeepSpeed 0.19's. ``contiguous_gradients``: ZeRO copies gradients into a reduce bucket."""

    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool | None = None

    @classmethod
    def from_ds_config(cls, ds_config: Mapping[str, Any]) -> BucketSizes:
        zero = ds_config.get("zero_optimization", {}) or {}
        names = {
            "reduce_bucket_size": "reduce_bucket_size",
            "allgather_bucket_size": "allgather_bucket_size",
            "prefetch_bucket_size": "stage3_prefetch_bucket_size",
            "max_live_parameters": "stage3_max_live_parameters",
            "contiguous_gradients": "contiguous_gradients",
            "overlap_comm": "overlap_comm",
        }
        given = {field: zero[key] for field, key in names.items() if key in zero}
        for field in (
            "reduce_bucket_size",
            "allgather_bucket_size",
            "prefetch_bucket_size",
            "max_live_parameters",
        ):
            if field in given:
                given[field] = int(given[field])
        return cls(**given)

    def overlaps(self, zero_stage: int) -> bool:
        """DeepSpeed's default: overlap_comm on for ZeRO 3 only."""
        return self.overlap_comm if self.overlap_comm is not None else zero_stage == 3


@dataclass(frozen=True)
class ModelStates:
    """Bytes of the weights, gradients and optimizer states on one rank at the update, the fp32 gradient
    copy the step makes, and what is on the host."""

    parameters: int
    gradients: int
    optimizer_states: int
    step_gradients: int
    host: int


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU on the most loaded rank. ``temporary``: transient buffers (DeepSpeed's buckets, the
    step's fp32 gradients, ZeRO 3's gathered weights, cuBLAS's workspace); ``fragmentation``: the
    allocator's overhead (:data:`FRAGMENTATION`); ``host``: host memory used under offload."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    temporary: int
    fragmentation: int
    host: int = 0

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated should show."""
        return self.total - self.fragmentation

    @property
    def total(self) -> int:
        """Device bytes (host excluded): what torch.cuda.max_memory_reserved should show."""
        return sum(getattr(self, field.name) for field in fields(self) if field.name != "host")


def weight_bytes(precision: Precision) -> int:
    """Bytes of a weight as the engine holds and communicates it: half precision with bf16/fp16 (DeepSpeed's
    communication_data_type default), fp32 with autocast (fp32 weights) and fp32."""
    return 2 if precision in ("bf16", "fp16") else FLOAT32


def value_bytes(precision: Precision) -> int:
    """Bytes of an activation: half precision under bf16, fp16 and autocast, fp32 otherwise."""
    return 2 if precision in ("bf16", "fp16", "autocast") else FLOAT32


def _check(layout: Layout, precision: Precision) -> None:
    if layout.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage {layout.zero_stage}: DeepSpeed has ZeRO stages 0 to 3")
    if layout.offload_optimizer and layout.zero_stage == 0:
        raise ValueError(
            "offload_optimizer needs ZeRO stage 1 or more (--zero-stage); stage 0 has no offload"
        )
    if layout.offload_parameters and layout.zero_stage != 3:
        raise ValueError(f"offload_parameters needs ZeRO stage 3, not {layout.zero_stage}; set zero_stage=3")
    if precision == "fp16" and layout.zero_stage == 0:
        raise ValueError(
            "fp16 with ZeRO stage 0 is refused by the toolkit (see config/build.py); use stage 1"
        )


def model_state_bytes(parameters: int, layout: Layout, precision: Precision) -> ModelStates:
    """The model states of a rank holding ``parameters`` weights (see the module's docstring)."""
    _check(layout, precision)
    weight = weight_bytes(precision)
    zero = layout.data_parallel * layout.ulysses
    partition = -(-parameters // zero)
    master_and_moments = FLOAT32 * (1 + ADAM_MOMENTS)
    if layout.zero_stage == 0:
        if weight == FLOAT32:
            return ModelStates(FLOAT32 * parameters, FLOAT32 * parameters, 8 * parameters, 0, 0)
        if layout.pipeline_parallel > 1:
            # BF16_Optimizer: the engine's gradients and its own flat accumulation buffer (in bf16, the
            # default gradient accumulation dtype), fp32 master weights and moments partitioned over Z.
            states = master_and_moments * partition
            return ModelStates(weight * parameters, 2 * weight * parameters, states, FLOAT32 * partition, 0)
        states = master_and_moments * parameters
        return ModelStates(weight * parameters, weight * parameters, states, FLOAT32 * parameters, 0)
    weights = weight * (partition if layout.zero_stage == 3 else parameters)
    host = 0
    if layout.offload_parameters:
        host, weights = weights, 0
    if layout.offload_optimizer:
        # Beside the fp32 gradient partition the optimizer steps on, ZeRO 1/2 accumulate each gradient in
        # an fp32 host buffer of their own; ZeRO 3 keeps its gradient partition buffer on the host.
        gradient_buffers = FLOAT32 if layout.zero_stage < 3 else weight
        host += (master_and_moments + FLOAT32 + gradient_buffers) * partition
        return ModelStates(weights, 0, 0, 0, host)
    return ModelStates(weights, weight * partition, master_and_moments * partition, FLOAT32 * partition, host)


def temporary_bytes(
    model: ModelConfig, layout: Layout, precision: Precision, moe: MoEConfig | None, buckets: BucketSizes
) -> int:
    """DeepSpeed's buckets and ZeRO 3's gathered weights (the step's fp32 gradients are added apart)."""
    weight = weight_bytes(precision)
    transient = CUBLAS_WORKSPACE
    if layout.zero_stage in (1, 2, 3) and buckets.contiguous_gradients:
        copies = 2 if buckets.overlaps(layout.zero_stage) and layout.zero_stage < 3 else 1
        transient += copies * weight * buckets.reduce_bucket_size
    if layout.zero_stage == 3:
        largest = max(
            layer_parameters(model, layout.tensor_parallel, moe, n) for n in range(model.num_layers)
        )
        live = min(largest + buckets.prefetch_bucket_size, buckets.max_live_parameters)
        transient += weight * live
    return transient


def _in_flight(layout: Layout, stage: int) -> int:
    """Micro batches whose activations a stage holds at once under DeepSpeed's 1F1B schedule."""
    return min(layout.pipeline_parallel - stage, layout.gradient_accumulation_steps)


def activation_bytes(model: ModelConfig, layout: Layout, precision: Precision, dropout: bool) -> list[int]:
    """Per pipeline stage: the activations of the micro batches in flight, plus under full recompute one
    layer's activations rebuilt during its backward."""
    value = value_bytes(precision)
    residual = FLOAT32 if precision == "autocast" else value
    autocast = precision == "autocast"
    kept = layer_activation_bytes(model, layout, value, residual, dropout, autocast=autocast)
    rebuilt = 0
    if layout.recompute == "full":
        rebuilt = layer_activation_bytes(model, layout, value, residual, dropout, "none", autocast)
    layers = stage_layers(model, layout)
    stages = []
    for stage, count in enumerate(layers):
        first, last = stage == 0, stage == len(layers) - 1
        extra = stage_extra_bytes(model, layout, value, first, last, dropout)
        stages.append(_in_flight(layout, stage) * (count * kept + extra) + (rebuilt if count else 0))
    return stages


def _step_transient(states: ModelStates, parameters: int, layout: Layout, precision: Precision) -> int:
    """What the optimizer step allocates beside the model states: the fp32 gradient copy, and under ZeRO 1
    and 2 first the flattened half-precision gradient partition it is cast from (``stage_1_and_2.step``
    flattens ``averaged_gradients`` before the cast; measured on an H200: 6 bytes per parameter)."""
    flat = 0
    if layout.zero_stage in (1, 2) and not layout.offload_optimizer:
        flat = weight_bytes(precision) * -(-parameters // (layout.data_parallel * layout.ulysses))
    return states.step_gradients + flat


def predict_memory(
    model: ModelConfig,
    layout: Layout,
    precision: Precision,
    moe: MoEConfig | None = None,
    dropout: bool = True,
    buckets: BucketSizes | None = None,
) -> MemoryBreakdown:
    """Peak bytes per GPU on the most loaded rank (the pipeline stage whose total is largest).

    ``dropout``: the run trains with the model's hidden dropout (masks are kept). ``buckets``: the
    ds_config's bucket sizes (DeepSpeed's defaults when None).
    """
    buckets = buckets or BucketSizes()
    counts = count_parameters(model, layout, moe)
    activations = activation_bytes(model, layout, precision, dropout)
    value = value_bytes(precision)
    temporary = temporary_bytes(model, layout, precision, moe, buckets)
    best: MemoryBreakdown | None = None
    for stage, parameters in enumerate(counts.per_stage):
        states = model_state_bytes(parameters, layout, precision)
        logits = logits_bytes(model, layout, value) if stage == len(counts.per_stage) - 1 else 0
        # The step's gradient copies exist once the backward has freed the activations and logits: the
        # peak is the larger of the two moments, so only the step's excess over them adds.
        step_excess = max(
            0, _step_transient(states, parameters, layout, precision) - activations[stage] - logits
        )
        allocated = (
            states.parameters + states.gradients + states.optimizer_states + activations[stage] + logits
        )
        allocated += temporary + step_excess
        candidate = MemoryBreakdown(
            parameters=states.parameters,
            gradients=states.gradients,
            optimizer_states=states.optimizer_states,
            activations=activations[stage],
            logits=logits,
            temporary=temporary + step_excess,
            fragmentation=int(FRAGMENTATION * allocated),
            host=states.host,
        )
        if best is None or candidate.total > best.total:
            best = candidate
    return best
