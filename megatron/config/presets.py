"""Named model sizes ("gpt-1.3b", "llama2-70b", ...) with the layout that fits nodes of 8 x 80 GB GPUs.

This is the one place that says what "1.3B" is: the recipes in ``examples_deepspeed/`` read their variables
from here (``--shell``), ``bench/train_throughput.py`` takes its GPT shapes from here, and the tests check
that each preset's flags pass ``build_config`` with the preset's world size. Presets are data and a printer,
not a training flag: a run is still described by its ``pretrain_*.py`` flags alone.

Sources: GPT-3 sizes, batch sizes and learning rates from Brown et al. 2020, table 2.1 (13B's width is 5120,
the paper's 5140 being a typo that no head count divides), init std from Megatron-DeepSpeed's GPT-3
recipes; LLaMA-2 from Touvron et al. 2023 and the released HF configs; BERT from Devlin et al. 2019; the
MoE model from Megatron-DeepSpeed's ds_pretrain_gpt_1.3B_MoE128.sh.

    python -m megatron.config.presets gpt-1.3b --flags     # the flag line
    python -m megatron.config.presets gpt-1.3b --shell     # VAR=${VAR:-value} lines for a recipe
    python -m megatron.config.presets --list
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Literal

Family = Literal["gpt", "llama", "bert"]
GPUS_PER_NODE = 8
# The tokenizers' vocabularies before padding: GPT-2 BPE, LLaMA's SentencePiece, BERT's uncased WordPiece.
VOCAB_SIZES: dict[Family, int] = {"gpt": 50257, "llama": 32000, "bert": 30522}
TOKENIZER_TYPES: dict[Family, str] = {
    "gpt": "GPT2BPETokenizer", "llama": "GPTSentencePieceTokenizer", "bert": "BertWordPieceLowerCase",
}  # fmt: skip
ENTRY_POINTS: dict[Family, str] = {
    "gpt": "pretrain_gpt.py", "llama": "pretrain_gpt.py", "bert": "pretrain_bert.py",
}  # fmt: skip
# What makes a GPT a LLaMA, as Megatron-DeepSpeed's pretrain_llama2_distributed.sh spells it.
LLAMA_SWITCHES = (
    "--position-embedding-type", "rope", "--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--no-query-key-layer-scaling",
)  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """What the model is: the flags that decide its parameters, independent of how it is spread."""

    family: Family
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    seq_length: int
    ffn_hidden_size: int | None = None  # None: the family's default (4h)
    num_key_value_heads: int | None = None  # None: one key/value head per query head
    num_experts: int = 1  # > 1: a DeepSpeed MoE layer in every second transformer layer

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZES[self.family]


@dataclass(frozen=True)
class Layout:
    """How the model is spread over nodes of ``GPUS_PER_NODE`` GPUs, and the batch it trains with."""

    tensor_parallel: int
    pipeline_parallel: int
    zero_stage: int
    micro_batch_size: int
    global_batch_size: int
    nodes: int
    expert_parallel: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * GPUS_PER_NODE

    @property
    def data_parallel(self) -> int:
        return self.world_size // (self.tensor_parallel * self.pipeline_parallel)


@dataclass(frozen=True)
class Preset:
    name: str
    shape: Shape
    layout: Layout
    lr: float
    min_lr: float
    init_std: float = 0.02

    @property
    def entry_point(self) -> str:
        return ENTRY_POINTS[self.shape.family]

    def variables(self) -> dict[str, str]:
        """The recipe variables (``examples_deepspeed/recipe.sh`` turns them into flags)."""
        shape, layout = self.shape, self.layout
        return {
            "NUM_LAYERS": str(shape.num_layers), "HIDDEN_SIZE": str(shape.hidden_size),
            "NUM_ATTN_HEADS": str(shape.num_attention_heads), "SEQ_LEN": str(shape.seq_length),
            "FFN_HIDDEN_SIZE": str(shape.ffn_hidden_size or ""),
            "NUM_KV_HEADS": str(shape.num_key_value_heads or ""), "NUM_EXPERTS": str(shape.num_experts),
            "LR": f"{self.lr:g}", "MIN_LR": f"{self.min_lr:g}", "INIT_STD": f"{self.init_std:g}",
            "TP": str(layout.tensor_parallel), "PP": str(layout.pipeline_parallel),
            "EP_SIZE": str(layout.expert_parallel), "ZERO_STAGE": str(layout.zero_stage),
            "MICRO_BATCH": str(layout.micro_batch_size), "GLOBAL_BATCH": str(layout.global_batch_size),
            "NNODES": str(layout.nodes), "GPUS_PER_NODE": str(GPUS_PER_NODE),
            "ENTRY_POINT": self.entry_point, "TOKENIZER_TYPE": TOKENIZER_TYPES[shape.family],
            "ARCH_FLAGS": " ".join(self.arch_flags()),
        }  # fmt: skip

    def arch_flags(self) -> list[str]:
        """The family's fixed switches (no numbers in them): LLaMA's, and the MoE gating settings."""
        flags = list(LLAMA_SWITCHES) if self.shape.family == "llama" else []
        if self.shape.num_experts > 1:  # Megatron-DeepSpeed's MoE recipes: top-1, capacity 1.0, loss 0.01
            flags += [
                "--expert-interval", "2", "--topk", "1", "--moe-train-capacity-factor", "1.0",
                "--moe-eval-capacity-factor", "1.0", "--moe-min-capacity", "4", "--moe-loss-coeff", "0.01",
            ]  # fmt: skip
        return flags

    def model_flags(self) -> list[str]:
        shape = self.shape
        flags = [
            "--num-layers", str(shape.num_layers), "--hidden-size", str(shape.hidden_size),
            "--num-attention-heads", str(shape.num_attention_heads), "--seq-length", str(shape.seq_length),
            "--max-position-embeddings", str(shape.seq_length), "--init-method-std", f"{self.init_std:g}",
        ]  # fmt: skip
        if shape.ffn_hidden_size is not None:
            flags += ["--ffn-hidden-size", str(shape.ffn_hidden_size)]
        if shape.num_key_value_heads is not None:
            flags += ["--num-key-value-heads", str(shape.num_key_value_heads)]
        if shape.num_experts > 1:
            flags += ["--num-experts", str(shape.num_experts)]
        return flags + self.arch_flags()

    def flags(self) -> list[str]:
        """Model, layout, batch and learning-rate flags; data, tokenizer, duration and ds_config are the
        run's own."""
        layout = self.layout
        flags = self.model_flags() + [
            "--tensor-model-parallel-size", str(layout.tensor_parallel),
            "--pipeline-model-parallel-size", str(layout.pipeline_parallel),
            "--zero-stage", str(layout.zero_stage), "--micro-batch-size", str(layout.micro_batch_size),
            "--global-batch-size", str(layout.global_batch_size), "--lr", f"{self.lr:g}",
            "--min-lr", f"{self.min_lr:g}",
        ]  # fmt: skip
        if layout.expert_parallel > 1:
            flags += ["--moe-expert-parallel-size", str(layout.expert_parallel)]
        return flags


