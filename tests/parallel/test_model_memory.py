"""With T=2 each rank holds about half of the transformer's weights (only LayerNorms and a few biases are
replicated); the two halves together are exactly the single-rank model's split parameters."""

from __future__ import annotations

import torch

from megatron.model import GPTModel
from megatron.parallel.context import ParallelContext
from tests.model.test_gpt import small_config


def transformer_elements(model: GPTModel) -> int:
    return sum(p.numel() for p in model.transformer_layers.parameters())


def test_each_tensor_parallel_rank_holds_half_the_transformer_weights():
    config = small_config(num_layers=2, hidden_size=256, num_attention_heads=8, ffn_hidden_size=1024)
    full = GPTModel(config, ParallelContext.single())
    # Building the layers issues no collective, so both ranks' shards can be built in one process.
    ranks = [GPTModel(config, ParallelContext(tensor_rank=rank, tensor_size=2)) for rank in range(2)]

    for model in ranks:
        assert 0.5 <= transformer_elements(model) / transformer_elements(full) < 0.51
        assert model.word_embeddings_weight.shape[0] == config.padded_vocab_size // 2

    full_layer = dict(full.transformer_layers[1].named_parameters())
    for name, param in ranks[0].transformer_layers[1].named_parameters():
        if param.tensor_model_parallel:
            joined = torch.cat(
                [dict(r.transformer_layers[1].named_parameters())[name] for r in ranks], param.partition_dim
            )
            torch.testing.assert_close(joined, full_layer[name], rtol=0, atol=0)
        else:
            torch.testing.assert_close(param, full_layer[name], rtol=0, atol=0)
