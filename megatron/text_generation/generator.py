"""A GPT model (GPT-2 style or LLaMA-style) with its tokenizer as a :class:`TextGenerator`: text in, text,
token segments and log-probabilities out, as Megatron-LM's generation API returns them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

from megatron.data.tokenizer import Tokenizer
from megatron.model import GPTModel
from megatron.text_generation.api import Generation, RequestError, SamplingOptions
from megatron.text_generation.decode_graph import DecodeGraphs, decoding_path
from megatron.text_generation.generation import StopRules, generate_tokens

logger = logging.getLogger("megatron")


class ModelTextGenerator:
    """``model`` in eval mode on its device, this rank's tensor-parallel part of it; ``tensor_group`` its
    tensor-parallel group (None on one rank). Every rank of the group must call :meth:`generate` with the
    same arguments (:mod:`megatron.text_generation.serving` arranges it for the server)."""

    def __init__(
        self,
        model: GPTModel,
        tokenizer: Tokenizer,
        tensor_group: dist.ProcessGroup | None = None,
        max_sequence_length: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tensor_group = tensor_group
        self._max_sequence_length = max_sequence_length or model.config.max_position_embeddings
        self.stop_rules = self._stop_rules()
        tensor_size = 1 if tensor_group is None else dist.get_world_size(tensor_group)
        path = decoding_path(model, tensor_size)
        logger.info("decoding steps: %s", path)
        self.decode_graphs = DecodeGraphs(model) if path == "cuda-graph" else None

    @property
    def max_sequence_length(self) -> int:
        return self._max_sequence_length

    def _stop_rules(self) -> StopRules:
        """Which vocabulary entries hold a newline, two, or end with a colon (each token's own text)."""
        texts = [self.tokenizer.detokenize([token]) for token in range(self.tokenizer.vocab_size)]
        device = self.model.output_weight.device

        def flags(test) -> torch.Tensor:
            return torch.tensor([test(text) for text in texts], dtype=torch.bool, device=device)

        return StopRules(
            eod=self.tokenizer.eod,
            newline=flags(lambda text: "\n" in text),
            double_newline=flags(lambda text: "\n\n" in text),
            colon=flags(lambda text: text.rstrip(" ").endswith(":")),
            text_of=self.tokenizer.detokenize,
        )

    def prompt_tokens(self, prompt: str, add_bos: bool = False) -> list[int]:
        """The prompt's ids, after a beginning-of-sequence id when asked: the tokenizer's bos, or its EOD
        (Megatron-LM's choice for GPT tokenizers, which have no bos); never twice."""
        tokens = self.tokenizer.tokenize(prompt)
        if add_bos:
            bos = getattr(self.tokenizer, "bos", None)
            bos = self.tokenizer.eod if bos is None else bos
            if not tokens or tokens[0] != bos:
                tokens = [bos, *tokens]
        return tokens

    def token_count(self, prompt: str, add_bos: bool = False) -> int:
        return len(self.prompt_tokens(prompt, add_bos))

    def generate(self, prompts: Sequence[str], options: SamplingOptions) -> Generation:
        if not prompts:
            raise RequestError("prompts", "give at least one prompt")
        token_lists = [self.prompt_tokens(prompt, options.add_bos) for prompt in prompts]
        for index, tokens in enumerate(token_lists):
            if not tokens:
                raise RequestError("prompts", f"prompt {index} is empty: give some text, or set add_BOS")
            if len(tokens) + options.tokens_to_generate > self.max_sequence_length:
                raise RequestError(
                    "tokens_to_generate",
                    f"prompt {index} has {len(tokens)} tokens; with {options.tokens_to_generate} more it "
                    f"exceeds the model's {self.max_sequence_length} positions",
                )
        result = generate_tokens(
            self.model,
            token_lists,
            options,
            self.stop_rules,
            self.tokenizer.vocab_size,
            self.max_sequence_length,
            self.tensor_group,
            self.decode_graphs,
        )
        detokenize = self.tokenizer.detokenize
        return Generation(
            texts=[detokenize(tokens) for tokens in result.tokens],
            segments=[[detokenize([token]) for token in tokens] for tokens in result.tokens],
            tokens=result.tokens,
            logprobs=result.logprobs,
            prompt_lengths=[len(tokens) for tokens in token_lists],
            continuations=[
                detokenize(tokens[len(prompt) :])
                for tokens, prompt in zip(result.tokens, token_lists, strict=True)
            ],
        )
