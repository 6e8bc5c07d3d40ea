"""DeepSpeed activation checkpointing gives the same loss and gradients, dropout included."""

from __future__ import annotations

import copy

import torch

from megatron.model import GPTModel
from megatron.training.activation_checkpointing import apply_deepspeed_activation_checkpointing
from tests.model.test_gpt import small_config


def loss_and_grads(model: GPTModel, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_recomputed_layers_match_plain_layers_with_dropout(single_process_group):
    torch.manual_seed(0)
    plain = GPTModel(small_config(attention_dropout=0.1, hidden_dropout=0.1))
    recomputed = copy.deepcopy(plain)
    apply_deepspeed_activation_checkpointing(
        recomputed.transformer_layers, {"train_micro_batch_size_per_gpu": 1}
    )
    tokens = torch.randint(0, 128, (2, 17))

    plain_loss, plain_grads = loss_and_grads(plain, tokens)
    recomputed_loss, recomputed_grads = loss_and_grads(recomputed, tokens)
    torch.testing.assert_close(recomputed_loss, plain_loss, rtol=0, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
