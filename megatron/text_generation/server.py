"""The REST server of Megatron-LM's generation API: ``PUT /api`` continues or scores prompts with a
:class:`~megatron.text_generation.api.TextGenerator`, ``GET /health`` says it is up.

Every refusal is a 400 with ``{"error": "<field>: <message>"}`` (FastAPI's 422 is turned into it, so that
clients see one shape for every bad request, as Megatron-LM's server answers), and nothing a client sends
may end in a 5xx: only a genuine failure of the generator answers 500. Requests are served one at a time,
in arrival order, because the model (and, under tensor parallelism, the ranks that follow rank 0's
requests) can run only one generation at a time; the waiting requests hold no worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import fastapi
import uvicorn
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from megatron.text_generation.api import Generation, RequestError, SamplingOptions, TextGenerator
from megatron.text_generation.schema import ErrorResponse, GenerateRequest, GenerateResponse, HealthResponse

logger = logging.getLogger("megatron")

MEGATRON_MAX_PROMPTS = 128


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask, beyond the model's own bound (prompt plus generated tokens may not exceed
    ``generator.max_sequence_length``). None leaves a limit to that bound alone."""

    max_prompts: int = MEGATRON_MAX_PROMPTS
    max_prompt_tokens: int | None = None
    max_tokens_to_generate: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_prompt_tokens", "max_tokens_to_generate"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"ServerLimits.{name} {value}: must be >= 1, or None for no limit of its own"
                )


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content=ErrorResponse(error=f"{field}: {message}").model_dump())


def _field_name(location: tuple) -> str:
    """``("body", "prompts", 2)`` -> ``prompts[2]``: the field as the request spells it."""
    parts = [part for part in location if part != "body"]
    if not parts or not isinstance(parts[0], str):
        return "body"
    name = parts[0]
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    unknown = [_field_name(error["loc"]) for error in errors if error["type"] == "extra_forbidden"]
    if unknown:
        known = ", ".join(GenerateRequest.model_fields)
        return _error(400, ", ".join(unknown), f"unknown field(s); the fields of PUT /api are {known}")
    first = errors[0]
    if first["type"] == "json_invalid":
        return _error(400, "body", f"not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
    field = _field_name(first["loc"])
    if field == "body" and first["type"] == "model_attributes_type":
        return _error(400, "body", "must be a JSON object sent with Content-Type: application/json")
    return _error(400, field, first["msg"].removeprefix("Value error, "))


def _check_limits(request: GenerateRequest, limits: ServerLimits) -> None:
    """The server's own refusals that need no tokenizer, checked before the request waits its turn."""
    if request.beam_width is not None:
        raise RequestError("beam_width", "beam search is not supported; drop the field or send null")
    if len(request.prompts) > limits.max_prompts:
        raise RequestError("prompts", f"{len(request.prompts)} prompts: at most {limits.max_prompts}")
    wanted = request.tokens_to_generate
    if limits.max_tokens_to_generate is not None and wanted > limits.max_tokens_to_generate:
        raise RequestError("tokens_to_generate", f"{wanted}: at most {limits.max_tokens_to_generate}")


def _check_lengths(request: GenerateRequest, generator: TextGenerator, limits: ServerLimits) -> None:
    """The limits in tokens; run in the generator's turn, as the tokenizer belongs to it."""
    wanted = request.tokens_to_generate
    longest = generator.max_sequence_length
    for index, prompt in enumerate(request.prompts):
        count = generator.token_count(prompt, add_bos=request.add_BOS)
        if count == 0:
            raise RequestError(f"prompts[{index}]", "empty prompt: send text, or set add_BOS to true")
        if limits.max_prompt_tokens is not None and count > limits.max_prompt_tokens:
            raise RequestError(f"prompts[{index}]", f"{count} tokens: at most {limits.max_prompt_tokens}")
        if count + wanted > longest:
            raise RequestError(
                "tokens_to_generate",
                f"{wanted} after prompts[{index}] of {count} tokens exceeds the model's max sequence length "
                f"{longest}: ask for at most {max(longest - count, 0)}",
            )


def _strip_validation_422(app: fastapi.FastAPI) -> dict:
    """The OpenAPI document without FastAPI's 422 answers, which this server never gives (they are 400s)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def build_app(generator: TextGenerator, limits: ServerLimits) -> fastapi.FastAPI:
    """The app serving ``generator``; ``serve`` runs it, tests may drive it in-process or over a socket."""
    app = fastapi.FastAPI(
        title="Megatron text generation",
        version="1",
        description="Megatron-LM's text generation REST API: PUT /api continues or scores prompts.",
    )
    one_at_a_time = asyncio.Lock()

    def checked_generate(request: GenerateRequest, options: SamplingOptions) -> Generation:
        _check_lengths(request, generator, limits)
        return generator.generate(request.prompts, options)

    @app.exception_handler(RequestValidationError)
    async def validation_failed(_: fastapi.Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def http_failed(request: fastapi.Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own 400 is a body it could not read (not UTF-8); the others are routing (404, 405).
        if exc.status_code == 400:
            return _error(400, "body", f"{exc.detail}: send JSON encoded in UTF-8")
        return _error(exc.status_code, f"{request.method} {request.url.path}", str(exc.detail))

    @app.put(
        "/api",
        response_model=GenerateResponse,
        response_model_exclude_none=True,
        responses={400: {"model": ErrorResponse, "description": "A field broke a rule; the error names it."}},
    )
    async def generate(request: GenerateRequest, http: fastapi.Request) -> GenerateResponse | JSONResponse:
        if not request.no_log:
            client = http.client.host if http.client else "?"
            logger.info(
                "PUT /api from %s: %d prompt(s), tokens_to_generate %d, logprobs %s",
                client, len(request.prompts), request.tokens_to_generate, request.logprobs,
            )  # fmt: skip
        try:
            options = request.sampling_options()
            _check_limits(request, limits)
            async with one_at_a_time:
                generation = await run_in_threadpool(checked_generate, request, options)
        except RequestError as error:
            return _error(400, error.field, str(error).removeprefix(f"{error.field}: "))
        except Exception:
            logger.exception("PUT /api: the generator failed")
            return _error(500, "generator", "internal failure while generating; the server log has the trace")
        return GenerateResponse.from_generation(generation)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", max_sequence_length=generator.max_sequence_length)

    app.openapi = lambda: _strip_validation_422(app)
    return app


def serve(app: fastapi.FastAPI, host: str, port: int) -> None:
    """Serve ``app`` until interrupted (blocking); logs through uvicorn's loggers as well as ours."""
    uvicorn.run(app, host=host, port=port)
