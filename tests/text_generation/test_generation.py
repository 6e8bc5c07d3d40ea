"""Incremental decoding against full-sequence forwards, on tiny random GPT and LLaMA-style models (fp32)."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch

from megatron.config.schema import ModelConfig
from megatron.model import GPTModel
from megatron.model.kv_cache import KVCache, StaticKVCache
from megatron.text_generation.api import RequestError, SamplingOptions
from megatron.text_generation.generator import ModelTextGenerator
from megatron.text_generation.sampling import decayed_top_p, sample
from tests.text_generation.conftest import TINY_GPT

GPT = TINY_GPT
LLAMA = dataclasses.replace(
    GPT, learned_position_embeddings=False, rotary_position_embeddings=True, swiglu=True,
    normalization="rmsnorm", add_bias_linear=False, untie_embeddings_and_output_weights=True,
    num_key_value_heads=2,
)  # fmt: skip
PROMPTS = ["In the beginning God created", "And the earth", "Blessed are the meek, for they shall"]


def generator_for(config: ModelConfig, tokenizer) -> ModelTextGenerator:
    return ModelTextGenerator(GPTModel(config, seed=7), tokenizer)


@pytest.mark.parametrize("config", [GPT, LLAMA], ids=["gpt", "llama"])
def test_cached_logits_equal_full_forward_logits(config):
    model = GPTModel(config, seed=3).eval()
    tokens = torch.randint(0, 8000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(config.num_layers, 2, 12, config.kv_heads, config.head_dim, torch.float32, "cpu")
        pieces = [model(tokens[:, :5], kv_cache=cache)]
        pieces += [model(tokens[:, position : position + 1], kv_cache=cache) for position in range(5, 9)]
        pieces.append(model(tokens[:, 9:], kv_cache=cache))  # several tokens after a cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [GPT, LLAMA], ids=["gpt", "llama"])
def test_static_cache_logits_equal_full_forward_logits(config):
    """The cache a captured decoding step runs on: its position on the device, every step attending to all
    of its positions under a mask. Reused after a reset, with the earlier batch's values still behind the
    mask. A one-token prompt takes the one-token path from position 0."""
    model = GPTModel(config, seed=3).eval()
    cache = StaticKVCache(config.num_layers, 2, 16, config.kv_heads, config.head_dim, torch.float32, "cpu")
    for seed, prompt in ((0, 5), (1, 1)):
        tokens = torch.randint(0, 8000, (2, 12), generator=torch.Generator().manual_seed(seed))
        cache.reset()
        with torch.no_grad():
            full = model(tokens)
            pieces = [model(tokens[:, :prompt], kv_cache=cache)]
            pieces += [model(tokens[:, at : at + 1], kv_cache=cache) for at in range(prompt, 12)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
        assert int(cache.length) == 12


def test_a_dropped_cache_is_freed_at_once():
    """No reference cycle: a finished batch's cache must not wait for the cycle collector (on a GPU,
    earlier batches' caches stayed allocated)."""
    gc.disable()
    try:
        cache = KVCache(2, 1, 8, 2, 4, torch.float32, "cpu")
        keys = weakref.ref(cache.layers[1].keys)
        del cache
        assert keys() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("config", [GPT, LLAMA], ids=["gpt", "llama"])
def test_greedy_output_is_the_argmax_of_full_forwards(config, tokenizer):
    generator = generator_for(config, tokenizer)
    result = generator.generate(PROMPTS[:1], SamplingOptions(tokens_to_generate=10, top_k=1))
    tokens = result.tokens[0]
    prompt_length = result.prompt_lengths[0]
    assert len(tokens) == prompt_length + 10  # a random model never hits EOD in 10 greedy steps here
    with torch.no_grad():
        for position in range(prompt_length, len(tokens)):
            logits = generator.model(torch.tensor([tokens[:position]]))[0, -1, : tokenizer.vocab_size]
            assert tokens[position] == int(logits.argmax())
    assert result.texts[0].startswith(PROMPTS[0])
    assert "".join(result.segments[0]) == result.texts[0]


def test_logprobs_are_those_of_a_full_forward(tokenizer):
    """Over the whole padded vocabulary, as Megatron-LM reports them: sampling's masks (the padding
    entries, newlines after a colon) leave them alone."""
    generator = generator_for(dataclasses.replace(GPT, padded_vocab_size=8320), tokenizer)
    options = SamplingOptions(
        tokens_to_generate=4, return_logprobs=True, top_k=1, prevent_newline_after_colon=True
    )
    result = generator.generate([*PROMPTS, "Behold:"], options)
    for tokens, logprobs in zip(result.tokens, result.logprobs, strict=True):
        with torch.no_grad():
            logits = generator.model(torch.tensor([tokens]))[0, :-1].float()
        expected = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-5, rtol=1e-5)


def test_scoring_generates_nothing(tokenizer):
    generator = generator_for(GPT, tokenizer)
    result = generator.generate(PROMPTS, SamplingOptions(tokens_to_generate=0, return_logprobs=True))
    assert result.tokens == [generator.prompt_tokens(prompt) for prompt in PROMPTS]
    assert [len(logprobs) for logprobs in result.logprobs] == [len(t) - 1 for t in result.tokens]
    assert result.texts == PROMPTS


