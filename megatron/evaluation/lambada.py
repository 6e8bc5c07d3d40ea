"""LAMBADA last-word accuracy, Megatron-LM's way: the model reads a passage without its end and must
predict the end, greedily, at every one of its tokens (teacher-forced: one forward, the argmax right at
each target position).

What "the end" is depends on ``--strict-lambada``. Without it, the passage's last token (for GPT-2 BPE
usually the last word, or its last piece). With it, the whole last word, split off at its last occurrence
in the text and tokenized on its own with a leading space; the context is the text before it, stripped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron.data.tokenizer import Tokenizer
from megatron.evaluation.scoring import Sample, SampleScore


def lambada_split(text: str, tokenizer: Tokenizer, strict: bool) -> tuple[list[int], list[int]]:
    """The passage as (context tokens, target tokens)."""
    if not strict:
        tokens = tokenizer.tokenize(text)
        if len(tokens) < 2:
            raise ValueError(f"{text!r} has {len(tokens)} token(s): a context and a last token need 2")
        return tokens[:-1], tokens[-1:]
    words = text.split()
    if len(words) < 2:
        raise ValueError(f"{text!r}: --strict-lambada needs a context before the last word")
    last_word = words[-1]
    context = text[: text.rfind(last_word)].strip()
    return tokenizer.tokenize(context), tokenizer.tokenize(" " + last_word)


def lambada_sample(text: str, tokenizer: Tokenizer, strict: bool, seq_length: int) -> Sample:
    """The passage as one sample scoring its target. A passage longer than ``seq_length + 1`` tokens
    keeps its end (Megatron-LM does not handle them; LAMBADA's are far shorter than 1024 tokens)."""
    context, target = lambada_split(text, tokenizer, strict)
    if len(target) > seq_length:
        raise ValueError(f"{text!r}: the last word's {len(target)} tokens exceed --seq-length {seq_length}")
    tokens = (context + target)[-(seq_length + 1) :]
    return Sample(tokens, len(tokens) - 1 - len(target))


def read_lambada(path: str | Path, tokenizer: Tokenizer, strict: bool, seq_length: int) -> list[Sample]:
    """A LAMBADA file in the format Megatron-LM reads (``lambada_test.jsonl``): a JSON object with a
    ``"text"`` field a line. Blank lines are skipped."""
    samples = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f'line {number}: not a JSON object with a "text" field ({error})') from None
            try:
                samples.append(lambada_sample(text, tokenizer, strict, seq_length))
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
    if not samples:
        raise ValueError('no passages (a JSON object with a "text" field a line)')
    return samples


@dataclass(frozen=True)
class AccuracyResult:
    num_correct: int
    num_examples: int

    @property
    def accuracy(self) -> float:
        return self.num_correct / self.num_examples

    def report(self, task: str) -> str:
        """Megatron-LM's result line."""
        return (
            f" validation results on {task} | number correct: {self.num_correct:.4E} | "
            f"total examples: {self.num_examples:.4E} | avg accuracy: {self.accuracy:.4E}"
        )


def accuracy(scores: list[SampleScore]) -> AccuracyResult:
    return AccuracyResult(sum(score.correct for score in scores), len(scores))
