"""Scoring token sequences with a GPT model: the summed log-loss of a sequence's scored targets, and
whether the model's most likely token is right at every one of them (Megatron-LM's zero-shot metrics).

Scores come from the full logits in float32, over the tokenizer's vocabulary only: the embedding's padding
rows (``--make-vocab-size-divisible-by``) are no tokens, and leaving them out makes the numbers those of
the same model exported to HF with the tokenizer's vocabulary. (Megatron-LM scores the padded logits; a
trained model gives its padding rows little probability, so the difference is small but not zero.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron.text_generation.samples import batches


@dataclass(frozen=True)
class Sample:
    """``tokens``: a model input followed by its last target; target ``i`` is ``tokens[i + 1]``, predicted
    at position ``i``. The targets from index ``first_scored`` to the end are scored; the ones before are
    context only."""

    tokens: list[int]
    first_scored: int

    def __post_init__(self) -> None:
        if not 0 <= self.first_scored < len(self.tokens) - 1:
            raise ValueError(
                f"a sample of {len(self.tokens)} tokens cannot score from target {self.first_scored}"
            )

    @property
    def num_scored(self) -> int:
        return len(self.tokens) - 1 - self.first_scored


@dataclass(frozen=True)
class SampleScore:
    loss: float  # the summed negative log-likelihood of the scored targets (nats)
    correct: bool  # the argmax is the target at every scored position


@torch.no_grad()
def score_batch(
    model: torch.nn.Module, samples: Sequence[Sample], vocab_size: int, pad_id: int
) -> list[SampleScore]:
    """One forward over ``samples``, the shorter ones padded at the end with ``pad_id`` (under the causal
    mask padding after a token never changes its logits). Every tensor-parallel rank must call this with
    the same samples: the model gathers its logits over them."""
    length = max(len(sample.tokens) for sample in samples)
    device = next(model.parameters()).device
    rows = [sample.tokens + [pad_id] * (length - len(sample.tokens)) for sample in samples]
    tokens = torch.tensor(rows, dtype=torch.long, device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)[..., :vocab_size].float()
    losses = -F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    hits = logits.argmax(dim=-1) == targets
    scores = []
    for row, sample in enumerate(samples):
        scored = slice(sample.first_scored, len(sample.tokens) - 1)
        scores.append(
            SampleScore(loss=losses[row, scored].double().sum().item(), correct=bool(hits[row, scored].all()))
        )
    return scores


def score_samples(
    model: torch.nn.Module, samples: Sequence[Sample], vocab_size: int, pad_id: int, batch_size: int
) -> list[SampleScore]:
    """Every sample's score, ``batch_size`` samples a forward, in order."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: give at least 1")
    return [
        score
        for batch in batches(samples, batch_size)
        for score in score_batch(model, batch, vocab_size, pad_id)
    ]
