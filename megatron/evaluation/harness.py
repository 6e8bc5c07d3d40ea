"""A GPT checkpoint of this toolkit as a model of EleutherAI's lm-evaluation-harness (``lm_eval``), so that
its task suite (``hellaswag``, ``lambada_openai``, local task YAMLs...) scores the model without an HF export.

The three request types run on this toolkit's parts: ``loglikelihood`` and ``loglikelihood_rolling`` through
the teacher-forced scoring of the zero-shot tasks (:mod:`megatron.evaluation.scoring`: float32 over the
tokenizer's vocabulary, not the embedding's padding rows), ``generate_until`` through the generator's
incremental decoding (:mod:`megatron.text_generation.generation`). Requests are cut, windowed and batched as
the harness's own HF model (``lm_eval.models.huggingface.HFLM``) does, so that the same weights give the
same scores under both.

Under tensor parallelism every rank runs every request (the model gathers its logits and the generator
broadcasts its tokens over the tensor group), so the harness sees one process: rank 0, world size 1.
"""

from __future__ import annotations

import json
import logging

from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows

from megatron.evaluation.scoring import Sample, score_samples
from megatron.text_generation.api import SamplingOptions
from megatron.text_generation.generation import generate_tokens
from megatron.text_generation.generator import ModelTextGenerator

logger = logging.getLogger("megatron")

# The harness's default generation length when a task gives none (HFLM's).
DEFAULT_MAX_GEN_TOKS = 256


def continuation_sample(context: list[int], continuation: list[int], max_length: int) -> Sample:
    """``context`` then ``continuation``, scoring the continuation; a pair longer than ``max_length``
    inputs loses context from the left, as HFLM cuts it."""
    if not 1 <= len(continuation) <= max_length:
        raise ValueError(
            f"a continuation of {len(continuation)} tokens: the model reads at most {max_length} (and scores "
            "at least 1)"
        )
    tokens = (context + continuation)[-(max_length + 1) :]
    return Sample(tokens, len(tokens) - 1 - len(continuation))


def rolling_samples(tokens: list[int], prefix: int, max_length: int, stride: int) -> list[Sample]:
    """The windows that score each of ``tokens`` once, the first after ``prefix``: the harness's rolling
    windows (``lm_eval.utils.get_rolling_token_windows``), each predicting up to ``stride`` new tokens
    after as much context as fits. ``stride`` equal to ``max_length`` gives the harness's default:
    consecutive windows, the last one moved back to read a full ``max_length`` inputs. A smaller stride is
    Megatron's ``--overlapping-eval``: every window after the first reads ``max_length - stride`` tokens
    already scored as context."""
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride {stride}: give 1 to the sequence length {max_length}")
    windows = get_rolling_token_windows(tokens, prefix, max_length, context_len=max_length - stride + 1)
    return [Sample([*inputs, predicted[-1]], len(inputs) - len(predicted)) for inputs, predicted in windows]


