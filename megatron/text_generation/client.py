"""A client of the generation server's ``PUT /api`` (ours or Megatron-LM's), for scripts and for
``tools/text_generation_cli.py``."""

from __future__ import annotations

from typing import Any

import requests


class RemoteGenerationError(RuntimeError):
    """The server refused or failed a request; ``status`` is the HTTP status, the message the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def api_url(address: str) -> str:
    """``HOST:PORT`` (Megatron-LM's CLI argument) or a URL, as the URL of ``PUT /api``."""
    url = address if "://" in address else f"http://{address}"
    url = url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)


def generate_remote(address: str, prompts: list[str], timeout: float | None = None, **fields: Any) -> dict:
    """Send ``prompts`` with the request ``fields`` (Megatron-LM's names: ``tokens_to_generate``,
    ``temperature``, ``logprobs``...) and return the JSON answer: ``text``, ``segments``, ``tokens`` and,
    when asked, ``logprobs``. Raises :class:`RemoteGenerationError` with the server's message on a refusal,
    so that a script sees which field to fix."""
    response = requests.put(api_url(address), json={"prompts": list(prompts), **fields}, timeout=timeout)
    if response.status_code != 200:
        raise RemoteGenerationError(response.status_code, _server_message(response))
    return response.json()


def interactive_session(address: str, fields: dict[str, Any], read=input, write=print) -> None:
    """Megatron-LM's CLI loop: ask a prompt and a number of tokens, print the continued text, until end of
    input. A refused request prints the server's message and the loop goes on."""
    while True:
        try:
            prompt = read("Enter prompt: ")
            count = read("Enter number of tokens to generate: ")
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        try:
            tokens_to_generate = int(count)
        except ValueError:
            write(f"tokens to generate: {count!r} is not a whole number; try again")
            continue
        try:
            answer = generate_remote(
                address, [prompt], **{**fields, "tokens_to_generate": tokens_to_generate}
            )
        except (RemoteGenerationError, requests.RequestException) as error:
            write(f"Error: {error}")
            continue
        write("Megatron Response: ")
        write(answer["text"][0])