def _gpt(
    name: str, layers: int, hidden: int, heads: int, lr: float, init_std: float, layout: Layout
) -> Preset:
    """GPT-3: 2048 tokens, cosine decay to 10% of the peak learning rate."""
    return Preset(name, Shape("gpt", layers, hidden, heads, 2048), layout, lr, lr / 10, init_std)


def _llama(
    name: str, layers: int, hidden: int, heads: int, ffn: int, kv_heads: int | None, lr: float, layout: Layout
) -> Preset:
    """LLaMA-2: 4096 tokens, cosine decay to 10% of the peak learning rate."""
    shape = Shape("llama", layers, hidden, heads, 4096, ffn_hidden_size=ffn, num_key_value_heads=kv_heads)
    return Preset(name, shape, layout, lr, lr / 10)


# Layouts: the model fits 80 GB with ZeRO-1 and activation recomputation; T stays within a node (NVLink),
# P splits the layers evenly, and the nodes give a data-parallel degree that divides the global batch.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _gpt("gpt-125m", 12, 768, 12, 6e-4, 0.02, Layout(1, 1, 1, 16, 256, 1)),
        _gpt("gpt-350m", 24, 1024, 16, 3e-4, 0.018, Layout(1, 1, 1, 16, 256, 1)),
        _gpt("gpt-1.3b", 24, 2048, 16, 2e-4, 0.013, Layout(1, 1, 1, 8, 512, 1)),
        _gpt("gpt-2.7b", 32, 2560, 32, 1.6e-4, 0.011, Layout(1, 1, 1, 4, 512, 2)),
        _gpt("gpt-6.7b", 32, 4096, 32, 1.2e-4, 0.009, Layout(2, 1, 1, 4, 1024, 4)),
        _gpt("gpt-13b", 40, 5120, 40, 1e-4, 0.008, Layout(4, 1, 1, 2, 1024, 8)),
        _gpt("gpt-175b", 96, 12288, 96, 0.6e-4, 0.005, Layout(8, 16, 1, 1, 1536, 128)),
        _llama("llama2-7b", 32, 4096, 32, 11008, None, 3e-4, Layout(2, 1, 1, 2, 1024, 4)),
        _llama("llama2-13b", 40, 5120, 40, 13824, None, 3e-4, Layout(4, 1, 1, 2, 1024, 8)),
        _llama("llama2-70b", 80, 8192, 64, 28672, 8, 1.5e-4, Layout(8, 4, 1, 1, 1024, 32)),
        Preset("bert-base", Shape("bert", 12, 768, 12, 512), Layout(1, 1, 1, 32, 256, 1), 1e-4, 1e-5),
        Preset("bert-large", Shape("bert", 24, 1024, 16, 512), Layout(1, 1, 1, 32, 256, 1), 1e-4, 1e-5),
        # 128 experts in every second layer, 2 per GPU: expert parallelism over 64 data-parallel ranks.
        Preset(
            "gpt-1.3b-moe128",
            Shape("gpt", 24, 2048, 16, 2048, num_experts=128),
            Layout(1, 1, 2, 8, 512, 8, expert_parallel=64),
            1.2e-4,
            1e-6,
            0.013,
        ),  # fmt: skip
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"no model preset {name!r}; the presets are: {', '.join(PRESETS)}")
    return PRESETS[name]