@pytest.mark.parametrize("config", [GPT, LLAMA], ids=["gpt", "llama"])
def test_a_batch_gives_what_each_prompt_gives_alone(config, tokenizer):
    generator = generator_for(config, tokenizer)
    options = SamplingOptions(tokens_to_generate=6, top_k=1, return_logprobs=True)
    batch = generator.generate(PROMPTS, options)
    for index, prompt in enumerate(PROMPTS):
        alone = generator.generate([prompt], options)
        assert batch.tokens[index] == alone.tokens[0]
        torch.testing.assert_close(
            torch.tensor(batch.logprobs[index]), torch.tensor(alone.logprobs[0]), atol=1e-5, rtol=1e-5
        )


def test_seeded_sampling_repeats_and_seeds_differ(tokenizer):
    generator = generator_for(GPT, tokenizer)

    def draw(seed: int) -> list[list[int]]:
        options = SamplingOptions(tokens_to_generate=8, top_p=0.9, random_seed=seed)
        return generator.generate(PROMPTS, options).tokens

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_stop_rules(tokenizer):
    """A model whose output layer always favours one token: EOD, a newline, or a stop string's token."""
    generator = generator_for(GPT, tokenizer)

    def favour(token: int) -> None:
        with torch.no_grad():
            generator.model.output_weight.zero_()
            generator.model.output_weight[token] = 1.0
            generator.model.language_model.encoder.final_layernorm.bias.fill_(1.0)

    newline = tokenizer.tokenize("\n")
    assert len(newline) == 1
    favour(tokenizer.eod)
    ended = generator.generate(PROMPTS[:1], SamplingOptions(tokens_to_generate=5, top_k=1))
    assert ended.tokens[0][-1] == tokenizer.eod and len(ended.tokens[0]) == ended.prompt_lengths[0] + 1
    favour(newline[0])
    options = dict(tokens_to_generate=5, top_k=1)
    unstopped = generator.generate(PROMPTS[:1], SamplingOptions(**options))
    assert len(unstopped.tokens[0]) == ended.prompt_lengths[0] + 5
    on_eol = generator.generate(PROMPTS[:1], SamplingOptions(**options, stop_on_eol=True))
    assert on_eol.texts[0] == PROMPTS[0] + "\n"
    on_double = generator.generate(PROMPTS[:1], SamplingOptions(**options, stop_on_double_eol=True))
    assert on_double.texts[0] == PROMPTS[0] + "\n\n"
    on_string = generator.generate(PROMPTS[:1], SamplingOptions(**options, stop_strings=("\n\n\n",)))
    assert on_string.texts[0] == PROMPTS[0] + "\n\n\n"
    no_newline = SamplingOptions(**options, prevent_newline_after_colon=True)
    after_colon = generator.generate(["Behold:"], no_newline)
    assert after_colon.tokens[0][after_colon.prompt_lengths[0]] != newline[0]


def test_sampling_sets():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, float("-inf")]])
    seeded = torch.Generator().manual_seed(0)
    top_k = {int(sample(logits, False, 1.0, 2, 0.0, seeded)) for _ in range(200)}
    assert top_k == {0, 1}
    probabilities = torch.softmax(logits, dim=-1)[0]
    top_p = {int(sample(logits, False, 1.0, 0, float(probabilities[0]) + 1e-3, seeded)) for _ in range(200)}
    assert top_p == {0, 1}
    assert {int(sample(logits, False, 1.0, 0, 1e-6, seeded)) for _ in range(50)} == {0}
    assert int(sample(logits, True, 1.0, 0, 0.0, None)) == 0
    for top_k, top_p in ((0, 0.0), (2, 0.0), (0, 0.5)):
        assert int(sample(logits, False, 5e-324, top_k, top_p, seeded)) == 0
    tied = torch.tensor([[1e30, 1e30, -1e30]])
    assert {int(sample(tied, False, 5e-324, 0, 0.0, seeded)) for _ in range(50)} == {0, 1}
    assert decayed_top_p(0.9, 0.5, 0.3, 2) == 0.3 and decayed_top_p(0.9, 0.5, 0.1, 1) == 0.45


def test_request_errors_name_the_field(tokenizer):
    generator = generator_for(GPT, tokenizer)
    with pytest.raises(RequestError) as error:
        generator.generate(["x" * 10], SamplingOptions(tokens_to_generate=60))
    assert error.value.field == "tokens_to_generate"
    with pytest.raises(RequestError) as error:
        generator.generate([""], SamplingOptions(tokens_to_generate=1))
    assert error.value.field == "prompts"
    for fields, name in (
        (dict(temperature=0.0), "temperature"), (dict(top_k=2, top_p=0.5), "top_p"),
        (dict(tokens_to_generate=0), "tokens_to_generate"), (dict(top_p_decay=0.5), "top_p_decay"),
        (dict(random_seed=-3), "random_seed"), (dict(top_k=1001), "top_k"),
    ):  # fmt: skip
        with pytest.raises(RequestError) as error:
            SamplingOptions(**fields)
        assert error.value.field == name
