"""The REST server served for real (uvicorn on loopback) and driven over HTTP: Megatron-LM's ``PUT /api``
answers, a 400 naming the field for every bad request, one generation at a time, and a fuzzer from the
OpenAPI document that finds no 5xx."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from megatron.text_generation.api import TextGenerator
from megatron.text_generation.server import ServerLimits, build_app
from tests.text_generation.live import SerializationProbe, running

LIMITS = ServerLimits(max_prompts=4, max_prompt_tokens=40, max_tokens_to_generate=48)
TIMEOUT_S = 30


@dataclass
class Live:
    url: str
    probe: SerializationProbe

    def put(self, body: dict) -> requests.Response:
        return requests.put(f"{self.url}/api", json=body, timeout=TIMEOUT_S)

    def put_raw(self, data: bytes, content_type: str | None = "application/json") -> requests.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        return requests.put(f"{self.url}/api", data=data, headers=headers, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def live(text_generator: TextGenerator) -> Iterator[Live]:
    probe = SerializationProbe(text_generator)
    with running(build_app(probe, LIMITS)) as url:
        yield Live(url, probe)


def assert_refused(response: requests.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{field}: "), response.json()


def test_generate_continues_each_prompt(live: Live) -> None:
    prompts = ["In the beginning", "And God said"]
    response = live.put({"prompts": prompts, "tokens_to_generate": 6, "logprobs": True, "random_seed": 3})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"text", "segments", "tokens", "logprobs"}
    for prompt, text, segments, tokens, logprobs in zip(
        prompts, answer["text"], answer["segments"], answer["tokens"], answer["logprobs"], strict=True
    ):
        assert text.startswith(prompt)
        assert len(segments) == len(tokens) > len(logprobs) == len(tokens) - 1
        assert len(tokens) <= live.probe.token_count(prompt) + 6
    repeat = live.put({"prompts": prompts, "tokens_to_generate": 6, "logprobs": True, "random_seed": 3})
    assert repeat.json() == answer


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 100.0])
def test_extreme_valid_temperatures_are_served(live: Live, temperature: float) -> None:
    """The fuzzer's find: 5e-324 is 0 in float32 and made the softmax NaN (a 500)."""
    body = {
        "prompts": ["In the beginning"],
        "tokens_to_generate": 4,
        "temperature": temperature,
        "random_seed": 0,
    }
    response = live.put(body)
    assert response.status_code == 200, response.text
    assert response.json()["text"][0].startswith("In the beginning")


def test_logprobs_only_when_asked(live: Live) -> None:
    answer = live.put({"prompts": ["Hello"], "tokens_to_generate": 2, "random_seed": -1}).json()
    assert "logprobs" not in answer and len(answer["text"]) == 1


def test_scoring_returns_the_prompt_with_its_logprobs(live: Live) -> None:
    prompt = "Let there be light"
    response = live.put({"prompts": [prompt], "tokens_to_generate": 0, "logprobs": True, "add_BOS": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["text"][0].endswith(prompt)
    assert len(answer["tokens"][0]) == live.probe.token_count(prompt, add_bos=True)
    assert len(answer["logprobs"][0]) == len(answer["tokens"][0]) - 1


INVALID = {
    "prompts": [{"prompts": []}, {"prompts": "text"}, {"prompts": None}],
    "prompts[0]": [
        {"prompts": [1]},
        {"prompts": ["\ud800"]},
        {"prompts": ["", "a"], "tokens_to_generate": 1},
    ],
    "tokens_to_generate": [
        {"tokens_to_generate": -1},
        {"tokens_to_generate": "5"},
        {"tokens_to_generate": 1.5},
    ],
    "logprobs": [{"logprobs": "yes"}, {"logprobs": 1}],
    "temperature": [{"temperature": 0}, {"temperature": "hot"}, {"temperature": 1e9}],
    "top_k": [{"top_k": -1}, {"top_k": 5000}, {"top_k": True}],
    "top_p": [{"top_p": 1.5}, {"top_k": 2, "top_p": 0.5}],
    "top_p_decay": [{"top_p_decay": 0.5}],
    "top_p_bound": [{"top_p": 0.5, "top_p_bound": 0.9}],
    "add_BOS": [{"add_BOS": 1}],
    "random_seed": [{"random_seed": -2}, {"random_seed": 2**70}, {"random_seed": "1"}],
    "stop_strings": [{"stop_strings": [""]}, {"stop_strings": "\n"}],
    "beam_width": [{"beam_width": 2}],
    "frequency_penalty, stop": [{"frequency_penalty": 1, "stop": "x"}],
}
INVALID_CASES = [(field, body) for field, bodies in INVALID.items() for body in bodies]


@pytest.mark.parametrize(
    ("field", "body"), INVALID_CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID_CASES)]
)
def test_invalid_field_is_refused_by_name(live: Live, field: str, body: dict) -> None:
    request = {"prompts": ["Hello"], "tokens_to_generate": 4, **body}
    # json.dumps escapes the lone surrogate to ASCII, which the client's own encoder would refuse to send.
    assert_refused(live.put_raw(json.dumps(request).encode()), field)


