"""The next token from the last position's logits: greedy, or sampled at a temperature from the top-k or
top-p (nucleus) set, as Megatron-LM's sampling does."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    greedy: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row of ``logits`` (``[batch, vocab]``, float32; masked entries are -inf).

    ``top_k`` 0 and ``top_p`` 0 sample from the whole distribution. Ties in the top-k cut keep every
    token tied with the k-th; top-p keeps the smallest set of most likely tokens whose probability reaches
    ``top_p`` (always at least the most likely one).

    A client may send any positive temperature, down to 5e-324, which is 0 in float32. So the temperature is
    raised to the logits' smallest normal number, and each row is shifted to make its largest logit 0 before
    the division (the distribution is the same): the largest logit then divides to 0, not to NaN or
    infinity, and the softmax stays finite. Such a temperature samples among the tied largest logits.
    """
    if greedy:
        return logits.argmax(dim=-1)
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif top_p > 0.0:
        logits = _nucleus(logits, top_p)
    probabilities = torch.softmax(logits, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    # Drop a token when the more likely ones before it already reach top_p.
    drop = (cumulative - torch.softmax(ordered, dim=-1)) >= top_p
    drop[:, 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def decayed_top_p(top_p: float, decay: float, bound: float, generated: int) -> float:
    """``top_p`` after ``generated`` tokens under Megatron-LM's ``top_p_decay``: multiplied by ``decay``
    after each token, never below ``bound``; unchanged when ``decay`` is 0."""
    if decay == 0.0 or top_p == 0.0:
        return top_p
    return max(top_p * decay**generated, bound)
