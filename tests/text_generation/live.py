"""Serving an app for real in tests: uvicorn on a free loopback port, in a background thread; and a probe
that sees whether the server ever enters the generator twice at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import fastapi
import uvicorn

from megatron.text_generation.api import Generation, SamplingOptions, TextGenerator

START_TIMEOUT_S = 10.0


@contextmanager
def running(app: fastapi.FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port the OS picks, so parallel runs cannot collide); yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_S} s; its log says why")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


class SerializationProbe:
    """Wraps the generator and counts how many calls are inside it at once (never more than one, if the
    server serializes); ``hold_s`` keeps each generation busy so that overlapping requests would show."""

    def __init__(self, inner: TextGenerator):
        self.inner = inner
        self.hold_s = 0.0
        self.calls = 0
        self.most_inside = 0
        self._inside = 0
        self._lock = threading.Lock()

    @property
    def max_sequence_length(self) -> int:
        return self.inner.max_sequence_length

    def _enter(self) -> None:
        with self._lock:
            self._inside += 1
            self.most_inside = max(self.most_inside, self._inside)

    def _leave(self) -> None:
        with self._lock:
            self._inside -= 1

    def token_count(self, prompt: str, add_bos: bool = False) -> int:
        self._enter()
        try:
            return self.inner.token_count(prompt, add_bos)
        finally:
            self._leave()

    def generate(self, prompts: Sequence[str], options: SamplingOptions) -> Generation:
        self._enter()
        try:
            self.calls += 1
            time.sleep(self.hold_s)
            return self.inner.generate(prompts, options)
        finally:
            self._leave()
