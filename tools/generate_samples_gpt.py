"""Generate text from a checkpoint in batch mode, with Megatron's ``generate_samples_gpt.py`` flags.

Continuations of the prompts of a file (one per line), written as ``Context: ...`` / ``Megatron-LM: ...``::

    python tools/generate_samples_gpt.py --load checkpoints/gpt --sample-input-file prompts.txt \\
        --sample-output-file samples.txt --out-seq-length 64 --top_p 0.9 [training flags]

or ``--num-samples N`` samples from nothing into ``--genfile`` (JSON lines ``{"text", "length"}``). The model
shape and (unless given) the tokenizer come from the checkpoint; ``--tensor-model-parallel-size T`` under
``torchrun --nproc_per_node T`` splits the model over T processes, whatever layout it was saved in.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.errors import ConfigError  # noqa: E402
from megatron.text_generation.api import RequestError, SamplingOptions  # noqa: E402
from megatron.text_generation.loading import build_text_generator, read_generation_checkpoint  # noqa: E402
from megatron.text_generation.samples import read_prompts, write_continuations, write_unconditional  # noqa: E402
from megatron.training.distributed import initialize_distributed  # noqa: E402
from megatron.training.entry import run_cli  # noqa: E402


def add_sample_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text generation (Megatron's generate_samples_gpt.py)")
    group.add_argument("--sample-input-file", help="prompts, one per line")
    group.add_argument("--sample-output-file", help="default: the input file's name + .out")
    group.add_argument("--num-samples", type=int, default=0, help="samples from nothing, without an input")
    group.add_argument("--genfile", help="where --num-samples go (JSON lines)")
    group.add_argument("--out-seq-length", type=int, default=1024, help="tokens to generate at most")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_p", type=float, default=0.0)
    group.add_argument("--top_k", type=int, default=0)
    group.add_argument("--greedy", action="store_true", help="the most likely token each step (top_k 1)")
    group.add_argument("--random-seed", type=int, default=None, help="default: --seed")


def sampling_options(args: argparse.Namespace, add_bos: bool) -> SamplingOptions:
    try:
        return SamplingOptions(
            tokens_to_generate=args.out_seq_length,
            temperature=args.temperature,
            top_k=1 if args.greedy else args.top_k,
            top_p=args.top_p,
            add_bos=add_bos,
            random_seed=args.seed if args.random_seed is None else args.random_seed,
        )
    except RequestError as error:
        flags = {"tokens_to_generate": "--out-seq-length", "top_k": "--top_k", "top_p": "--top_p"}
        flag = flags.get(error.field, "--" + error.field.replace("_", "-"))
        raise ConfigError(f"{flag} {str(error).removeprefix(error.field + ': ')}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, add_sample_flags)
    if bool(args.sample_input_file) == bool(args.num_samples):
        raise ConfigError("give --sample-input-file (prompts to continue) or --num-samples N, not both.")
    if args.num_samples and not args.genfile:
        raise ConfigError("--num-samples needs --genfile, the file to write them to.")
    prompts = read_prompts(args.sample_input_file) if args.sample_input_file else []
    options = sampling_options(args, add_bos=not prompts)
    full, tokenizer = read_generation_checkpoint(args)
    context = initialize_distributed(args.distributed_backend)
    generator = build_text_generator(args, full, tokenizer, context.device)
    out_path = (args.sample_output_file or f"{args.sample_input_file}.out") if prompts else args.genfile
    if not context.is_main:  # the other ranks run the same batches; the first one writes
        out_path = os.devnull
    batch_size = args.micro_batch_size or 1
    try:
        if prompts:
            write_continuations(generator, prompts, options, batch_size, out_path)
        else:
            write_unconditional(generator, args.num_samples, options, batch_size, out_path)
    except RequestError as error:
        raise ConfigError(f"{args.sample_input_file or '--num-samples'}: {error}") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
