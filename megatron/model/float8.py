"""FP8 matmuls in the transformer layers (``--fp8-format``), through torchao's float8 training.

Megatron-LM reaches FP8 through Transformer Engine's own layers, which would replace this toolkit's
tensor-parallel linears; here only their local matrix multiply changes (``gemm``, see
``megatron.parallel.layers``), so the parameters, their split across ranks and the checkpoint layout stay
as they are, and a run can switch FP8 on or off between checkpoints. The embedding and the output layer
tied to it stay in the run's precision, as in Megatron.

Scaling is dynamic and tensorwise: each operand is scaled by its own absolute maximum in the step, on each
rank over its own shard. With tensor parallelism the ranks' scales therefore differ from one process's,
within FP8 rounding.

torchao's public entry point (``convert_to_float8_training``) swaps ``nn.Linear`` modules only; the
autograd function its ``Float8Linear`` calls is what this module uses, so the torchao version is checked
at start-up (``megatron.config.float8``).
"""

from __future__ import annotations

import torch
from torch import nn

from megatron.config.schema import Float8Config
from megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear

_GRADIENT_DTYPES = {"hybrid": torch.float8_e5m2, "e4m3": torch.float8_e4m3fn}


class Float8Gemm:
    """``F.linear``'s signature, the matmul in FP8: inputs and weights cast to e4m3, the output gradient
    to the format's gradient dtype, each with its own scale; the product accumulates in higher precision
    and comes out in the input's dtype (the autocast dtype under autocast)."""

    def __init__(self, config: Float8Config):
        from torchao.float8 import CastConfig, Float8LinearConfig, LinearMMConfig, ScaledMMConfig
        from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

        self._matmul = matmul_with_hp_or_float8_args
        self.config = Float8LinearConfig(
            cast_config_grad_output=CastConfig(target_dtype=_GRADIENT_DTYPES[config.format]),
            pad_inner_dim=config.pad_tokens,
        )
        gemms = (
            self.config.gemm_config_output,
            self.config.gemm_config_grad_input,
            self.config.gemm_config_grad_weight,
        )
        self.mm_config = LinearMMConfig(
            *(ScaledMMConfig(False, gemm.use_fast_accum, False, config.pad_tokens) for gemm in gemms)
        )

    def __call__(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            # F.linear would run in the autocast dtype; the FP8 matmul returns its input's dtype.
            hidden = hidden.to(torch.get_autocast_dtype(device))
        output = self._matmul.apply(hidden, weight.t(), self.mm_config, self.config)
        return output if bias is None else output + bias.to(output.dtype)


def apply_float8(model: nn.Module, config: Float8Config) -> str:
    """Give every tensor-parallel linear layer of ``model`` the FP8 matmul; returns what runs, for the log."""
    gemm = Float8Gemm(config)
    linears = [m for m in model.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]
    for linear in linears:
        linear.gemm = gemm
    gradients = "e5m2" if config.format == "hybrid" else "e4m3"
    padding = ", token dimension padded to 16" if config.pad_tokens else ""
    return (
        f"FP8 ({config.format}: e4m3 activations and weights, {gradients} gradients; torchao, dynamic "
        f"tensorwise scaling{padding}) in {len(linears)} linear layers; embedding and output layer unchanged"
    )
