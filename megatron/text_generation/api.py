"""What a text-generation request asks and what it gets back: the one place that states the rules of
Megatron-LM's generation API (``PUT /api`` of ``tools/run_text_generation_server.py``), shared by the
library, the REST server and the command-line tools.

Field names and ranges are Megatron-LM's, so that clients written against its server work here: a
request with ``tokens_to_generate`` 0 and ``logprobs`` scores the prompts without generating; ``top_k``
1 is greedy decoding; ``top_k`` and ``top_p`` exclude each other; ``top_p_decay``/``top_p_bound`` shrink
``top_p`` after each generated token, down to the bound. A rule broken raises :class:`RequestError`
naming the field, which the server answers with 400.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1000


class RequestError(ValueError):
    """A request field out of its range; ``field`` names it (Megatron-LM's name)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class SamplingOptions:
    """How to continue the prompts. ``random_seed`` None draws from a fresh seed; ``stop_strings``: stop a
    prompt's generation when its generated text ends with one of them (kept in the output, as EOD is)."""

    tokens_to_generate: int = 64
    return_logprobs: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    top_p_decay: float = 0.0
    top_p_bound: float = 0.0
    add_bos: bool = False
    stop_on_eol: bool = False
    stop_on_double_eol: bool = False
    prevent_newline_after_colon: bool = False
    stop_strings: tuple[str, ...] = ()
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if self.tokens_to_generate < 0:
            raise RequestError("tokens_to_generate", f"{self.tokens_to_generate}: must be >= 0")
        if self.tokens_to_generate == 0 and not self.return_logprobs:
            raise RequestError(
                "tokens_to_generate", "0 generates nothing: set logprobs to true to score the prompts"
            )
        if not (math.isfinite(self.temperature) and 0.0 < self.temperature <= MAX_TEMPERATURE):
            raise RequestError("temperature", f"{self.temperature}: must be > 0 and <= {MAX_TEMPERATURE:g}")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise RequestError("top_k", f"{self.top_k}: must be between 0 and {MAX_TOP_K}")
        for name in ("top_p", "top_p_decay", "top_p_bound"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise RequestError(name, f"{value}: must be between 0 and 1")
        if self.top_k > 0 and self.top_p > 0.0:
            raise RequestError("top_p", "top_k and top_p cannot both be set: choose one sampling method")
        if self.top_p == 0.0 and (self.top_p_decay > 0.0 or self.top_p_bound > 0.0):
            raise RequestError("top_p_decay", "top_p_decay and top_p_bound need top_p > 0")
        if self.top_p_bound > self.top_p > 0.0:
            raise RequestError("top_p_bound", f"{self.top_p_bound}: must not exceed top_p {self.top_p}")
        if self.random_seed is not None and self.random_seed < 0:
            raise RequestError("random_seed", f"{self.random_seed}: must be >= 0")
        if any(not stop for stop in self.stop_strings):
            raise RequestError("stop_strings", "an empty stop string would stop at once")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1


@dataclass(frozen=True)
class Generation:
    """One result per prompt, in request order, as Megatron-LM's server returns them: ``texts`` the prompt
    followed by its continuation, ``segments`` each token of it as text, ``tokens`` the ids, and (when
    asked) ``logprobs``: the log-probability of every token after the first, under the model."""

    texts: list[str]
    segments: list[list[str]]
    tokens: list[list[int]]
    logprobs: list[list[float]] | None = None
    # Per prompt: the number of prompt tokens (BOS included), where the continuation starts in ``tokens``.
    prompt_lengths: list[int] = field(default_factory=list)
    # Per prompt: the generated text alone, decoded as a whole.
    continuations: list[str] = field(default_factory=list)


class TextGenerator(Protocol):
    """What the server and the tools drive: a model with its tokenizer, ready on every rank."""

    @property
    def max_sequence_length(self) -> int:
        """Prompt plus generated tokens may not exceed this (the model's position range)."""

    def token_count(self, prompt: str, add_bos: bool = False) -> int:
        """How many tokens ``prompt`` takes, for the server's length limits."""

    def generate(self, prompts: Sequence[str], options: SamplingOptions) -> Generation:
        """Continue (or, with ``tokens_to_generate`` 0, score) every prompt."""
