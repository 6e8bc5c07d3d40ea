"""Megatron's ``generate_samples_gpt.py`` batch mode: continuations of the prompts of a file, or samples
from nothing (each starts from the end-of-document token), written to a file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import TypeVar

from megatron.text_generation.api import SamplingOptions, TextGenerator

T = TypeVar("T")


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line."""
    with open(path, encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file if line.strip()]


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``size`` items (the last one shorter), for batched generation and scoring."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def for_batch(options: SamplingOptions, index: int) -> SamplingOptions:
    """Batch ``index``'s options: a seed of its own (the run's seed + index), so that batches of one run
    draw different samples and the run repeats as a whole."""
    if options.random_seed is None:
        return options
    return dataclasses.replace(options, random_seed=options.random_seed + index)


def write_continuations(
    generator: TextGenerator, prompts: list[str], options: SamplingOptions, batch_size: int, out_path: str
) -> None:
    """Megatron's sample-output format: each prompt after ``Context:``, its continuation after
    ``Megatron-LM:``."""
    with open(out_path, "w", encoding="utf-8") as out:
        for index, batch in enumerate(batches(prompts, batch_size)):
            result = generator.generate(batch, for_batch(options, index))
            for prompt, continuation in zip(batch, result.continuations, strict=True):
                out.write(f"\nContext: {prompt}\n\nMegatron-LM: {continuation}\n")


def write_unconditional(
    generator: TextGenerator, num_samples: int, options: SamplingOptions, batch_size: int, out_path: str
) -> None:
    """Megatron's ``--genfile`` format: one JSON object per line with the sample's ``text`` and ``length``
    (tokens generated)."""
    with open(out_path, "w", encoding="utf-8") as out:
        for index, start in enumerate(range(0, num_samples, batch_size)):
            count = min(batch_size, num_samples - start)
            result = generator.generate([""] * count, for_batch(options, index))
            for tokens, prompt_length, text in zip(
                result.tokens, result.prompt_lengths, result.continuations, strict=True
            ):
                out.write(json.dumps({"text": text, "length": len(tokens) - prompt_length}) + "\n")