def describe(preset: Preset) -> str:
    shape, layout = preset.shape, preset.layout
    experts = f" x {shape.num_experts} experts" if shape.num_experts > 1 else ""
    return (
        f"{preset.name:16} {shape.num_layers} layers, hidden {shape.hidden_size}, "
        f"{shape.num_attention_heads} heads{experts}, seq {shape.seq_length} "
        f"| T={layout.tensor_parallel} P={layout.pipeline_parallel} "
        f"ZeRO-{layout.zero_stage} micro {layout.micro_batch_size} global {layout.global_batch_size} "
        f"| {layout.nodes} node(s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a model preset's flags or recipe variables.")
    parser.add_argument("name", nargs="?", choices=PRESETS, help="the preset")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--flags", action="store_true", help="the pretrain_*.py flag line")
    what.add_argument("--shell", action="store_true", help="VAR=${VAR:-value} lines, for eval in a recipe")
    what.add_argument("--list", action="store_true", help="one line per preset")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(describe(preset) for preset in PRESETS.values()))
        return 0
    if args.name is None:
        parser.error("name a preset (--list shows them)")
    preset = get_preset(args.name)
    if args.flags:
        print(shlex.join(preset.flags()))
    else:  # the environment overrides each value, as in Megatron-DeepSpeed's recipes
        for variable, value in preset.variables().items():
            print(f'{variable}="${{{variable}:-{value}}}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
