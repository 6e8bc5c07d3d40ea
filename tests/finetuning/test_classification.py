"""The finetuning models against transformers' MegatronBertForSequenceClassification and
MegatronBertForMultipleChoice on the same weights, and the pretrained language model loaded from
checkpoints of either layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron.checkpointing.hf_bert import to_megatron_bert
from megatron.checkpointing.layout import read_full_model, write_model_checkpoint
from megatron.config.errors import ConfigError
from megatron.finetuning.pretrained import load_pretrained, read_pretrained
from megatron.model.bert import BertModel
from megatron.model.classification import BertClassifier
from megatron.parallel.context import ParallelContext
from tests.model.test_bert import VOCAB, inputs, perturbed, small_config

transformers = pytest.importorskip("transformers")


def hf_weights(model: BertClassifier) -> tuple[object, dict[str, torch.Tensor]]:
    """HF's config and the ``bert.`` and ``classifier`` weights of ``model``, through the toolkit's BERT
    converter (given stand-ins for the pretraining heads it expects, which are dropped again)."""
    config = model.config
    state = {
        name: tensor for name, tensor in model.state_dict().items() if name.startswith("language_model.")
    }
    heads = BertModel(config).state_dict()
    state.update(
        {name: tensor for name, tensor in heads.items() if name.startswith(("lm_head.", "binary_head."))}
    )
    hf_config, hf_state = to_megatron_bert(state, config, VOCAB)
    hf_state = {name: tensor for name, tensor in hf_state.items() if name.startswith("bert.")}
    hf_state["classifier.weight"] = model.classification_head.weight
    hf_state["classifier.bias"] = model.classification_head.bias
    return hf_config, hf_state


def test_classification_matches_megatron_bert_for_sequence_classification():
    config = small_config()
    ours = perturbed(BertClassifier(config, num_classes=3))
    hf_config, hf_state = hf_weights(ours)
    hf_config.num_labels = 3
    theirs = transformers.MegatronBertForSequenceClassification(hf_config).eval()
    theirs.load_state_dict(hf_state, strict=True)
    tokens, padding, types = inputs()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        expected = theirs(input_ids=tokens, attention_mask=padding, token_type_ids=types, labels=labels)
        torch.testing.assert_close(ours(tokens, padding, types), expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(tokens, padding, types, labels), expected.loss, atol=1e-5, rtol=1e-5)


def test_multiple_choice_matches_megatron_bert_for_multiple_choice():
    config = small_config()
    ours = perturbed(BertClassifier(config, num_classes=4, multiple_choice=True))
    hf_config, hf_state = hf_weights(ours)
    theirs = transformers.MegatronBertForMultipleChoice(hf_config).eval()
    theirs.load_state_dict(hf_state, strict=True)
    tokens, padding, types = (tensor[None].expand(2, -1, -1).clone() for tensor in inputs())  # [2, 3, 16]
    tokens[1] = tokens[1].flip(0)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        expected = theirs(input_ids=tokens, attention_mask=padding, token_type_ids=types, labels=labels)
        logits = ours(tokens, padding, types)
        assert logits.shape == (2, 3)
        torch.testing.assert_close(logits, expected.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(tokens, padding, types, labels), expected.loss, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def pretrained_layouts(pretrained_bert, tmp_path_factory):
    """The pretrained checkpoint, and the same weights converted to two pipeline stages."""
    folder = tmp_path_factory.mktemp("pipeline_layout")
    write_model_checkpoint(str(folder), read_full_model(str(pretrained_bert.checkpoint)), 1, 2)
    return pretrained_bert, folder


def test_pretrained_language_model_loads_from_any_layout(pretrained_layouts):
    pretrained, pipelined = pretrained_layouts
    config = dataclasses.replace(pretrained.model_config, hidden_dropout=0.0)
    full = read_full_model(str(pretrained.checkpoint))
    loaded = []
    for folder in (pretrained.checkpoint, pipelined):
        model = BertClassifier(config, num_classes=3, seed=7)
        load_pretrained(
            model, read_pretrained(str(folder), config, pretrained.vocab_size), ParallelContext.single(), "x"
        )
        loaded.append(model.state_dict())
    fresh = BertClassifier(config, num_classes=3, seed=7).state_dict()
    for name, tensor in loaded[0].items():
        torch.testing.assert_close(loaded[1][name], tensor, atol=0, rtol=0, msg=name)
        if name.startswith("language_model."):
            torch.testing.assert_close(tensor, full.state_dict[name], atol=0, rtol=0, msg=name)
        else:  # the task head starts from its initialisation
            torch.testing.assert_close(tensor, fresh[name], atol=0, rtol=0, msg=name)


def test_pretrained_checkpoint_of_another_shape_is_refused(pretrained_bert):
    config = dataclasses.replace(pretrained_bert.model_config, num_layers=3)
    with pytest.raises(ConfigError, match=r"--num-layers 3 \(flags\) vs 2 \(checkpoint\)"):
        read_pretrained(str(pretrained_bert.checkpoint), config, pretrained_bert.vocab_size)