def test_missing_prompts_is_refused_by_name(live: Live) -> None:
    assert_refused(live.put({"tokens_to_generate": 4}), "prompts")


@pytest.mark.parametrize(
    ("data", "content_type", "field"),
    [
        (b"not json", "application/json", "body"),
        (b'{"prompts": ["\xff"]}', "application/json", "body"),
        (b'{"prompts": ["a"]}', "text/plain", "body"),
        (b'{"prompts": ["a"]}', None, "body"),
        (b"[]", "application/json", "body"),
        (b'{"prompts": ["a"], "temperature": NaN}', "application/json", "temperature"),
        (b'{"prompts": ["a"], "top_p": Infinity}', "application/json", "top_p"),
        (
            b'{"prompts": ["a"], "tokens_to_generate": 1' + b"0" * 400 + b"}",
            "application/json",
            "tokens_to_generate",
        ),
    ],
)
def test_unreadable_body_is_refused(live: Live, data: bytes, content_type: str | None, field: str) -> None:
    assert_refused(live.put_raw(data, content_type), field)


def test_limits_are_refused(live: Live) -> None:
    assert_refused(live.put({"prompts": ["a"] * 5, "tokens_to_generate": 1}), "prompts")
    assert_refused(live.put({"prompts": ["ok", " a" * 41], "tokens_to_generate": 1}), "prompts[1]")
    assert_refused(live.put({"prompts": ["a"], "tokens_to_generate": 49}), "tokens_to_generate")
    too_long = live.put({"prompts": [" a" * 30], "tokens_to_generate": 40})
    assert_refused(too_long, "tokens_to_generate")
    assert "max sequence length 64" in too_long.json()["error"]


def test_limits_name_the_field_and_fix() -> None:
    with pytest.raises(ValueError, match=r"ServerLimits.max_prompts 0: must be >= 1"):
        ServerLimits(max_prompts=0)


def test_concurrent_requests_are_served_one_at_a_time(live: Live) -> None:
    live.probe.hold_s = 0.02
    calls_before = live.probe.calls
    seeds = range(12)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(
                pool.map(lambda s: live.put({"prompts": [f"Seed {s}"], "tokens_to_generate": 3}), seeds)
            )
    finally:
        live.probe.hold_s = 0.0
    assert [answer.status_code for answer in answers] == [200] * len(seeds)
    assert [answer.json()["text"][0].startswith(f"Seed {s}") for s, answer in zip(seeds, answers)] == [
        True
    ] * 12
    assert live.probe.calls - calls_before == len(seeds)
    assert live.probe.most_inside == 1


def test_each_request_logs_one_line_unless_no_log(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="megatron"):
        live.put({"prompts": ["logged"], "tokens_to_generate": 1})
        live.put({"prompts": ["quiet"], "tokens_to_generate": 1, "no_log": True})
    lines = [record.getMessage() for record in caplog.records if record.name == "megatron"]
    assert len(lines) == 1 and "PUT /api" in lines[0] and "1 prompt(s)" in lines[0]


def test_health(live: Live, text_generator: TextGenerator) -> None:
    response = requests.get(f"{live.url}/health", timeout=TIMEOUT_S)
    assert response.json() == {"status": "ok", "max_sequence_length": text_generator.max_sequence_length}


def test_openapi_documents_400_not_422(live: Live) -> None:
    document = requests.get(f"{live.url}/openapi.json", timeout=TIMEOUT_S).json()
    responses = document["paths"]["/api"]["put"]["responses"]
    assert set(responses) == {"200", "400"}
    request = document["components"]["schemas"]["GenerateRequest"]
    assert request["additionalProperties"] is False and request["required"] == ["prompts"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.fixture(scope="module")
def api_schema(live: Live) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=TIMEOUT_S)


def test_server_answers_after_the_fuzzing(live: Live) -> None:
    assert requests.get(f"{live.url}/health", timeout=TIMEOUT_S).status_code == 200
    assert live.put({"prompts": ["still here"], "tokens_to_generate": 2}).status_code == 200
