"""Incremental decoding of a batch of prompts, Megatron-LM's way.

The prompts are laid out from position 0, each in its own row, the rows padded at the end. The model first
reads the positions every prompt has (the shortest prompt's length) in one forward that fills the
key/value cache, then one position at a time for the whole batch: a row still inside its prompt takes its
prompt's token there, the others the sampled one. Every row's tokens are thus contiguous from position 0,
and the causal mask alone masks correctly: no padding token is ever attended to. The log-probability of
each token (prompt or generated) comes from the same forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.model.kv_cache import KVCache
from megatron.text_generation.api import SamplingOptions
from megatron.text_generation.decode_graph import DecodeGraphs
from megatron.text_generation.sampling import decayed_top_p, sample

# How often the decoding loop checks whether every row has ended (see the loop).
END_CHECK_STEPS = 8


@dataclass(frozen=True)
class StopRules:
    """What ends a row, in token ids (``newline``/``double_newline``/``colon``: a flag per vocabulary
    entry, for the tokens whose text holds ``\\n``, ``\\n\\n`` or ends with ``:``); ``text_of`` decodes a
    row's generated ids, for stop strings."""

    eod: int
    newline: torch.Tensor
    double_newline: torch.Tensor
    colon: torch.Tensor
    text_of: Callable[[list[int]], str]


@dataclass(frozen=True)
class TokenGeneration:
    """Per prompt: its tokens followed by the generated ones (EOD or stop token included), and the
    log-probability of every token after the first when asked."""

    tokens: list[list[int]]
    logprobs: list[list[float]] | None


@torch.no_grad()
def generate_tokens(
    model: torch.nn.Module,
    prompts: list[list[int]],
    options: SamplingOptions,
    stop: StopRules,
    vocab_size: int,
    max_length: int,
    tensor_group: dist.ProcessGroup | None = None,
    graphs: DecodeGraphs | None = None,
) -> TokenGeneration:
    """Continue every prompt by up to ``options.tokens_to_generate`` tokens, never past ``max_length``
    positions. ``vocab_size``: the tokenizer's (the padding entries of the model's vocabulary are never
    sampled). Under tensor parallelism (``tensor_group``) the group's first rank samples and the others
    take its tokens, so all ranks stay on one sequence. ``graphs``: replay captured decoding steps
    (:mod:`~megatron.text_generation.decode_graph`) instead of running each step eagerly."""
    config = model.config
    device = model.output_weight.device
    lengths = torch.tensor([len(prompt) for prompt in prompts], device=device)
    total = min(int(lengths.max()) + options.tokens_to_generate, max_length)
    limits = torch.clamp(lengths + options.tokens_to_generate, max=max_length)
    tokens = torch.full((len(prompts), total), stop.eod, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    tensor_size = 1 if tensor_group is None else dist.get_world_size(tensor_group)
    kv_heads = config.kv_heads // tensor_size
    if graphs is not None:
        captured = graphs.step_for(len(prompts), total, kv_heads)
        cache, decode = captured.cache, captured
    else:
        cache = KVCache(
            config.num_layers, len(prompts), total, kv_heads, config.head_dim, model.output_weight.dtype,
            device,
        )  # fmt: skip

        def decode(next_tokens: torch.Tensor) -> torch.Tensor:
            return model(next_tokens, kv_cache=cache)[:, -1]

    logprobs = None
    if options.return_logprobs:
        logprobs = torch.zeros(len(prompts), max(total - 1, 0), device=device)
    generator = None
    if options.random_seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.random_seed)

    start, longest_prompt = int(lengths.min()), int(lengths.max())
    logits = model(tokens[:, :start], kv_cache=cache)
    if logprobs is not None and start > 1:
        logprobs[:, : start - 1] = _token_logprobs(logits[:, :-1], tokens[:, 1:start])
    last = logits[:, -1]
    ended = lengths >= limits
    end_at = limits.clone()
    for position in range(start, total):
        step = last.to(torch.float32, copy=True)  # sampling masks it; the log-probabilities need it whole
        step[:, vocab_size:] = float("-inf")
        if options.prevent_newline_after_colon:
            after_colon = stop.colon[tokens[:, position - 1]]
            step[:, :vocab_size].masked_fill_(after_colon[:, None] & stop.newline[None, :], float("-inf"))
        top_p = decayed_top_p(options.top_p, options.top_p_decay, options.top_p_bound, position - start)
        sampled = sample(step, options.greedy, options.temperature, options.top_k, top_p, generator)
        if tensor_size > 1:
            dist.broadcast(sampled, src=dist.get_global_rank(tensor_group, 0), group=tensor_group)
        in_prompt = position < lengths
        chosen = torch.where(in_prompt, tokens[:, position], sampled)
        chosen = torch.where(ended & ~in_prompt, stop.eod, chosen)
        tokens[:, position] = chosen
        if logprobs is not None:
            logprobs[:, position - 1] = _token_logprobs(last[:, None], chosen[:, None])[:, 0]
        generating = ~in_prompt & ~ended
        stopping = generating & ((chosen == stop.eod) | (position + 1 >= limits))
        if options.stop_on_eol:
            stopping |= generating & stop.newline[chosen]
        if options.stop_on_double_eol:
            doubled = stop.newline[chosen] & stop.newline[tokens[:, position - 1]]
            stopping |= generating & (stop.double_newline[chosen] | doubled)
        if options.stop_strings:
            stopping |= generating & _ends_with_stop_string(tokens, lengths, position, options, stop)
        end_at = torch.where(stopping, position + 1, end_at)
        ended |= stopping
        # Reading ``ended`` waits for the device, so it is read every few steps only: meanwhile the host
        # queues the next steps' kernels. Steps past the end of every row only write padding. Rows still
        # inside their prompt go on only for the log-probabilities of their prompt tokens.
        if (position - start) % END_CHECK_STEPS == END_CHECK_STEPS - 1 or options.stop_strings:
            if bool(ended.all()) and (logprobs is None or position + 1 >= longest_prompt):
                break
        last = decode(tokens[:, position : position + 1])
    ends = end_at.tolist()
    rows = tokens.tolist()
    return TokenGeneration(
        tokens=[row[:end] for row, end in zip(rows, ends, strict=True)],
        logprobs=None
        if logprobs is None
        else [row[: end - 1] for row, end in zip(logprobs.tolist(), ends, strict=True)],
    )


def _token_logprobs(logits: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
    """log p(next token) under the raw logits (temperature 1, as Megatron-LM reports them)."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, next_tokens[..., None])[..., 0]


def _ends_with_stop_string(
    tokens: torch.Tensor, lengths: torch.Tensor, position: int, options: SamplingOptions, stop: StopRules
) -> torch.Tensor:
    flags = []
    for row, length in enumerate(lengths.tolist()):
        text = stop.text_of(tokens[row, length : position + 1].tolist()) if position >= length else ""
        flags.append(any(text.endswith(stop_string) for stop_string in options.stop_strings))
    return torch.tensor(flags, device=tokens.device)
