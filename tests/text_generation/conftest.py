"""The generator every text-generation test drives, through the one fixture ``text_generator``."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from megatron.data.tokenizer import Tokenizer, build_tokenizer
from megatron.text_generation.api import Generation, SamplingOptions
from tests.data.corpora import MERGES, VOCAB

STAND_IN_MAX_SEQUENCE_LENGTH = 64
DEFAULT_SEED = 1234


class StandInGenerator:
    """A ``TextGenerator`` with no model: the bundled GPT-2 BPE tokenizer and pseudo-random tokens drawn
    from ``random_seed`` (a fixed one when None, so tests repeat), honouring every ``SamplingOptions`` field
    the way a model would. It refuses what the server must never pass on (an empty prompt, a prompt plus
    continuation past ``max_sequence_length``) with ValueError, which the server would answer with 500:
    the fuzz test's zero-5xx check thus also checks the server's own limits."""

    def __init__(self, tokenizer: Tokenizer, max_sequence_length: int):
        self._tokenizer = tokenizer
        self._max_sequence_length = max_sequence_length
        self._space = tokenizer.tokenize(" ")[0]

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length

    def _encode(self, prompt: str, add_bos: bool) -> list[int]:
        return ([self._tokenizer.eod] if add_bos else []) + self._tokenizer.tokenize(prompt)

    def token_count(self, prompt: str, add_bos: bool = False) -> int:
        return len(self._encode(prompt, add_bos))

    def _draw(self, rng: random.Random, previous: int, options: SamplingOptions) -> int:
        if options.greedy:
            return (previous * 31 + 7) % self._tokenizer.vocab_size
        pool = options.top_k or self._tokenizer.vocab_size
        return rng.randrange(pool)

    def _stopped(self, token: int, continuation: str, options: SamplingOptions) -> bool:
        if token == self._tokenizer.eod:
            return True
        if options.stop_on_eol and "\n" in continuation:
            return True
        if options.stop_on_double_eol and "\n\n" in continuation:
            return True
        return any(continuation.endswith(stop) for stop in options.stop_strings)

    def _continue(self, tokens: list[int], rng: random.Random, options: SamplingOptions) -> list[int]:
        start = len(tokens)
        for _ in range(options.tokens_to_generate):
            token = self._draw(rng, tokens[-1], options)
            after_colon = self._tokenizer.detokenize(tokens[-1:]).endswith(":")
            if (
                options.prevent_newline_after_colon
                and after_colon
                and "\n" in self._tokenizer.detokenize([token])
            ):
                token = self._space
            tokens.append(token)
            if self._stopped(token, self._tokenizer.detokenize(tokens[start:]), options):
                break
        return tokens

    def generate(self, prompts: Sequence[str], options: SamplingOptions) -> Generation:
        rng = random.Random(DEFAULT_SEED if options.random_seed is None else options.random_seed)
        texts, segments, all_tokens, lengths = [], [], [], []
        for prompt in prompts:
            tokens = self._encode(prompt, options.add_bos)
            if not tokens or len(tokens) + options.tokens_to_generate > self._max_sequence_length:
                raise ValueError(f"stand-in: {len(tokens)} prompt tokens + {options.tokens_to_generate}")
            lengths.append(len(tokens))
            tokens = self._continue(tokens, rng, options)
            texts.append(self._tokenizer.detokenize(tokens))
            segments.append([self._tokenizer.detokenize([token]) for token in tokens])
            all_tokens.append(tokens)
        logprobs = None
        if options.return_logprobs:
            uniform = -math.log(self._tokenizer.vocab_size)
            logprobs = [[uniform] * (len(tokens) - 1) for tokens in all_tokens]
        return Generation(texts, segments, all_tokens, logprobs, lengths)


@pytest.fixture(scope="session")
def text_generator() -> StandInGenerator:
    """STAND-IN: the lead replaces this fixture's body at merge with the real generator (a tiny randomly
    initialised GPT with the bundled GPT-2 BPE tokenizer); every text-generation test uses only this
    fixture, so that swap is the one change."""
    tokenizer = build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES, None)
    return StandInGenerator(tokenizer, STAND_IN_MAX_SEQUENCE_LENGTH)
