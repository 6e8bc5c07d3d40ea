"""How long one optimizer step of a layout takes: compute from the FLOP count, communication from the
message sizes of each collective and the bandwidth of the links it crosses, the pipeline bubble, the
optimizer's update and ZeRO-Offload's transfers.

A roofline, not a simulator: each part is bytes / bandwidth or FLOPs / achieved FLOP/s, summed where the
toolkit's step runs them one after the other (tensor-parallel collectives sit on the critical path of each
layer; ZeRO's traffic overlaps the compute only as far as ``Efficiencies`` says). The numbers are for
ranking layouts against each other; their absolute level moves with the efficiencies in
``megatron.planning.gpus``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from megatron.config.schema import ModelConfig, MoEConfig
from megatron.planning.gpus import GB, Cluster
from megatron.planning.layout import Layout, Precision
from megatron.planning.memory import value_bytes, weight_bytes
from megatron.planning.params import count_parameters, mlp_parameters, stage_layers
from megatron.training.throughput import flops_per_token

# Adam's update reads and writes the fp32 master weight and both moments (3 x 8 bytes), reads the fp32
# gradient (4) and writes the half-precision weight (2): a memory-bound kernel over the rank's partition.
ADAM_BYTES_PER_PARAMETER = 30


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step on the slowest rank, by part, and the traffic behind the communication
    parts (bytes each GPU sends per step). ``bubble`` is the pipeline's idle time, (P-1)/(m+P-1) of the
    pipelined part; ``data_parallel`` is ZeRO's traffic left after its overlap with compute."""

    compute: float
    memory_bound: float
    tensor_parallel: float
    ulysses: float
    expert_all_to_all: float
    pipeline_p2p: float
    bubble: float
    data_parallel: float
    optimizer: float
    offload: float
    tokens_per_step: int
    model_flops_per_step: float
    peak_flops: float
    data_parallel_bytes: float
    tensor_parallel_bytes: float

    @property
    def total(self) -> float:
        return (
            self.compute
            + self.memory_bound
            + self.tensor_parallel
            + self.ulysses
            + self.expert_all_to_all
            + self.pipeline_p2p
            + self.bubble
            + self.data_parallel
            + self.optimizer
            + self.offload
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.total

    @property
    def mfu(self) -> float:
        """Model FLOPs (no recomputation counted) per second over the cluster's peak."""
        return self.model_flops_per_step / self.total / self.peak_flops


def layer_flops_per_token(model: ModelConfig, recompute: bool = False) -> float:
    """One transformer layer's share of ``flops_per_token`` (the logits taken out)."""
    logits = flops_per_token(dataclasses.replace(model, num_layers=0), recompute)
    return (flops_per_token(model, recompute) - logits) / model.num_layers


def selective_recompute_flops_per_token(model: ModelConfig) -> float:
    """What selective recomputation adds per layer: the attention core's forward again (scores and
    weighted values, 2 x s x heads x head_dim multiply-adds per token, 2 FLOPs each)."""
    return 2 * 2 * model.seq_length * model.num_attention_heads * model.head_dim


def ring_all_reduce_seconds(nbytes: float, ranks: int, bandwidth: float) -> float:
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth if ranks > 1 else 0.0


def ring_gather_seconds(nbytes: float, ranks: int, bandwidth: float) -> float:
    """Reduce-scatter or all-gather of ``nbytes`` (the full tensor); also an all-to-all of ``nbytes`` held
    by each rank, which keeps 1/ranks of it."""
    return (ranks - 1) / ranks * nbytes / bandwidth if ranks > 1 else 0.0


@functools.lru_cache(maxsize=256)
def _stage_split(
    model: ModelConfig, tensor_parallel: int, pipeline_parallel: int, moe: MoEConfig | None
) -> tuple[int, tuple[int, ...]]:
    """(parameters on the most loaded rank, transformer layers per stage): ``params``' counts, which depend
    on T and P only; cached, as DeepSpeed's stage balancing is the slow part of a prediction."""
    grid = Layout(tensor_parallel, pipeline_parallel, 1, 0, 1, 1)
    return count_parameters(model, grid, moe).per_rank, tuple(stage_layers(model, grid, moe))


def rank_weights(model: ModelConfig, layout: Layout, moe: MoEConfig | None = None) -> tuple[int, int]:
    """(dense, expert) parameters on the most loaded rank before ZeRO splits them (``params``' count):
    the expert part is reduced over the D / EP ranks that share those experts, the rest over D. MoE runs
    without pipeline stages here (``megatron.config.moe``), so its experts are all on that rank."""
    per_rank, _ = _stage_split(model, layout.tensor_parallel, layout.pipeline_parallel, moe)
    if moe is None:
        return per_rank, 0
    ep = moe.expert_parallel_size
    expert = sum(e // ep * mlp_parameters(model) for e in moe.experts_per_layer if e > 1)
    return per_rank - expert, expert


def slowest_stage(
    model: ModelConfig, layout: Layout, moe: MoEConfig | None, layer: float, logits: float
) -> tuple[int, bool]:
    """The transformer layers of the pipeline stage with the most work per token (its layers, the logits
    on the last), as DeepSpeed's partitioning cuts the stages; and whether that stage computes the logits."""
    _, layers = _stage_split(model, layout.tensor_parallel, layout.pipeline_parallel, moe)
    last = len(layers) - 1
    stage = max(range(len(layers)), key=lambda i: layers[i] * layer + (logits if i == last else 0.0))
    return layers[stage], stage == last


def predict_step(
    model: ModelConfig,
    layout: Layout,
    cluster: Cluster,
    precision: Precision,
    moe: MoEConfig | None = None,
) -> StepTime:
    """The step time of ``layout`` for ``model`` on ``cluster`` (see the module docstring)."""
    eff, gpu = cluster.efficiencies, cluster.gpu
    t, p, d, u = layout.tensor_parallel, layout.pipeline_parallel, layout.data_parallel, layout.ulysses
    b, m, s, h = (
        layout.micro_batch_size,
        layout.gradient_accumulation_steps,
        model.seq_length,
        model.hidden_size,
    )
    act, wbytes = value_bytes(precision), weight_bytes(precision)
    moe_per_stage = sum(1 for n in range(model.num_layers) if moe and moe.experts_at(n) > 1)  # P = 1

    # Compute of one micro batch on the slowest stage.
    full = layout.recompute == "full"
    layer = layer_flops_per_token(model, full)
    if layout.recompute == "selective":
        layer += selective_recompute_flops_per_token(model)
    logits = flops_per_token(dataclasses.replace(model, num_layers=0), full)
    per_stage, with_logits = slowest_stage(model, layout, moe, layer, logits)
    logits = logits if with_logits else 0.0
    mlp_flops = (3 if model.swiglu else 2) * h * model.ffn_hidden_size * 2 * (4 if full else 3)
    extra_experts = (moe.topk - 1) * mlp_flops * moe_per_stage if moe else 0.0
    achieved = gpu.peak_tflops * 1e12 * eff.matmul
    rank_tokens = b * s / (t * u)
    micro_compute = (per_stage * layer + extra_experts + logits) * rank_tokens / achieved
    # The memory-bound kernels and the fixed per-layer cost (Efficiencies' calibrated terms).
    passes = 4 if full else 3
    hbm = gpu.hbm_gbps * GB
    elementwise = per_stage * passes * rank_tokens * h * eff.elementwise_bytes_per_hidden / hbm
    softmax = rank_tokens * model.padded_vocab_size * eff.logit_bytes_per_vocab / hbm if with_logits else 0.0
    micro_memory_bound = elementwise + softmax + per_stage * passes * eff.layer_pass_seconds

    # Tensor parallelism: 2 all-reduces (or reduce-scatter + all-gather) of [b, s/U, h] per layer forward,
    # 2 backward, 2 more when full recomputation runs the forward again.
    tp_message = b * s / u * h * act
    tp_per_layer = 6 if full else 4
    tp_bandwidth = cluster.group_bandwidth(t, 1)
    micro_tp = per_stage * tp_per_layer * ring_all_reduce_seconds(tp_message, t, tp_bandwidth)
    tp_bytes = per_stage * tp_per_layer * 2 * (t - 1) / t * tp_message * m if t > 1 else 0.0

    # Ulysses: all-to-all of q, k, v and the attention output per layer, forward and backward (+ recompute).
    heads_bytes = b * s / u * (2 * model.num_attention_heads + 2 * model.kv_heads) * model.head_dim / t * act
    exchanges = 3 if full else 2
    micro_ulysses = per_stage * exchanges * ring_gather_seconds(heads_bytes, u, cluster.group_bandwidth(u, t))

    # MoE: dispatch and combine all-to-alls per MoE layer over the expert-parallel ranks (data-parallel ones).
    ep = moe.expert_parallel_size if moe else 1
    tokens_bytes = b * s / u * h * act * (moe.topk if moe else 1)
    micro_experts = (
        moe_per_stage
        * 2
        * exchanges
        * ring_gather_seconds(tokens_bytes, ep, cluster.group_bandwidth(ep, t * u))
    )

    # Pipeline: one activation forward and one gradient backward across each stage boundary per micro batch.
    p2p_bytes = b * s / u * h * act / (t if layout.sequence_parallel else 1)
    micro_p2p = 2 * p2p_bytes / cluster.group_bandwidth(p, t * u * d) if p > 1 else 0.0

    micro = micro_compute + micro_memory_bound + micro_tp + micro_ulysses + micro_experts + micro_p2p
    bubble = (p - 1) * micro

    dp_seconds, dp_bytes = _data_parallel(model, layout, cluster, precision, moe, wbytes)
    optimizer, offload = _optimizer_and_offload(model, layout, cluster, moe, wbytes)
    tokens = layout.global_batch_size * s
    return StepTime(
        compute=m * micro_compute,
        memory_bound=m * micro_memory_bound,
        tensor_parallel=m * micro_tp,
        ulysses=m * micro_ulysses,
        expert_all_to_all=m * micro_experts,
        pipeline_p2p=m * micro_p2p,
        bubble=bubble,
        data_parallel=dp_seconds,
        optimizer=optimizer,
        offload=offload,
        tokens_per_step=tokens,
        model_flops_per_step=flops_per_token(model) * tokens,
        peak_flops=gpu.peak_tflops * 1e12 * layout.num_gpus,
        data_parallel_bytes=dp_bytes,
        tensor_parallel_bytes=tp_bytes,
    )


def data_parallel_bytes(layout: Layout, weights: float, weight_bytes: int) -> float:
    """Bytes each rank sends per step for ZeRO's gradient and parameter traffic over D ranks, the message
    sizes DeepSpeed 0.19 uses: stage 0 all-reduces the gradients once per step; 1 also all-gathers the
    updated weights; 2 reduce-scatters the gradients in every micro batch's backward, then all-gathers the
    weights; 3 all-gathers the weights in every micro batch's forward and again in its backward and
    reduce-scatters its gradients."""
    d, m = layout.data_parallel, layout.gradient_accumulation_steps
    if d == 1:
        return 0.0
    share = (d - 1) / d * weights * weight_bytes
    return {0: 2 * share, 1: 3 * share, 2: (m + 1) * share, 3: 3 * m * share}[layout.zero_stage]


def _data_parallel(
    model: ModelConfig,
    layout: Layout,
    cluster: Cluster,
    precision: Precision,
    moe: MoEConfig | None,
    wbytes: int,
) -> tuple[float, float]:
    eff = cluster.efficiencies
    dense, expert = rank_weights(model, layout, moe)
    stride = layout.tensor_parallel * layout.ulysses
    dense_bytes = data_parallel_bytes(layout, dense, wbytes)
    ep = moe.expert_parallel_size if moe else 1
    expert_layout = dataclasses.replace(layout, data_parallel=layout.data_parallel // ep)
    expert_bytes = data_parallel_bytes(expert_layout, expert, wbytes) if expert else 0.0
    seconds = dense_bytes / cluster.group_bandwidth(layout.data_parallel, stride)
    if expert_bytes:
        seconds += expert_bytes / cluster.group_bandwidth(expert_layout.data_parallel, stride * ep)
    overlap = eff.zero3_prefetch_overlap if layout.zero_stage == 3 else eff.data_parallel_overlap
    return (1 - overlap) * seconds, dense_bytes + expert_bytes


def _optimizer_and_offload(
    model: ModelConfig, layout: Layout, cluster: Cluster, moe: MoEConfig | None, wbytes: int
) -> tuple[float, float]:
    """(Adam's update on the GPU or the CPU, host transfers): the update runs over the rank's optimizer
    partition (1/D of its shard from ZeRO stage 1 on); offloaded, the fp32 gradients go to the host and the
    updated half-precision weights come back over PCIe, and DeepSpeedCPUAdam shares the node's cores with
    the node's other GPUs. Offloaded parameters (stage 3) cross PCIe again in each forward and backward."""
    eff, gpu = cluster.efficiencies, cluster.gpu
    dense, expert = rank_weights(model, layout, moe)
    d = layout.data_parallel
    partition = (dense + expert) / (d if layout.zero_stage >= 1 else 1)
    host_link = gpu.host_link_gbps * GB * eff.host_link
    if not layout.offload_optimizer:
        return partition * ADAM_BYTES_PER_PARAMETER / (gpu.hbm_gbps * GB * eff.hbm), 0.0
    gpus_on_node = min(cluster.gpus_per_node, cluster.num_gpus)
    cpu_adam = partition / (eff.cpu_adam_params_per_s / gpus_on_node)
    transfers = partition * (4 + wbytes) / host_link
    if layout.offload_parameters:
        transfers += 2 * layout.gradient_accumulation_steps * partition * wbytes / host_link
    return cpu_adam, transfers
