"""Serve a checkpoint over Megatron-LM's REST API (``PUT /api``; ``GET /health``; the schema at
``/openapi.json``), with the training flags plus ``--load``::

    python tools/run_text_generation_server.py --load checkpoints/gpt [--bf16] [--port 5000]
    torchrun --nproc_per_node 2 tools/run_text_generation_server.py --load checkpoints/gpt \\
        --tensor-model-parallel-size 2

The model shape and (unless given) the tokenizer come from the checkpoint, saved in any tensor/pipeline
layout. With T processes rank 0 serves and the others follow each request. ``--host`` defaults to the
loopback address: pass ``--host 0.0.0.0`` to serve other machines, as Megatron-LM does by default.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.text_generation.loading import build_text_generator, read_generation_checkpoint  # noqa: E402
from megatron.text_generation.server import ServerLimits, build_app, serve  # noqa: E402
from megatron.text_generation.serving import BroadcastingGenerator, follow, request_group  # noqa: E402
from megatron.training.distributed import initialize_distributed  # noqa: E402
from megatron.training.entry import run_cli  # noqa: E402


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text generation server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    group.add_argument("--port", type=int, default=5000, help="port to listen on (Megatron-LM's 5000)")
    group.add_argument("--max-prompts", type=int, default=128, help="prompts per request at most")
    group.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the model's positions")
    group.add_argument("--max-tokens-to-generate", type=int, default=None, help="default: the positions")


def server_limits(args: argparse.Namespace) -> ServerLimits:
    for flag in ("--max-prompts", "--max-prompt-tokens", "--max-tokens-to-generate", "--port"):
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1 (leave the limit out for the model's bound).")
    return ServerLimits(args.max_prompts, args.max_prompt_tokens, args.max_tokens_to_generate)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, add_server_flags)
    limits = server_limits(args)
    full, tokenizer = read_generation_checkpoint(args)
    context = initialize_distributed(args.distributed_backend)
    generator = build_text_generator(args, full, tokenizer, context.device)
    group = request_group()
    if not context.is_main:
        follow(generator, group)
        return
    broadcasting = BroadcastingGenerator(generator, group)
    try:
        serve(build_app(broadcasting, limits), args.host, args.port)
    finally:
        broadcasting.stop_followers()


if __name__ == "__main__":
    sys.exit(run_cli(main))
