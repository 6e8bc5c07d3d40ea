"""Global batch size as a function of consumed samples, for Megatron's ``--rampup-batch-size``."""

from __future__ import annotations

from megatron.config.schema import BatchConfig


def global_batch_size_at(batch: BatchConfig, consumed_samples: int) -> int:
    """Start at START, add INCR every ``ramp_samples / num_increments`` samples, stop at the global batch."""
    if batch.rampup_batch_size is None:
        return batch.global_batch_size
    start, increment, ramp_samples = batch.rampup_batch_size
    num_increments = (batch.global_batch_size - start) // increment
    if num_increments == 0 or consumed_samples >= ramp_samples:
        return batch.global_batch_size
    samples_per_increment = ramp_samples / num_increments
    return min(batch.global_batch_size, start + int(consumed_samples / samples_per_increment) * increment)
