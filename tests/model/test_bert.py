"""BERT against transformers' MegatronBert: the same logits from the converted weights; padding masks."""

from __future__ import annotations

import pytest
import torch

from megatron.checkpointing import reshape
from megatron.checkpointing.hf_bert import to_megatron_bert
from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.bert import BertModel
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import configure_recomputation

transformers = pytest.importorskip("transformers")

VOCAB = 100


def small_config(**overrides) -> ModelConfig:
    settings = dict(
        num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16,
        max_position_embeddings=16, padded_vocab_size=128, attention_dropout=0.0, hidden_dropout=0.0,
        layernorm_epsilon=1e-5, openai_gelu=False,
    )  # fmt: skip
    return ModelConfig(**{**settings, **overrides})


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised biases and unit LayerNorms would hide a mix-up of names; move every weight."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens, padding mask (two samples padded) and token types, as BERT's batches hold them."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 16), generator=generator)
    padding = torch.ones(3, 16, dtype=torch.long)
    padding[1, 10:] = 0
    padding[2, 5:] = 0
    types = torch.zeros(3, 16, dtype=torch.long)
    types[:, 7:] = 1
    return tokens, padding, types


@pytest.mark.parametrize("binary_head", [True, False])
def test_logits_match_megatron_bert(binary_head):
    config = small_config()
    ours = perturbed(BertModel(config, binary_head=binary_head))
    hf_config, hf_state = to_megatron_bert(ours.state_dict(), config, VOCAB)
    assert hf_config.hidden_act == "gelu" and hf_config.layer_norm_eps == 1e-5
    classes = [transformers.MegatronBertForMaskedLM]
    if binary_head:
        classes.append(transformers.MegatronBertForPreTraining)
    tokens, padding, types = inputs()
    with torch.no_grad():
        lm_logits, sop_logits = ours(tokens, padding, types)
    real = padding.bool()
    for cls in classes:
        theirs = cls(hf_config).eval()
        missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
        assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, missing
        if cls is transformers.MegatronBertForMaskedLM:  # no pooler, no sentence-order head
            assert {name.split(".")[1] for name in unexpected} <= {"pooler", "seq_relationship"}
        else:
            assert not unexpected
        theirs.tie_weights()
        with torch.no_grad():
            output = theirs(input_ids=tokens, attention_mask=padding, token_type_ids=types)
        reference = output.logits if cls is transformers.MegatronBertForMaskedLM else output.prediction_logits
        torch.testing.assert_close(lm_logits[..., :VOCAB][real], reference[real], atol=1e-5, rtol=1e-5)
        if cls is transformers.MegatronBertForPreTraining:
            torch.testing.assert_close(sop_logits, output.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    assert (sop_logits is None) == (not binary_head)


def test_padding_does_not_change_the_real_tokens_outputs():
    model = perturbed(BertModel(small_config()))
    tokens, padding, types = inputs()
    changed = tokens.clone()
    changed[padding == 0] = 7
    with torch.no_grad():
        first, sop_first = model(tokens, padding, types)
        second, sop_second = model(changed, padding, types)
    real = padding.bool()
    torch.testing.assert_close(first[real], second[real])
    torch.testing.assert_close(sop_first, sop_second)


def test_loss_is_masked_lm_plus_sentence_order():
    model = perturbed(BertModel(small_config()))
    tokens, padding, types = inputs()
    labels = torch.randint(0, VOCAB, tokens.shape, generator=torch.Generator().manual_seed(2))
    loss_mask = torch.zeros(tokens.shape)
    loss_mask[:, 2:5] = 1
    order = torch.tensor([0, 1, 1])
    with torch.no_grad():
        lm_loss, sop_loss = model(tokens, padding, types, labels, loss_mask, order)
        lm_logits, sop_logits = model(tokens, padding, types)
    expected = torch.nn.functional.cross_entropy(
        lm_logits[:, 2:5].reshape(-1, 128), labels[:, 2:5].reshape(-1)
    )
    torch.testing.assert_close(lm_loss, expected)
    torch.testing.assert_close(sop_loss, torch.nn.functional.cross_entropy(sop_logits, order))


def test_split_dimensions_of_bert_parameters_are_the_converters():
    for name, param in BertModel(small_config()).named_parameters():
        expected = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        assert reshape.tensor_parallel_dim(name) == expected, name


def test_megatron_parameter_names():
    names = set(BertModel(small_config()).state_dict())
    for name in (
        "language_model.embedding.tokentype_embeddings.weight",
        "language_model.encoder.layers.1.self_attention.query_key_value.weight",
        "language_model.encoder.final_layernorm.bias",
        "language_model.pooler.dense.weight",
        "lm_head.dense.weight",
        "lm_head.layernorm.weight",
        "lm_head.bias",
        "binary_head.weight",
    ):
        assert name in names, name
    assert not any(
        "pooler" in n or "binary_head" in n for n in BertModel(small_config(), binary_head=False).state_dict()
    )


def test_recomputation_keeps_the_padding_mask(single_process_group):
    """Layers recomputed in backward see the same padding mask: same loss and gradients as the plain model."""
    configure_recomputation(ParallelContext.single(), None)
    tokens, padding, types = inputs()
    labels = torch.randint(0, VOCAB, tokens.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for recompute in (RecomputeConfig(), RecomputeConfig("full", "uniform", 2), RecomputeConfig("selective")):
        model = BertModel(small_config(), recompute=recompute)
        lm_loss, sop_loss = model(tokens, padding, types, labels, padding.float(), torch.tensor([0, 1, 0]))
        (lm_loss + sop_loss).backward()
        results.append((lm_loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        for name, grad in results[0][1].items():
            torch.testing.assert_close(grads[name], grad, msg=name)
