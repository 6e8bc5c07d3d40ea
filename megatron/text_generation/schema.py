"""The HTTP schema of ``PUT /api``: Megatron-LM's request and response JSON as pydantic models, the one place
the REST server, its OpenAPI document and the client take field names and types from.

Types are strict (``"true"`` is not a bool, ``1.5`` is not an int) because Megatron-LM's server refuses
such values and scripts written against it should fail the same way here. The ranges that depend on no
other field are repeated from :mod:`megatron.text_generation.api` (through its constants) so that the
OpenAPI document states them; the rules between fields stay in ``SamplingOptions`` alone.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from megatron.text_generation.api import MAX_TEMPERATURE, MAX_TOP_K, Generation, SamplingOptions

# Megatron-LM sends -1 for "no seed"; the top is int64's, the largest seed torch's generators take signed.
NO_SEED = -1
MAX_RANDOM_SEED = 2**63 - 1

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _encodable(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``), which no tokenizer can encode: refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"not valid Unicode text at character {error.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class GenerateRequest(BaseModel):
    """The body of ``PUT /api``, field for field Megatron-LM's (``add_BOS`` keeps its capitals)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompts: list[Text] = Field(min_length=1, description="Texts to continue, or to score with logprobs.")
    tokens_to_generate: int = Field(64, ge=0, description="0 with logprobs scores the prompts only.")
    logprobs: bool = Field(False, description="Return the log-probability of every token after the first.")
    temperature: float = Field(1.0, gt=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, le=MAX_TOP_K, description="1 is greedy decoding; excludes top_p.")
    top_p: Probability = 0.0
    top_p_decay: Probability = 0.0
    top_p_bound: Probability = 0.0
    add_BOS: bool = Field(False, description="Start every prompt with the tokenizer's BOS (EOD) token.")
    stop_on_double_eol: bool = False
    stop_on_eol: bool = False
    prevent_newline_after_colon: bool = False
    random_seed: int | None = Field(
        None, ge=NO_SEED, le=MAX_RANDOM_SEED, description="Seed for sampling; null or -1 draws a fresh one."
    )
    no_log: bool = Field(False, description="Do not log this request.")
    stop_strings: list[Text] = Field(
        default_factory=list, description="Stop a prompt once its continuation ends with one of these."
    )
    beam_width: int | None = Field(None, description="Megatron-LM's beam search: not supported, leave null.")

    def sampling_options(self) -> SamplingOptions:
        """The library's options for this request; raises ``RequestError`` for a broken rule."""
        seed = None if self.random_seed in (None, NO_SEED) else self.random_seed
        return SamplingOptions(
            tokens_to_generate=self.tokens_to_generate,
            return_logprobs=self.logprobs,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            top_p_decay=self.top_p_decay,
            top_p_bound=self.top_p_bound,
            add_bos=self.add_BOS,
            stop_on_eol=self.stop_on_eol,
            stop_on_double_eol=self.stop_on_double_eol,
            prevent_newline_after_colon=self.prevent_newline_after_colon,
            stop_strings=tuple(self.stop_strings),
            random_seed=seed,
        )


class GenerateResponse(BaseModel):
    """Megatron-LM's answer, one entry per prompt in request order; ``tokens`` is ours (the ids)."""

    text: list[str] = Field(description="Each prompt followed by its continuation.")
    segments: list[list[str]] = Field(description="Each token of text, as text.")
    tokens: list[list[int]]
    logprobs: list[list[float]] | None = Field(None, description="Only when the request set logprobs.")

    @classmethod
    def from_generation(cls, generation: Generation) -> GenerateResponse:
        return cls(
            text=generation.texts,
            segments=generation.segments,
            tokens=generation.tokens,
            logprobs=generation.logprobs,
        )


class ErrorResponse(BaseModel):
    """Every refusal: ``"<field>: <message>"``, the field named as the request spells it."""

    error: str


class HealthResponse(BaseModel):
    status: str
    max_sequence_length: int
