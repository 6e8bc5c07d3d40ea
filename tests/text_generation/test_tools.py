"""The generation tools refuse bad flags with one line naming the flag, before loading anything."""

from __future__ import annotations

import pytest

from megatron.training.entry import run_cli
from tools.generate_samples_gpt import main as generate_samples
from tools.run_text_generation_server import main as serve


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--max-prompts", "0"], "--max-prompts 0: must be >= 1"),
        (["--max-tokens-to-generate", "-4"], "--max-tokens-to-generate -4: must be >= 1"),
        (["--port", "0"], "--port 0: must be >= 1"),
        ([], "--load is required"),
    ],
)
def test_server_flags(argv, expected, capsys):
    assert run_cli(serve, argv) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "give --sample-input-file (prompts to continue) or --num-samples N, not both"),
        (["--num-samples", "2"], "--num-samples needs --genfile"),
        (["--num-samples", "2", "--genfile", "x", "--temperature", "0"], "--temperature 0.0: must be > 0"),
        (
            ["--num-samples", "2", "--genfile", "x", "--top_k", "2", "--top_p", "0.5"],
            "--top_p top_k and top_p",
        ),
        (["--num-samples", "2", "--genfile", "x", "--out-seq-length", "-1"], "--out-seq-length -1: must be"),
        (["--num-samples", "2", "--genfile", "x"], "--load is required"),
    ],
)
def test_sample_flags(argv, expected, capsys):
    assert run_cli(generate_samples, argv) == 2
    assert expected in capsys.readouterr().err
