"""Time and profile the plain-PyTorch peer (``raw_torch_gpt.py`` of ``../shared/peers``) step for step as it
runs itself, optionally with its weights drawn as Megatron draws them.

The peer's default init (embeddings N(0, 1), PyTorch's Linear init) gives values on which the power-capped
GPU clocks higher than on Megatron's N(0, 0.02); ``--megatron-init`` re-draws them so that the two programs
are compared on like values (bench/RESULTS.md, session 4). ``--float8`` converts its linear layers with
torchao's public ``convert_to_float8_training`` (e4m3 forward, e5m2 gradients, tensorwise scaling: what
our ``--fp8-format hybrid`` runs), the peer for FP8 runs. The peer's file is imported unchanged.

    python3 bench/raw_peer_probe.py --peer-dir .carry/peers --model large [--megatron-init] [--float8]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.profile_gaps import profile_steps  # noqa: E402
from bench.timing import median_step_seconds  # noqa: E402
from bench.train_throughput import PROFILED_STEPS, SHAPES  # noqa: E402


def megatron_init_(model: torch.nn.Module, num_layers: int, std: float = 0.02) -> None:
    """N(0, std) weights, N(0, std / sqrt(2 x layers)) for the projections into the residual stream, zero
    biases, LayerNorms untouched, as ``megatron.model`` initialises."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln" in name or name.startswith("ln"):
                continue
            if name.endswith("bias"):
                param.zero_()
            else:
                scaled = name.endswith(("proj.weight", "out.weight"))
                param.normal_(0.0, std / math.sqrt(2 * num_layers) if scaled else std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-dir", required=True, help="the folder holding raw_torch_gpt.py")
    parser.add_argument("--model", choices=SHAPES, default="small")
    parser.add_argument("--megatron-init", action="store_true")
    parser.add_argument("--float8", action="store_true", help="FP8 linear layers through torchao")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="then profile three steps, as the bench does")
    args = parser.parse_args()
    sys.path.insert(0, args.peer_dir)
    peer = importlib.import_module("raw_torch_gpt")
    shape = SHAPES[args.model]
    layers, seq, micro = shape["layers"], shape["seq"], shape["micro"]
    torch.manual_seed(0)
    model = peer.GPT(layers, shape["hidden"], shape["heads"], seq).cuda()
    if args.megatron_init:
        megatron_init_(model, layers)
    if args.float8:
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model)
    # The peer's own step (raw_torch_gpt.run), kept as it is.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model)
    tokens = torch.randint(0, 50304, (micro, seq), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, _ = median_step_seconds(step, args.warmup, args.iterations)
    init = "megatron-init" if args.megatron_init else "own-init"
    init += " fp8" if args.float8 else ""
    print(f"PEER raw-{args.model} {init} step_ms={seconds * 1000:.1f} tok/s={micro * seq / seconds:,.0f}")
    if args.profile:
        print(profile_steps(step, PROFILED_STEPS))


if __name__ == "__main__":
    main()
