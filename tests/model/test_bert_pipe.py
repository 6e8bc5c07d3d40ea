"""BERT's pipeline layers against the plain model, in one process: same weights, logits and losses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron.checkpointing.layout import pipeline_layer_prefixes
from megatron.config.errors import ConfigError
from megatron.config.schema import RecomputeConfig
from megatron.model.bert import BertModel
from megatron.model.bert_pipe import bert_pipeline_module, check_heads_on_last_stage
from megatron.parallel.context import ParallelContext
from tests.model.test_bert import VOCAB, inputs, small_config


def one_stage(binary_head: bool) -> torch.nn.Module:
    """All of the pipeline's layers on one stage (a pipeline of one), for comparing with ``BertModel``."""
    config = small_config()
    return bert_pipeline_module(
        config, ParallelContext.single(), 1234, RecomputeConfig(), "parameters", binary_head
    )


def full_state(pipeline: torch.nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    """The stage's weights under the plain model's names, as the checkpoint layout maps layer files."""
    layers = dict(pipeline_layer_prefixes(num_layers, bert_heads=True))
    state = {}
    for index, layer in enumerate(pipeline.forward_funcs):
        if index in layers:
            state.update({layers[index] + key: value for key, value in layer.state_dict().items()})
    return state


@pytest.mark.parametrize("binary_head", [True, False])
def test_pipeline_layers_are_the_plain_model(single_process_group, binary_head):
    config = small_config()
    plain = BertModel(config, seed=1234, binary_head=binary_head).eval()
    pipeline = one_stage(binary_head).eval()
    plain_state = plain.state_dict()
    pipeline_state = full_state(pipeline, config.num_layers)
    assert list(pipeline_state) == list(plain_state)
    for name, tensor in plain_state.items():
        assert torch.equal(pipeline_state[name], tensor), name

    tokens, padding, types = inputs()
    labels = torch.randint(0, VOCAB, tokens.shape, generator=torch.Generator().manual_seed(2))
    order = torch.tensor([0, 1, -1])
    with torch.no_grad():
        outputs = pipeline((tokens, padding, types))
        lm_logits, *binary_logits = outputs if binary_head else (outputs,)
        plain_lm, plain_binary = plain(tokens, padding, types)
        torch.testing.assert_close(lm_logits, plain_lm)
        if binary_head:
            torch.testing.assert_close(binary_logits[0], plain_binary)
        labels_tuple = (labels, padding.float(), order) if binary_head else (labels, padding.float())
        plain_losses = plain(tokens, padding, types, labels, padding.float(), order if binary_head else None)
        # Evaluation reports the masked-LM loss; training backpropagates the sum and names the sop part.
        lm_loss = plain_losses[0] if binary_head else plain_losses
        torch.testing.assert_close(pipeline.loss_fn(outputs, labels_tuple), lm_loss)
        pipeline.train()
        expected = sum(plain_losses) if binary_head else plain_losses
        torch.testing.assert_close(pipeline.loss_fn(outputs, labels_tuple), expected)
    additional = pipeline.get_additional_losses()
    if binary_head:
        assert list(additional) == ["sop loss"]
        torch.testing.assert_close(additional["sop loss"], plain_losses[1])
    else:
        assert additional is None


def test_heads_apart_from_the_output_embedding_are_refused():
    """Pipeline layers of a 5-layer BERT: 0 embedding .. 8 heads; ``uniform`` over 5 stages leaves the
    heads alone on the last one."""
    check_heads_on_last_stage(SimpleNamespace(parts=[0, 2, 4, 6, 7, 9]), 8, "uniform")
    with pytest.raises(ConfigError, match="--pipeline-partition-method uniform puts BERT's heads"):
        check_heads_on_last_stage(SimpleNamespace(parts=[0, 2, 4, 6, 8, 9]), 8, "uniform")
