"""The Megatron-DeepSpeed recipe the config tests start from, and ``build`` to build a variant of it."""

from __future__ import annotations

import json

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.schema import Config

GPT2_VOCAB = 50257
WORLD = 16

# A GPT-350M Megatron-DeepSpeed recipe: 16 GPUs, ZeRO-1, fp16, iteration-based cosine schedule.
RECIPE_FLAGS: dict[str, str | list[str] | bool] = {
    "--num-layers": "24", "--hidden-size": "1024", "--num-attention-heads": "16", "--seq-length": "2048",
    "--max-position-embeddings": "2048", "--micro-batch-size": "4", "--global-batch-size": "256",
    "--train-iters": "500000", "--lr-decay-iters": "320000", "--lr-warmup-fraction": "0.01",
    "--lr": "3e-4", "--min-lr": "3e-5", "--lr-decay-style": "cosine", "--weight-decay": "0.1",
    "--clip-grad": "1.0", "--fp16": True, "--data-path": "/data/pile_text_document", "--split": "949,50,1",
    "--tokenizer-type": "GPT2BPETokenizer", "--vocab-file": "vocab.json", "--merge-file": "merges.txt",
    "--log-interval": "10", "--eval-interval": "1000", "--eval-iters": "10", "--save": "/ckpt",
    "--save-interval": "1000", "--load": "/ckpt", "--deepspeed": True, "--zero-stage": "1",
    "--deepspeed-activation-checkpointing": True,
}  # fmt: skip
RECIPE_DS = {
    "train_batch_size": 256,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "zero_optimization": {"stage": 1},
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
             "min_loss_scale": 1, "initial_scale_power": 12},
    "activation_checkpointing": {"partition_activations": True, "contiguous_memory_optimization": True},
    "wall_clock_breakdown": False,
}  # fmt: skip


def build(tmp_path, changes=None, ds=RECIPE_DS, world_size=WORLD, vocab_size=GPT2_VOCAB) -> Config:
    """The recipe with ``changes`` applied (a flag -> value, True for a bare flag, None to drop it)."""
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(ds))
    flags = {**RECIPE_FLAGS, "--deepspeed_config": str(path), **(changes or {})}
    argv = []
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, *([value] if isinstance(value, str) else value)]
    return build_config(parse_args(argv), world_size, vocab_size)
