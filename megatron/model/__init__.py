"""Plain model modules built from a :class:`megatron.config.schema.ModelConfig`."""

from megatron.model.gpt import GPTModel

__all__ = ["GPTModel"]
