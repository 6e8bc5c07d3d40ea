"""Saving and loading training state: the one place that knows the on-disk layout."""

from megatron.checkpointing.checkpoint import TrainState, load_checkpoint, save_checkpoint

__all__ = ["TrainState", "load_checkpoint", "save_checkpoint"]
