"""Talk to a running generation server (``tools/run_text_generation_server.py``, or Megatron-LM's).

Interactive, as Megatron-LM's ``tools/text_generation_cli.py``: asks a prompt and a number of tokens in a
loop and prints the text::

    python tools/text_generation_cli.py localhost:5000

One request for scripts: every ``--prompt`` in one batch, the texts printed one per line (``--json``: the
whole answer, with segments, tokens and logprobs)::

    python tools/text_generation_cli.py localhost:5000 --prompt "Hello" --tokens-to-generate 16 --top-k 1

The sampling flags apply in both modes; a flag left out takes the server's default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests  # noqa: E402

from megatron.text_generation.client import (  # noqa: E402
    RemoteGenerationError,
    generate_remote,
    interactive_session,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("address", help="the server as HOST:PORT (or a URL)")
    parser.add_argument("--prompt", action="append", help="send this prompt and exit (repeat for a batch)")
    parser.add_argument("--tokens-to-generate", type=int, help="with --prompt; server default 64")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int, help="1 is greedy decoding")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--random-seed", type=int, help="same seed, same request: same answer")
    parser.add_argument("--logprobs", action="store_true", help="ask for the log-probability of each token")
    parser.add_argument("--json", action="store_true", help="with --prompt: print the whole JSON answer")
    return parser.parse_args(argv)


def request_fields(args: argparse.Namespace) -> dict:
    """The request fields the flags set; the ones left out are not sent, so the server's defaults hold."""
    names = ("tokens_to_generate", "temperature", "top_k", "top_p", "random_seed")
    fields = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.logprobs:
        fields["logprobs"] = True
    return fields


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fields = request_fields(args)
    if not args.prompt:
        fields.pop("tokens_to_generate", None)  # asked for each prompt
        interactive_session(args.address, fields)
        return
    answer = generate_remote(args.address, args.prompt, **fields)
    print(json.dumps(answer, indent=2) if args.json else "\n".join(answer["text"]))


if __name__ == "__main__":
    try:
        main()
    except (RemoteGenerationError, requests.RequestException) as error:
        sys.exit(f"text_generation_cli.py: error: {error}")
