"""Zero-shot evaluation throughput of ``megatron.evaluation`` (WikiText-style perplexity windows) on one
device, next to HuggingFace's model of the same weights scoring the same windows.

The model is a randomly initialised ``GPTModel`` (seeded by ``--seed``) of one of
``bench/train_throughput.py``'s shapes (``--model large``: the 1.3B GPT), in ``--dtype`` on the GPU when
there is one. The text is the bundled King James Bible corpus, its first ``--characters`` characters,
tokenized with the bundled GPT-2 BPE and cut into windows by ``megatron.evaluation.wikitext.lm_windows``
(``--stride``: Megatron's ``--overlapping-eval``; the sequence length by default: no overlap). Ours scores
them with ``score_samples``, as ``tasks/main.py --task WIKITEXT103`` does; the HF peer
(``GPT2LMHeadModel``, SDPA, weights exported by ``megatron/checkpointing/hf_gpt2.py``) runs the same
batches and the same float32 log-softmax. Both report the summed loss, which must agree.

Prints one ``RESULT`` line per implementation: input tokens/s (every window position the model reads)
and scored tokens/s (each text token once), the wall time of one full pass after a warm-up pass, between
device synchronisations; then a ``RATIO`` line. A CPU run of a tiny model takes seconds:

    python3 bench/evaluation_throughput.py --model large --micro-batch-size 8
    python3 bench/evaluation_throughput.py --model large --num-layers 2 --hidden-size 64 \\
      --num-attention-heads 4 --seq-length 64 --max-position-embeddings 64 --dtype fp32 --characters 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.generation_throughput import DTYPES, build_model_config, hf_peer  # noqa: E402
from bench.timing import median_step_seconds  # noqa: E402
from bench.train_throughput import SHAPES  # noqa: E402
from megatron.data.tokenizer import build_tokenizer  # noqa: E402
from megatron.evaluation.scoring import Sample, score_samples  # noqa: E402
from megatron.evaluation.wikitext import lm_windows  # noqa: E402
from megatron.model import GPTModel  # noqa: E402
from megatron.text_generation.samples import batches  # noqa: E402

CORPUS = REPO_ROOT / "data" / "corpus" / "kjv.jsonl"
TOKENIZER = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe"


def corpus_text(characters: int) -> str:
    text, size = [], 0
    with CORPUS.open(encoding="utf-8") as lines:
        for line in lines:
            text.append(json.loads(line)["text"])
            size += len(text[-1])
            if size >= characters:
                break
    return "\n\n".join(text)[:characters]


@torch.no_grad()
def hf_scores(peer: torch.nn.Module, samples: list[Sample], vocab_size: int, batch_size: int) -> float:
    """The summed scored loss of ``samples`` under HF's model, computed as ``score_batch`` computes ours."""
    device = next(peer.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches(samples, batch_size):
        length = max(len(sample.tokens) for sample in batch)
        rows = [sample.tokens + [0] * (length - len(sample.tokens)) for sample in batch]
        tokens = torch.tensor(rows, dtype=torch.long, device=device)
        logits = peer(tokens[:, :-1]).logits[..., :vocab_size].float()
        losses = -F.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        for row, sample in enumerate(batch):
            total += losses[row, sample.first_scored : len(sample.tokens) - 1].double().sum()
    return float(total)


def report(name: str, seconds: float, samples: list[Sample], loss: float) -> float:
    inputs = sum(len(sample.tokens) - 1 for sample in samples)
    scored = sum(sample.num_scored for sample in samples)
    print(
        f"RESULT {name} windows={len(samples)} input_tok/s={inputs / seconds:,.1f} "
        f"scored_tok/s={scored / seconds:,.1f} seconds={seconds:.3f} summed_loss={loss:.6e}",
        flush=True,
    )
    return scored / seconds


def main() -> None:
    bench = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    bench.add_argument("--model", choices=("large", "tinyllama"), default="large")
    bench.add_argument("--characters", type=int, default=400_000, help="of the bundled corpus")
    bench.add_argument("--stride", type=int, default=None, help="--overlapping-eval; default: no overlap")
    bench.add_argument("--peer", choices=("hf", "none"), default="hf")
    bench.add_argument("--dtype", choices=DTYPES, default="bf16")
    bench.add_argument("--repeats", type=int, default=1, help="timed passes, after a warm-up pass")
    known, overrides = bench.parse_known_args()
    config = build_model_config(known.model, overrides)
    seq_length, batch_size = config.model.seq_length, config.batch.micro_batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[known.dtype]
    tokenizer = build_tokenizer(
        "GPT2BPETokenizer", str(TOKENIZER / "vocab.json"), str(TOKENIZER / "merges.txt")
    )
    samples = lm_windows(
        tokenizer.tokenize(corpus_text(known.characters)), seq_length, known.stride or seq_length
    )
    vocab_size = SHAPES[known.model]["vocab"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    label = f"{known.model} {known.dtype} {device.type} seq={seq_length} micro_batch={batch_size}"
    print(f"torch {torch.__version__}, {name}, {len(samples)} windows", flush=True)
    model = GPTModel(config.model, seed=config.seed).to(device=device, dtype=dtype).eval()

    def ours() -> float:
        return sum(score.loss for score in score_samples(model, samples, vocab_size, 0, batch_size))

    seconds, loss = median_step_seconds(ours, 1, known.repeats)
    mine = report(f"ours-{label}", seconds, samples, loss)
    if known.peer == "hf":
        peer = hf_peer(model, vocab_size, dtype, device)
        del model
        gc.collect()
        seconds, peer_loss = median_step_seconds(
            lambda: hf_scores(peer, samples, vocab_size, batch_size), 1, known.repeats
        )
        theirs = report(f"hf-{label}", seconds, samples, peer_loss)
        print(
            f"RATIO {known.model} ours/hf scored tok/s: {mine / theirs:.3f}x; "
            f"summed loss relative difference {abs(loss - peer_loss) / abs(peer_loss):.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
