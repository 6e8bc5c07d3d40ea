"""``--deterministic-mode``: what a bitwise-identical rerun on GPUs needs, switched on inside the process.

On a GPU the same run twice differs from its second iteration on: cuBLAS picks workspaces per stream, torch's
default attention kernels on Hopper (cuDNN's, and the memory-efficient one) and its flash kernel's backward
accumulate with atomics, and several scatter-style backwards (embedding, index_add) do too. The mode
therefore
- sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS reads it when its first handle is made, so this runs
  before the model is built);
- calls ``torch.use_deterministic_algorithms(True)``, which also makes SDPA's flash backward take its
  deterministic path, and errors on any op that has no deterministic kernel rather than differing silently;
  but not its filling of every new ``torch.empty`` tensor with NaN (``fill_uninitialized_memory``): that
  only matters to code that reads memory before writing it, which the bitwise checks of
  ``bench/determinism.py`` would catch, and it costs a kernel per allocation;
- leaves SDPA its flash and math kernels only (cuDNN's and the memory-efficient attention have no
  deterministic backward);
- sets cuDNN deterministic, without autotuning;
- keeps NCCL off its NVLink SHARP (NVLS) algorithms, whose in-switch reductions are not ordered
  (``NCCL_ALGO=^NVLS``, unless the environment names algorithms itself; read when the first communicator is
  made, so this runs before the process group starts).

Everything else a rerun needs holds in every mode: the data order, the dropout streams and the ranks' seeds
follow from ``--seed`` and the iteration, and the toolkit's own reductions (gradient norm, losses) run in a
fixed order.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("megatron")

CUBLAS_WORKSPACE = ":4096:8"
NCCL_ALGORITHMS = "^NVLS"
# SDPA's kernels that stay on (bench/determinism.py measures the others against them).
SDPA_KERNELS = ("flash", "math")
FILL_UNINITIALIZED_MEMORY = False
_SDPA_SWITCHES = {
    "flash": torch.backends.cuda.enable_flash_sdp,
    "math": torch.backends.cuda.enable_math_sdp,
    "cudnn": torch.backends.cuda.enable_cudnn_sdp,
    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
}


def apply_deterministic_mode(enabled: bool) -> None:
    """Switch the process to deterministic kernels (see the module docstring); call it before the process
    group starts and before the model is built. Nothing when not ``enabled``."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    os.environ.setdefault("NCCL_ALGO", NCCL_ALGORITHMS)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    for kernel, switch in _SDPA_SWITCHES.items():
        switch(kernel in SDPA_KERNELS)
    logger.info(
        "deterministic mode: torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=%s, "
        "SDPA kernels %s only, cuDNN deterministic, NCCL_ALGO=%s",
        os.environ["CUBLAS_WORKSPACE_CONFIG"],
        "/".join(SDPA_KERNELS),
        os.environ["NCCL_ALGO"],
    )
