"""The sequence-length curriculum in training: the length each iteration's micro batches are cut to.

As DeepSpeed's engine did for Megatron-DeepSpeed's legacy curriculum, iteration ``n`` (counted from 1) uses
``CurriculumScheduler.get_difficulty(n)``: a pure function of the iteration, so a resumed run continues the
schedule exactly. Samples keep their first tokens (the rest of each sample is not used), and evaluation
always runs at the full ``--seq-length``.
"""

from __future__ import annotations

from megatron.config.curriculum import scheduler
from megatron.config.schema import CurriculumConfig


class SeqLengthCurriculum:
    def __init__(self, config: CurriculumConfig):
        self._scheduler = scheduler(config)

    def seq_length_at(self, iteration: int) -> int:
        """The sequence length of iteration ``iteration`` (from 1)."""
        return int(self._scheduler.get_difficulty(iteration))
