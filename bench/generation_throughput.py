"""Greedy generation throughput of ``megatron.text_generation`` on one device, next to HuggingFace
``generate`` on the same weights.

The model is a randomly initialised ``GPTModel`` (seeded by ``--seed``) of one of
``bench/train_throughput.py``'s shapes (``--model large``: the 1.3B GPT; ``tinyllama``: TinyLlama-1.1B),
in ``--dtype`` on the GPU when there is one. Every prompt is ``--prompt-length`` random token ids, and
each row must get exactly ``--new-tokens`` tokens: our generation runs ``generate_tokens`` with stop rules
whose end-of-document id (-1) no model can produce, and HF's ``generate`` has no EOS and
``min_new_tokens`` equal to ``max_new_tokens``. The HF peer (``--peer hf``) is ``GPT2LMHeadModel`` or
``LlamaForCausalLM`` with SDPA attention, its weights exported from ours by the toolkit's converter
(``megatron/checkpointing/hf_gpt2.py`` / ``hf_llama.py``); our model is freed before it is timed, so
each peak memory figure holds one model's weights.

Each figure is the median wall time of ``--repeats`` generations after one warm-up, between device
synchronisations, the prompt's forward included. Prints one ``RESULT`` line per (model, batch,
implementation), with tokens/s (batch x new tokens / seconds), milliseconds per decoding step, peak
memory, how many rows got all their tokens and (HF) how many first generated tokens of row 0 equal ours,
then one ``RATIO`` line. Any other flag is a ``pretrain_gpt.py`` shape flag that overrides the model's,
so a CPU run of a tiny model takes seconds (tests/bench/test_generation_throughput.py):

    python3 bench/generation_throughput.py --model large --batch-sizes 1 32
    python3 bench/generation_throughput.py --model tinyllama --num-layers 2 --hidden-size 64 \\
      --num-attention-heads 4 --num-key-value-heads 2 --ffn-hidden-size 128 --dtype fp32 --new-tokens 4
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.timing import median_step_seconds  # noqa: E402
from bench.train_throughput import SHAPES, shape_flags, synthetic_flags  # noqa: E402
from megatron.checkpointing import hf_gpt2, hf_llama  # noqa: E402
from megatron.config.arguments import parse_args  # noqa: E402
from megatron.config.build import build_config  # noqa: E402
from megatron.config.schema import Config  # noqa: E402
from megatron.model import GPTModel  # noqa: E402
from megatron.text_generation.api import SamplingOptions  # noqa: E402
from megatron.text_generation.decode_graph import DecodeGraphs, decoding_path  # noqa: E402
from megatron.text_generation.generation import StopRules, generate_tokens  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Sampled ids are >= 0, so an end of document of -1 never ends a row early.
NEVER_PRODUCED = -1

Generate = Callable[[torch.Tensor], list[list[int]]]


def build_model_config(model: str, overrides: list[str]) -> Config:
    """The shape's config as ``pretrain_gpt.py`` would build it (the flags of train_throughput.py's
    table, then ``overrides``), on one process."""
    ds_config = Path(tempfile.mkdtemp()) / "ds.json"
    ds_config.write_text(json.dumps({}))
    flags = shape_flags(SHAPES[model], str(ds_config), 1) + synthetic_flags() + overrides
    return build_config(parse_args(flags), 1, SHAPES[model]["vocab"])


def our_generation(
    model: GPTModel, new_tokens: int, vocab_size: int, graphs: DecodeGraphs | None
) -> Generate:
    """Greedy generation through the library's decoding loop, replaying captured decoding steps when
    ``graphs`` is given (as ``ModelTextGenerator`` does on one GPU); the rows it returns hold prompt and
    generated tokens."""
    device = model.output_weight.device
    vocab_flags = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool, device=device)
    stop = StopRules(NEVER_PRODUCED, vocab_flags, vocab_flags, vocab_flags, text_of=lambda ids: "")
    options = SamplingOptions(tokens_to_generate=new_tokens, top_k=1)
    max_length = model.config.max_position_embeddings

    def generate(prompts: torch.Tensor) -> list[list[int]]:
        result = generate_tokens(
            model, prompts.tolist(), options, stop, vocab_size, max_length, graphs=graphs
        )
        return [row[prompts.shape[1] :] for row in result.tokens]

    return generate


def hf_peer(model: GPTModel, vocab_size: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """HF's model of the same weights, through the toolkit's export, with SDPA attention."""
    config = model.config
    if hf_llama.is_llama_style(config):
        hf_config, state = hf_llama.to_llama(model.state_dict(), config, vocab_size)
    else:
        hf_config, state = hf_gpt2.to_gpt2(model.state_dict(), config, vocab_size)
    with torch.device(device):
        peer = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    peer = peer.to(dtype).eval()
    peer.load_state_dict(state, strict=True)
    peer.generation_config.eos_token_id = None
    peer.generation_config.bos_token_id = None
    return peer


def hf_generation(peer: torch.nn.Module, new_tokens: int) -> Generate:
    @torch.no_grad()
    def generate(prompts: torch.Tensor) -> list[list[int]]:
        output = peer.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
        return output[:, prompts.shape[1] :].tolist()

    return generate


def measure(generate: Generate, prompts: torch.Tensor, repeats: int) -> tuple[float, float, list[list[int]]]:
    """Median seconds of one generation after a warm-up, the peak memory (GiB; nan on a CPU) and the
    generated ids of the last run."""
    cuda = prompts.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, generated = median_step_seconds(lambda: generate(prompts), 1, repeats)
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds, memory, generated


def report(name: str, batch: int, new_tokens: int, figures: tuple, extra: str = "") -> float:
    seconds, memory, generated = figures
    full = sum(len(row) == new_tokens for row in generated)
    tokens_per_second = batch * new_tokens / seconds
    print(
        f"RESULT {name} batch={batch} new_tokens={new_tokens} tok/s={tokens_per_second:,.1f} "
        f"ms/step={1000 * seconds / new_tokens:.2f} seconds={seconds:.3f} peakmem={memory:.2f}GiB "
        f"rows_full={full}/{batch}{extra}",
        flush=True,
    )
    return tokens_per_second


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def main() -> None:
    bench = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    bench.add_argument("--model", choices=("large", "tinyllama"), default="large")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--prompt-length", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=256)
    bench.add_argument("--peer", choices=("hf", "none"), default="hf")
    bench.add_argument("--dtype", choices=DTYPES, default="bf16")
    bench.add_argument("--repeats", type=int, default=3, help="timed generations per figure, after a warm-up")
    bench.add_argument(
        "--eager-too",
        action="store_true",
        help="where ours replays captured decoding steps (one GPU), also time it decoding eagerly",
    )
    known, overrides = bench.parse_known_args()
    config = build_model_config(known.model, overrides)
    if known.prompt_length + known.new_tokens > config.model.max_position_embeddings:
        bench.error(
            f"--prompt-length {known.prompt_length} + --new-tokens {known.new_tokens} exceeds the model's "
            f"{config.model.max_position_embeddings} positions; shorten them or raise "
            "--max-position-embeddings"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[known.dtype]
    vocab_size = SHAPES[known.model]["vocab"]
    generator = torch.Generator().manual_seed(config.seed)
    prompts = {
        batch: torch.randint(0, vocab_size, (batch, known.prompt_length), generator=generator).to(device)
        for batch in known.batch_sizes
    }
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {name}", flush=True)
    label = f"{known.model} {known.dtype} {device.type} prompt={known.prompt_length}"
    model = GPTModel(config.model, seed=config.seed).to(device=device, dtype=dtype).eval()
    path = decoding_path(model, tensor_size=1)
    graphs = DecodeGraphs(model) if path == "cuda-graph" else None
    generate = our_generation(model, known.new_tokens, vocab_size, graphs)
    ours_figures = {batch: measure(generate, prompts[batch], known.repeats) for batch in known.batch_sizes}
    rates = {}
    for batch, figures in ours_figures.items():
        extra = f" decoding={path.split(' ')[0]}"
        rates[batch] = [report(f"ours-{label}", batch, known.new_tokens, figures, extra)]
    timed_graphs = graphs is not None
    generate = graphs = None  # frees the captured steps and their caches before the next figures
    if known.eager_too and timed_graphs:
        eager = our_generation(model, known.new_tokens, vocab_size, None)
        for batch in known.batch_sizes:
            figures = measure(eager, prompts[batch], known.repeats)
            agree = agreeing_prefix(ours_figures[batch][2][0], figures[2][0])
            extra = f" decoding=eager row0_agreeing_prefix={agree}/{known.new_tokens}"
            report(f"ours-eager-{label}", batch, known.new_tokens, figures, extra)
        del eager
    if known.peer == "hf":
        peer = hf_peer(model, vocab_size, dtype, device)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for batch in known.batch_sizes:
            figures = measure(hf_generation(peer, known.new_tokens), prompts[batch], known.repeats)
            agree = agreeing_prefix(ours_figures[batch][2][0], figures[2][0])
            extra = f" row0_agreeing_prefix={agree}/{known.new_tokens}"
            name = f"hf-{label} transformers={transformers.__version__}"
            rates[batch].append(report(name, batch, known.new_tokens, figures, extra))
        ratios = ", ".join(f"batch {batch}: {mine / theirs:.3f}x" for batch, (mine, theirs) in rates.items())
        print(f"RATIO {known.model} ours/hf tok/s: {ratios}", flush=True)
    if any(len(row) != known.new_tokens for figures in ours_figures.values() for row in figures[2]):
        sys.exit(f"a row of ours ended before its {known.new_tokens} tokens: see rows_full above")


if __name__ == "__main__":
    main()
