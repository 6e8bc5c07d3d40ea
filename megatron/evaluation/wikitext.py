"""WikiText-103 perplexity, Megatron-LM's way: the whole file detokenized and tokenized as one text, cut
into windows of ``seq_length`` inputs; with ``--overlapping-eval S`` each window after the first starts
``S`` tokens after the previous one and scores only its last ``S`` targets, the earlier ones serving as
context. Every target (each token after the first) is scored exactly once.

Besides the token-level perplexity Megatron reports the *adjusted* one: the same summed loss over the
text's words instead of its tokens, which compares models with different tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from megatron.data.tokenizer import Tokenizer
from megatron.evaluation.detokenizer import wikitext_detokenizer
from megatron.evaluation.scoring import Sample, SampleScore

# Megatron caps the exponent so that an untrained model's perplexity stays a printable number.
MAX_LOG_PPL = 20.0


def lm_windows(tokens: list[int], seq_length: int, stride: int) -> list[Sample]:
    """The windows scoring each of ``tokens[1:]`` once: window ``k`` holds ``tokens[k*stride :
    k*stride + seq_length + 1]``; the first scores all its targets, the others their last ``stride``
    positions of ``seq_length`` (fewer in a short last window). Megatron also runs windows that score no
    real token (past the end of the text); they add nothing and are left out."""
    if not 1 <= stride <= seq_length:
        raise ValueError(f"stride {stride}: give 1 to the sequence length {seq_length}")
    if len(tokens) < 2:
        raise ValueError(f"the text has {len(tokens)} token(s): perplexity needs at least 2")
    windows = [Sample(tokens[: seq_length + 1], 0)]
    start = stride
    while start + seq_length - stride < len(tokens) - 1:
        windows.append(Sample(tokens[start : start + seq_length + 1], seq_length - stride))
        start += stride
    return windows


@dataclass(frozen=True)
class WikiTextData:
    samples: list[Sample]
    num_original_tokens: int  # the raw file's space-separated words, as Megatron counts them
    num_tokenized_tokens: int


def original_word_count(raw: str) -> int:
    """Megatron's count of the raw text's words: split at single spaces after stripping the ends (WikiText
    puts a space around every word and punctuation mark, so this is its number of tokens, give or take the
    newlines)."""
    return len(raw.strip().split(" "))


def wikitext_data(raw: str, tokenizer: Tokenizer, seq_length: int, stride: int) -> WikiTextData:
    tokens = tokenizer.tokenize(wikitext_detokenizer(raw))
    return WikiTextData(lm_windows(tokens, seq_length, stride), original_word_count(raw), len(tokens))


def read_wikitext(path: str | Path, tokenizer: Tokenizer, seq_length: int, stride: int) -> WikiTextData:
    """A WikiText file in its published raw format (``wiki.test.raw``/``wiki.test.tokens``: UTF-8 text,
    `` = Title = `` heading lines, words and punctuation separated by spaces)."""
    return wikitext_data(Path(path).read_bytes().decode("utf-8"), tokenizer, seq_length, stride)


@dataclass(frozen=True)
class PerplexityResult:
    total_loss: float
    num_original_tokens: int
    num_tokenized_tokens: int

    @property
    def token_ratio(self) -> float:
        """Tokens per word, both counted as scored: all but the first."""
        return (self.num_tokenized_tokens - 1) / (self.num_original_tokens - 1)

    @property
    def avg_loss(self) -> float:
        return self.total_loss / (self.num_tokenized_tokens - 1)

    @property
    def ppl(self) -> float:
        return math.exp(min(MAX_LOG_PPL, self.avg_loss))

    @property
    def adjusted_ppl(self) -> float:
        """exp(summed loss / (words - 1)): the per-word perplexity."""
        return math.exp(min(MAX_LOG_PPL, self.avg_loss * self.token_ratio))

    def report(self, task: str) -> str:
        """Megatron-LM's result line."""
        return (
            f" validation results on {task} | avg loss: {self.avg_loss:.4E} | ppl: {self.ppl:.4E} | "
            f"adjusted ppl: {self.adjusted_ppl:.4E} | token ratio: {self.token_ratio} |"
        )


def perplexity(data: WikiTextData, scores: list[SampleScore]) -> PerplexityResult:
    if data.num_original_tokens < 2:
        raise ValueError(f"the text has {data.num_original_tokens} word(s): adjusted perplexity needs 2")
    return PerplexityResult(
        sum(score.loss for score in scores), data.num_original_tokens, data.num_tokenized_tokens
    )
