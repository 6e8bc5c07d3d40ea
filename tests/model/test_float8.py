"""FP8 matmuls (``--fp8-format``) compute what the plain matmuls compute, within FP8 rounding.

The CPU runs torch's FP8 matmul for real (``torch._scaled_mm``, which torchao calls on a GPU too), so these
tests cast and scale as a GPU run does; the kernel's summation order and speed differ.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from megatron.config.schema import Float8Config, KernelConfig
from megatron.model import GPTModel
from megatron.model.float8 import Float8Gemm, apply_float8
from megatron.model.kernels import apply_kernels
from tests.model.test_gpt import small_config
from tests.model.test_kernels import assert_compiled_matches_eager, loss_and_grads


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def linear_and_grads(gemm, hidden, weight, bias, output_grad):
    hidden, weight, bias = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
    output = gemm(hidden, weight, bias)
    output.backward(output_grad)
    return output.detach(), hidden.grad, weight.grad, bias.grad


@pytest.mark.parametrize("fp8_format", ["hybrid", "e4m3"])
def test_fp8_matmul_follows_the_plain_one_within_fp8_rounding(fp8_format):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 32, generator=generator)
    weight = torch.randn(48, 32, generator=generator) * 0.1
    bias = torch.randn(48, generator=generator)
    output_grad = torch.randn(64, 48, generator=generator)
    plain = linear_and_grads(F.linear, hidden, weight, bias, output_grad)
    fp8 = linear_and_grads(Float8Gemm(Float8Config(fp8_format)), hidden, weight, bias, output_grad)
    for name, got, want in zip(("output", "input grad", "weight grad", "bias grad"), fp8, plain):
        assert relative_error(got, want) < 0.1, name
    # It did quantise: e4m3 keeps 3 mantissa bits, so the product is visibly off from fp32's.
    assert relative_error(fp8[0], plain[0]) > 1e-3


def test_gradient_format_sets_the_output_gradient_dtype():
    """hybrid's e5m2 gradients keep 2 mantissa bits against e4m3's 3: the same backward rounds differently."""
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(32, 32, generator=generator), torch.randn(16, 32, generator=generator)
    bias, output_grad = torch.zeros(16), torch.randn(32, 16, generator=generator)
    plain = linear_and_grads(F.linear, hidden, weight, bias, output_grad)
    hybrid = linear_and_grads(Float8Gemm(Float8Config("hybrid")), hidden, weight, bias, output_grad)
    e4m3 = linear_and_grads(Float8Gemm(Float8Config("e4m3")), hidden, weight, bias, output_grad)
    torch.testing.assert_close(hybrid[0], e4m3[0])  # same forward
    assert relative_error(e4m3[1], plain[1]) < relative_error(hybrid[1], plain[1])


def test_fp8_matmul_returns_the_autocast_dtype():
    gemm = Float8Gemm(Float8Config("hybrid"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = gemm(torch.randn(16, 32), torch.randn(16, 32), torch.zeros(16))
    assert output.dtype == torch.bfloat16


@pytest.mark.parametrize("architecture", ["gpt", "llama"])
def test_fp8_model_follows_the_plain_model(architecture):
    """LLaMA-style: no biases, SwiGLU's [gate; up] and grouped key/value heads in the fused projections."""
    from tests.checkpointing.test_hf_llama import llama_config

    torch.manual_seed(0)
    config = (
        small_config(num_layers=2)
        if architecture == "gpt"
        else llama_config(hidden_size=32, ffn_hidden_size=64)
    )
    plain = GPTModel(config)
    fp8 = copy.deepcopy(plain)
    description = apply_float8(fp8, Float8Config("hybrid"))
    assert "in 8 linear layers" in description, description  # 4 per layer: QKV, projection, 2 in the MLP
    assert fp8.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep their layout
    tokens = torch.randint(0, 128, (2, 17))
    plain_loss, plain_grads = loss_and_grads(plain, tokens)
    fp8_loss, fp8_grads = loss_and_grads(fp8, tokens)
    torch.testing.assert_close(fp8_loss, plain_loss, rtol=2e-3, atol=0)
    assert fp8_loss != plain_loss
    for name, grad in plain_grads.items():
        assert relative_error(fp8_grads[name], grad) < 0.15, name


def test_padded_tokens_give_the_unpadded_result():
    """A GPU's FP8 matmul needs the 30 tokens here padded to 32 (curriculum lengths need that); the CPU's
    takes them as they are, so the two can be compared: the zero padding must change nothing."""
    torch.manual_seed(0)
    unpadded = GPTModel(small_config(num_layers=1))
    padded = copy.deepcopy(unpadded)
    apply_float8(unpadded, Float8Config("hybrid"))
    apply_float8(padded, Float8Config("hybrid", pad_tokens=True))
    tokens = torch.randint(0, 128, (3, 11))
    unpadded_loss, unpadded_grads = loss_and_grads(unpadded, tokens)
    padded_loss, padded_grads = loss_and_grads(padded, tokens)
    torch.testing.assert_close(padded_loss, unpadded_loss)
    for name, grad in unpadded_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, msg=name)


@pytest.mark.slow
def test_compiled_fp8_model_matches_eager_fp8_model():
    torch.manual_seed(0)
    eager = GPTModel(small_config(num_layers=2))
    apply_float8(eager, Float8Config("hybrid"))
    compiled = copy.deepcopy(eager)
    apply_kernels(compiled, KernelConfig(torch_compile=True))
    assert_compiled_matches_eager(compiled, eager)