class HarnessModel(TemplateLM):
    """``generator``'s model as an ``lm_eval`` LM. ``batch_size``: requests (or rolling windows) a forward;
    ``max_length``: the longest input read, the model's positions by default; ``rolling_stride``: new
    tokens per window of ``loglikelihood_rolling``, ``max_length`` by default (windows without overlap)."""

    def __init__(
        self,
        generator: ModelTextGenerator,
        batch_size: int = 1,
        max_length: int | None = None,
        rolling_stride: int | None = None,
    ):
        super().__init__()
        self.generator = generator
        self.tokenizer = generator.tokenizer
        positions = generator.max_sequence_length
        self._max_length = max_length or positions
        self.rolling_stride = rolling_stride or self._max_length
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size}: give at least 1")
        if not 1 <= self._max_length <= positions:
            raise ValueError(f"max length {self._max_length}: the model has {positions} positions")
        if not 1 <= self.rolling_stride <= self._max_length:
            raise ValueError(f"rolling stride {self.rolling_stride}: give 1 to {self._max_length}")
        self.batch_size = batch_size

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and the first rolling window condition on: the tokenizer's bos, else its
        end-of-document id (GPT tokenizers have no bos), as HFLM and the generator choose."""
        bos = getattr(self.tokenizer, "bos", None)
        return self.tokenizer.eod if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The toolkit tokenizer's ids; ``add_special_tokens=False`` drops the bos a tokenizer that adds one
        (LLaMA's SentencePiece) puts first, where the harness asks for the text alone."""
        tokens = self.tokenizer.tokenize(string)
        bos = getattr(self.tokenizer, "bos", None)
        if add_special_tokens is False and bos is not None and tokens[:1] == [bos]:
            tokens = tokens[1:]
        return tokens

    def _score(self, samples: list[Sample]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) per sample, scored longest first so that a batch pads little."""
        order = sorted(range(len(samples)), key=lambda index: -len(samples[index].tokens))
        scores = score_samples(
            self.generator.model,
            [samples[index] for index in order],
            self.tokenizer.vocab_size,
            self.tokenizer.eod,
            self.batch_size,
        )
        results: list[tuple[float, bool]] = [(0.0, False)] * len(samples)
        for index, score in zip(order, scores, strict=True):
            results[index] = (-score.loss, score.correct)
        return results

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs
    ) -> list[tuple[float, bool]]:
        samples = [
            continuation_sample(context, continuation, self.max_length)
            for _, context, continuation in requests
        ]
        results = self._score(samples)
        for (pair, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        windows = [  # the prefix id is the text's bos: a tokenizer's own is not added twice
            rolling_samples(
                self.tok_encode(string, add_special_tokens=False),
                self.prefix_token_id,
                self.max_length,
                self.rolling_stride,
            )
            for (string,) in (request.args for request in requests)
        ]
        scores = iter(self._score([window for document in windows for window in document]))
        totals = [sum(next(scores)[0] for _ in document) for document in windows]
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first stop string (``until``, and the end-of-document text).
        Requests with the same generation arguments run together, ``batch_size`` a batch, longest first."""
        contexts = [self.tok_encode(context) for context, _ in (request.args for request in requests)]
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        results = [""] * len(requests)
        for indices in groups.values():
            options, until = self._sampling_options(requests[indices[0]].args[1])
            limit = self.max_length - options.tokens_to_generate
            indices.sort(key=lambda index: -len(contexts[index]))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [contexts[index][-limit:] or [self.prefix_token_id] for index in batch]
                generation = generate_tokens(
                    self.generator.model, prompts, options, self.generator.stop_rules,
                    self.tokenizer.vocab_size, self.max_length, self.generator.tensor_group,
                    self.generator.decode_graphs,
                )  # fmt: skip
                for index, prompt, tokens in zip(batch, prompts, generation.tokens, strict=True):
                    text = self.tokenizer.detokenize(tokens[len(prompt) :])
                    results[index] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[index].args, results[index])
        return results

    def _sampling_options(self, gen_kwargs: dict) -> tuple[SamplingOptions, list[str]]:
        """A task's generation arguments as greedy decoding options, and its stop strings."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        if kwargs.get("do_sample"):
            raise ValueError(
                f"generation arguments {gen_kwargs}: do_sample is not supported here, only greedy decoding; "
                "run the task with do_sample false"
            )
        until = handle_stop_sequences(
            kwargs.pop("until", None), eos=self.tokenizer.detokenize([self.eot_token_id])
        )
        until = [stop for stop in until if stop]
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        if not 1 <= max_gen_toks < self.max_length:
            raise ValueError(
                f"max_gen_toks {max_gen_toks}: give 1 to {self.max_length - 1}, to leave the prompt at least "
                f"one of the model's {self.max_length} positions"
            )
        options = SamplingOptions(tokens_to_generate=max_gen_toks, top_k=1, stop_strings=tuple(until))
        return options, until
