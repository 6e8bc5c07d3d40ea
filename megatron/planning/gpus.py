"""What the planner knows about the hardware: named GPUs with their datasheet figures, the cluster they form,
and the fractions of those figures a training step really achieves.

Datasheet figures are the vendors' (dense, no sparsity; bandwidths per GPU and per direction). The
efficiencies are the planner's guesses until they are measured: they live in one dataclass so that a
calibration on real hardware (bench/) changes one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GIB = 1024**3
GB = 1000**3


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator. ``memory_gib``: what the device reports as total memory (an "80 GB" H100 has 80 GiB).
    Bandwidths in GB/s per direction: ``intra_node`` the GPU's share of NVLink/xGMI to its node peers,
    ``inter_node`` its share of the node's network (one 400 Gb/s NIC per GPU: 50 GB/s), ``host_link`` its
    PCIe link to host memory."""

    name: str
    memory_gib: float
    peak_tflops: float  # dense bf16/fp16 tensor-core peak
    hbm_gbps: float
    intra_node_gbps: float
    inter_node_gbps: float
    host_link_gbps: float


# NVIDIA H100 SXM5 / H200 SXM datasheets (NVLink 4: 900 GB/s both directions), A100 SXM4 (NVLink 3: 600 GB/s,
# HDR 200 Gb/s NICs), AMD MI300X (Infinity Fabric: 7 x 64 GB/s per direction to the other 7 GPUs).
GPUS: dict[str, GPUSpec] = {
    spec.name: spec
    for spec in (
        GPUSpec("H100", 80, 989, 3350, 450, 50, 64),
        GPUSpec("H200", 139.8, 989, 4800, 450, 50, 64),  # "141 GB": 139.8 GiB as the device reports
        GPUSpec("A100-40", 40, 312, 1555, 300, 25, 32),
        GPUSpec("A100-80", 80, 312, 2039, 300, 25, 32),
        GPUSpec("MI300X", 192, 1307, 5300, 448, 50, 64),
    )
}


@dataclass(frozen=True)
class Efficiencies:
    """Fractions of the datasheet figures that a step achieves, and the other rates the cost model needs.

    Calibrated on one H200 (bench/plan_check.py, 12 runs of pretrain_gpt.py from 125M to 3.8B, 2026-12-02;
    bench/RESULTS.md): ``matmul``, ``elementwise_bytes_per_hidden``, ``logit_bytes_per_vocab`` and
    ``layer_pass_seconds`` are the least-squares fit (relative error) of the measured step times, which
    leaves every run within 12%. ``matmul``: the fraction of the dense peak the GEMMs and attention reach.
    ``elementwise_bytes_per_hidden``: HBM bytes per token, layer, pass and hidden unit of the memory-bound
    kernels (norms, dropout, activations, residual adds, rotary). ``logit_bytes_per_vocab``: HBM bytes per
    token and vocabulary entry of the output layer's softmax and cross-entropy in fp32 (forward and
    backward). ``layer_pass_seconds``: the fixed cost of one layer's forward or backward on one micro batch
    (kernel launches, hooks), which dominates small models.

    The rest are uncalibrated starting points from public figures (no multi-GPU machine was lent): NCCL's
    ring bus bandwidth reaches about 80% of NVLink's and 80-90% of the NIC's; PCIe copies from pinned
    memory about 80%; a memory-bound kernel (Adam's update) about 80% of HBM bandwidth.
    ``cpu_adam_params_per_s``: DeepSpeedCPUAdam's update rate for one node's cores together, from the one
    offloaded run measured (2.7B, ZeRO 2, the lent machine's 16 cores): nodes with more cores go faster.
    ``data_parallel_overlap``: the fraction of ZeRO's gradient and parameter traffic hidden behind the
    backward/forward compute (0: none; DeepSpeed overlaps only with overlap_comm, and stage 3 prefetches).
    """

    matmul: float = 0.573
    elementwise_bytes_per_hidden: float = 16.7
    logit_bytes_per_vocab: float = 172.5
    layer_pass_seconds: float = 5.1e-4
    intra_node: float = 0.8
    inter_node: float = 0.85
    host_link: float = 0.8
    hbm: float = 0.8
    cpu_adam_params_per_s: float = 1.4e9
    data_parallel_overlap: float = 0.0
    zero3_prefetch_overlap: float = 0.5


@dataclass(frozen=True)
class Cluster:
    """``num_gpus`` GPUs of one kind, ``gpus_per_node`` to a node; ``host_memory_gib`` per node."""

    num_gpus: int
    gpus_per_node: int
    gpu: GPUSpec
    host_memory_gib: float = 1024.0
    efficiencies: Efficiencies = Efficiencies()

    def __post_init__(self) -> None:
        if self.num_gpus < 1 or self.gpus_per_node < 1:
            raise ValueError(
                f"--num-gpus {self.num_gpus} / --gpus-per-node {self.gpus_per_node}: both must be >= 1."
            )
        if self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise ValueError(
                f"--num-gpus {self.num_gpus} is not a multiple of --gpus-per-node {self.gpus_per_node}: the "
                "planner assumes whole nodes. Use a multiple, or fewer GPUs on one node."
            )

    @property
    def nodes(self) -> int:
        return max(1, self.num_gpus // self.gpus_per_node)

    def group_bandwidth(self, size: int, stride: int) -> float:
        """Achieved bytes/s per GPU of a collective over ``size`` ranks ``stride`` apart (Megatron's rank
        order): the NVLink figure when the group stays in one node, else the network's."""
        eff = self.efficiencies
        if size * stride <= self.gpus_per_node:
            return self.gpu.intra_node_gbps * GB * eff.intra_node
        return self.gpu.inter_node_gbps * GB * eff.inter_node


def gpu_spec(
    name: str | None,
    memory_gib: float | None = None,
    peak_tflops: float | None = None,
    intra_node_gbps: float | None = None,
    inter_node_gbps: float | None = None,
    host_link_gbps: float | None = None,
) -> GPUSpec:
    """A named GPU with the given figures replaced, or (no name) one made of the figures alone."""
    overrides = {
        "memory_gib": memory_gib,
        "peak_tflops": peak_tflops,
        "intra_node_gbps": intra_node_gbps,
        "inter_node_gbps": inter_node_gbps,
        "host_link_gbps": host_link_gbps,
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    if name is not None:
        if name not in GPUS:
            raise ValueError(
                f"--gpu {name}: not a known GPU. Use one of {', '.join(GPUS)}, or give its figures."
            )
        return dataclasses.replace(GPUS[name], **given)
    if "memory_gib" not in given:
        raise ValueError("no --gpu and no --gpu-memory-gb: name a GPU (--gpu H100) or give its memory.")
    base = GPUS["H100"]  # unnamed GPUs take an H100's figures where none are given
    return dataclasses.replace(base, name=f"{given['memory_gib']:g} GiB GPU", **given)
