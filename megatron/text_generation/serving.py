"""Generation over several ranks, as Megatron-LM's server runs it: rank 0 takes the requests and sends each
to every rank before running it itself; the other ranks wait for the next request, run it alongside
(their tensor-parallel part of every forward) and return to waiting, until rank 0 says stop.

The requests travel over a gloo group of their own with a long timeout: a follower may wait for hours
between requests, far past the default collective timeout of NCCL or gloo.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import torch.distributed as dist

from megatron.text_generation.api import Generation, RequestError, SamplingOptions
from megatron.text_generation.generator import ModelTextGenerator

IDLE_TIMEOUT = datetime.timedelta(days=30)


def request_group() -> dist.ProcessGroup | None:
    """The group the requests travel on; every rank must call this, once. None with one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


class BroadcastingGenerator:
    """Rank 0's generator: each request goes to every rank first (a :class:`TextGenerator` itself)."""

    def __init__(self, local: ModelTextGenerator, group: dist.ProcessGroup | None):
        self.local = local
        self.group = group

    @property
    def max_sequence_length(self) -> int:
        return self.local.max_sequence_length

    def token_count(self, prompt: str, add_bos: bool = False) -> int:
        return self.local.token_count(prompt, add_bos)

    def generate(self, prompts: Sequence[str], options: SamplingOptions) -> Generation:
        _send(self.group, (list(prompts), options))
        return self.local.generate(prompts, options)

    def stop_followers(self) -> None:
        _send(self.group, None)


def follow(local: ModelTextGenerator, group: dist.ProcessGroup | None) -> None:
    """A rank other than 0: run every request rank 0 sends, until it sends stop."""
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0, group=group)
        if message[0] is None:
            return
        prompts, options = message[0]
        try:
            local.generate(prompts, options)
        except RequestError:
            pass  # rank 0 met the same error before any collective and answers the client


def _send(group: dist.ProcessGroup | None, message) -> None:
    if group is not None:
        dist.broadcast_object_list([message], src=0, group=group)
