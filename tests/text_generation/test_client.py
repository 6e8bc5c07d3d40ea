"""The client and ``tools/text_generation_cli.py`` against the real server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from megatron.text_generation.api import TextGenerator
from megatron.text_generation.client import (
    RemoteGenerationError,
    api_url,
    generate_remote,
    interactive_session,
)
from megatron.text_generation.server import ServerLimits, build_app
from tests.data.corpora import REPO_ROOT
from tests.text_generation.live import running
from tools.text_generation_cli import main as cli


@pytest.fixture(scope="module")
def address(text_generator: TextGenerator) -> Iterator[str]:
    """The server as the CLI takes it, HOST:PORT."""
    with running(build_app(text_generator, ServerLimits())) as url:
        yield url.removeprefix("http://")


def test_api_url_takes_megatron_address_or_url() -> None:
    assert api_url("localhost:5000") == "http://localhost:5000/api"
    assert api_url("https://host/") == "https://host/api"
    assert api_url("http://host:1/api") == "http://host:1/api"


def test_generate_remote_returns_the_answer(address: str) -> None:
    answer = generate_remote(address, ["Hello", "World"], tokens_to_generate=3, logprobs=True, top_k=1)
    assert [text[:5] for text in answer["text"]] == ["Hello", "World"]
    assert len(answer["logprobs"]) == 2


def test_generate_remote_raises_with_the_server_message(address: str) -> None:
    with pytest.raises(RemoteGenerationError, match=r"HTTP 400: temperature: ") as caught:
        generate_remote(address, ["Hello"], temperature=-1.0)
    assert caught.value.status == 400


def test_cli_one_shot_prints_texts_or_json(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli([address, "--prompt", "In the", "--prompt", "And", "--tokens-to-generate", "3", "--top-k", "1"])
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first.startswith("In the") and second.startswith("And")
    cli(
        [address, "--prompt", "Hi", "--tokens-to-generate", "2", "--random-seed", "5", "--logprobs", "--json"]
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer["text"][0].startswith("Hi") and len(answer["logprobs"]) == 1


def test_interactive_session_loops_until_end_of_input(address: str) -> None:
    replies = iter(["In the beginning", "4", "Hello", "four", "", "2"])
    written: list[str] = []

    def read(question: str) -> str:
        written.append(question)
        try:
            return next(replies)
        except StopIteration:
            raise EOFError from None

    interactive_session(address, {"top_k": 1}, read=read, write=written.append)
    responses = [written[i + 1] for i, line in enumerate(written) if line == "Megatron Response: "]
    assert len(responses) == 1 and responses[0].startswith("In the beginning")
    assert any("'four' is not a whole number" in line for line in written)
    assert any(line.startswith("Error: HTTP 400: prompts[0]: empty prompt") for line in written)


def test_cli_runs_as_a_script_and_reports_refusals(address: str) -> None:
    script = REPO_ROOT / "tools" / "text_generation_cli.py"
    command = [sys.executable, str(script), address, "--prompt", "Hi", "--top-k", "1", "--top-p", "0.5"]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 1
    assert (
        "text_generation_cli.py: error: HTTP 400: top_p: top_k and top_p cannot both be set" in result.stderr
    )
