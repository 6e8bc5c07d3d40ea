"""``--fp8-format``: whether this run can take FP8 matmuls, checked before any process group starts.

torch's FP8 matmul (``torch._scaled_mm``, which torchao calls) needs an Ada or Hopper GPU, or the CPU, and
both dimensions it sums over or writes out to be multiples of 16: the linear layers' features, which the
model's shape fixes (an error here), and the tokens of a micro batch, which the weight-gradient matmul sums
over (padded when they may not be a multiple of 16).
"""

from __future__ import annotations

import argparse
import importlib.metadata

import torch

from megatron.config.errors import ConfigError
from megatron.config.schema import CurriculumConfig, Float8Config, MaskedLMConfig, ModelConfig, ParallelConfig

_ALIGNMENT = 16
# The oldest torchao whose float8 training this toolkit is tested with (megatron/model/float8.py).
_OLDEST_TORCHAO = (0, 18)
# Compute capability of the first GPUs with FP8 tensor cores (Ada: 8.9, Hopper: 9.0).
_FP8_CAPABILITY = (8, 9)


def float8_config(
    args: argparse.Namespace,
    model: ModelConfig,
    parallel: ParallelConfig,
    micro_batch_size: int,
    masked_lm: MaskedLMConfig | None,
    curriculum: CurriculumConfig | None,
) -> Float8Config | None:
    if args.fp8_format is None:
        return None
    _check_torchao()
    _check_device()
    _check_features(model, parallel)
    sequences = [model.seq_length]
    if masked_lm is not None and masked_lm.decoder_seq_length is not None:
        sequences.append(masked_lm.decoder_seq_length)
    tokens = [micro_batch_size * length // parallel.ds_sequence_parallel_size for length in sequences]
    # Curriculum learning cuts micro batches to scheduled lengths, which need not align.
    pad_tokens = curriculum is not None or any(count % _ALIGNMENT for count in tokens)
    return Float8Config(format=args.fp8_format, pad_tokens=pad_tokens)


def _check_torchao() -> None:
    try:
        version = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "--fp8-format: the torchao package, which provides the FP8 matmuls, is not installed. Install it "
            "(pip install 'megatron-ds[fp8]', or pip install torchao) or drop --fp8-format to train in bf16."
        ) from None
    release = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    if release < _OLDEST_TORCHAO:
        oldest = ".".join(map(str, _OLDEST_TORCHAO))
        raise ConfigError(
            f"--fp8-format: torchao {version} is installed; this toolkit needs torchao>={oldest} "
            f"(pip install -U 'torchao>={oldest}')."
        )


def _check_device() -> None:
    if not torch.cuda.is_available():
        return  # the CPU runs torch._scaled_mm too (slowly): what the tests use
    capability = torch.cuda.get_device_capability()
    if capability < _FP8_CAPABILITY:
        name = torch.cuda.get_device_name()
        raise ConfigError(
            f"--fp8-format: {name} (compute capability {capability[0]}.{capability[1]}) has no FP8 tensor "
            "cores; they start with Ada and Hopper (8.9). Drop --fp8-format and train in bf16 on this GPU."
        )


def _check_features(model: ModelConfig, parallel: ParallelConfig) -> None:
    """Each rank multiplies its own slice of the split dimensions, so those must align per rank."""
    tensor = parallel.tensor_model_parallel_size
    per_rank = [
        ("--hidden-size", model.hidden_size, model.hidden_size, 1),
        (
            "--num-attention-heads x --kv-channels",
            model.num_attention_heads * model.head_dim,
            model.num_attention_heads * model.head_dim // tensor,
            tensor,
        ),
        (
            "--num-key-value-heads x --kv-channels",
            model.kv_heads * model.head_dim,
            model.kv_heads * model.head_dim // tensor,
            tensor,
        ),
        ("--ffn-hidden-size", model.ffn_hidden_size, model.ffn_hidden_size // tensor, tensor),
    ]
    for flag, size, local, split in per_rank:
        if local % _ALIGNMENT:
            where = f" / {split} tensor-parallel ranks = {local}" if split > 1 else ""
            raise ConfigError(
                f"--fp8-format: {flag} {size}{where} is not a multiple of {_ALIGNMENT}, which FP8 matmuls "
                f"need. Make {flag} a multiple of {_ALIGNMENT * split}, or drop --fp8-format."
            )
