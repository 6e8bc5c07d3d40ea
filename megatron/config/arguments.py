"""The command line, with Megatron-DeepSpeed's flag names and meanings, so existing launch scripts carry over.

Parsing here is only syntax: which flags exist, their types and choices. Whether the flags make sense
together (required flags, batch arithmetic, the ds_config) is decided in one place,
``megatron.config.build.build_config``.

Flags that the ds_config can also set (batch sizes, ``--zero-stage``, ``--clip-grad``, the loss-scale flags)
default to None here, so that ``build_config`` can tell "not given" from "given the default value" and take
the value from the ds_config instead; the documented default is applied there when neither says.

Flag groups whose rules have a module of their own are declared there, beside those rules: logging and
tensorboard (``monitoring``), checkpoints and resuming (``resume``), ZeRO-Offload (``offload``),
Megatron-DeepSpeed's kernel and backend switches (``compat``), BERT and T5 (``masked_lm``).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from typing import NoReturn, get_args

from megatron.config.architecture import add_architecture_flags
from megatron.config.compat import add_compat_flags
from megatron.config.errors import ConfigError
from megatron.config.masked_lm import add_masked_lm_flags
from megatron.config.monitoring import add_logging_flags
from megatron.config.nonfinite import add_nonfinite_flags
from megatron.config.offload import add_offload_flags
from megatron.config.resume import add_checkpoint_flags
from megatron.config.schema import CompileMode, Fp8Format
from megatron.data.tokenizer import TOKENIZER_TYPES

# A token such as "-1" or "-.5" is a value, not a flag.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of exiting, so callers and tests handle bad input
    the same way whether it comes from a flag or from the ds_config. ``--help`` still exits 0."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (run with --help to list the flags)")


def build_parser() -> argparse.ArgumentParser:
    """The parser for all flags. ``allow_abbrev`` is off, as in Megatron, so a prefix of a flag is an error
    instead of silently meaning the flag it happens to abbreviate."""
    parser = _RaisingParser(
        description="Train a GPT model through DeepSpeed with Megatron-DeepSpeed flags.", allow_abbrev=False
    )
    _add_model_flags(parser)
    add_architecture_flags(parser)
    _add_batch_flags(parser)
    _add_training_flags(parser)
    _add_optimizer_flags(parser)
    _add_lr_flags(parser)
    _add_precision_flags(parser)
    _add_data_flags(parser)
    add_logging_flags(parser)
    add_nonfinite_flags(parser)
    add_checkpoint_flags(parser)
    _add_deepspeed_flags(parser)
    add_offload_flags(parser)
    _add_parallel_flags(parser)
    _add_recompute_flags(parser)
    _add_kernel_flags(parser)
    add_compat_flags(parser)
    add_masked_lm_flags(parser)
    _add_moe_flags(parser)
    return parser


def parse_args(
    argv: list[str] | None = None,
    add_tool_flags: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``). Unknown flags are collected and reported together, each
    with the closest known flag, rather than argparse's bare "unrecognized arguments": most come from
    Megatron-LM recipes using features this toolkit does not have, and the user needs the full list.
    ``add_tool_flags`` adds a tool's own flags to the training flags (the text generation server's)."""
    parser = build_parser()
    if add_tool_flags is not None:
        add_tool_flags(parser)
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown:
        raise ConfigError(_unknown_flags_message(parser, unknown))
    return args


def _unknown_flags_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    known = sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})
    problems = []
    after_unknown_flag = False
    for token in unknown:
        if token.startswith("-") and not _NEGATIVE_NUMBER.match(token):
            flag = token.split("=", 1)[0]
            match = difflib.get_close_matches(flag, known, n=1, cutoff=0.5)
            problems.append(f"{flag} ({f'did you mean {match[0]}?' if match else 'no similar flag'})")
            after_unknown_flag = True
        elif not after_unknown_flag:
            problems.append(f"{token!r} (a value with no flag before it)")
    return (
        f"unknown command-line arguments: {'; '.join(problems)}. Remove them or fix their spelling; "
        "Megatron-LM features that this toolkit does not implement are not accepted (--help lists the flags)."
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--num-layers", type=int, default=None, help="Number of transformer layers (required)."
    )
    group.add_argument("--hidden-size", type=int, default=None, help="Transformer hidden size (required).")
    group.add_argument("--num-attention-heads", type=int, default=None, help="Attention heads (required).")
    group.add_argument(
        "--ffn-hidden-size", type=int, default=None, help="MLP hidden size. Default: 4 * --hidden-size."
    )
    group.add_argument(
        "--kv-channels",
        type=int,
        default=None,
        help="Channels per attention head. Default: --hidden-size / --num-attention-heads.",
    )
    group.add_argument("--seq-length", type=int, default=None, help="Tokens per sample (required).")
    group.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="Size of the position-embedding table. Default: --seq-length.",
    )
    group.add_argument("--init-method-std", type=float, default=0.02, help="Std of the normal weight init.")
    group.add_argument(
        "--attention-dropout", type=float, default=0.1, help="Dropout on attention probabilities."
    )
    group.add_argument("--hidden-dropout", type=float, default=0.1, help="Dropout on the residual branches.")
    group.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Pad the vocabulary to a multiple of this x the tensor-parallel size, for efficient matmuls.",
    )
    group.add_argument(
        "--layernorm-epsilon", "--norm-epsilon", type=float, default=1e-5, help="LayerNorm/RMSNorm epsilon."
    )


def _add_batch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batch")
    group.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="Samples per GPU per forward/backward (required unless the ds_config sets "
        "train_micro_batch_size_per_gpu).",
    )
    group.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help="Samples per optimizer step over all data-parallel ranks. Default: the ds_config's "
        "train_batch_size, else micro-batch-size * data-parallel size.",
    )
    group.add_argument(
        "--rampup-batch-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("START", "INCR", "SAMPLES"),
        help="Grow the global batch from START by INCR up to --global-batch-size over SAMPLES samples.",
    )


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--train-iters", type=int, default=None, help="Train this many iterations.")
    group.add_argument("--train-samples", type=int, default=None, help="Train on this many samples.")
    group.add_argument(
        "--train-tokens",
        type=int,
        default=None,
        help="Also stop once this many tokens were consumed, counted over all runs of a resumed training "
        "(with --train-iters or --train-samples, whichever ends first).",
    )
    group.add_argument(
        "--exit-interval", type=int, default=None, help="Exit when the iteration is a multiple."
    )
    group.add_argument(
        "--exit-duration-in-mins", type=float, default=None, help="Exit after this many minutes of training."
    )
    group.add_argument(
        "--exit-signal-handler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On SIGTERM, SIGINT or SIGUSR1 every rank finishes the current iteration, saves a checkpoint "
        "(with --save) and exits with status 4; a second signal exits at once. On by default (Megatron-LM "
        "needs the flag); --no-exit-signal-handler keeps each signal's default action.",
    )
    group.add_argument("--seed", type=int, default=1234, help="Random seed.")


def _add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimizer")
    group.add_argument(
        "--optimizer", choices=["adam", "sgd"], default="adam", help="Optimizer (adam is AdamW)."
    )
    group.add_argument("--lr", type=float, default=None, help="Peak learning rate (required).")
    group.add_argument("--min-lr", type=float, default=0.0, help="Learning rate floor at the end of decay.")
    group.add_argument("--weight-decay", type=float, default=0.01, help="Decoupled weight decay.")
    group.add_argument(
        "--clip-grad",
        type=float,
        default=None,
        help="Clip the global gradient norm to this (0: off). Default: the ds_config's gradient_clipping, "
        "else 1.0.",
    )
    group.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    group.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    group.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    group.add_argument("--sgd-momentum", type=float, default=0.9, help="SGD momentum.")


def _add_lr_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learning-rate schedule")
    group.add_argument(
        "--lr-decay-style", choices=["linear", "cosine", "constant"], default="linear", help="Decay shape."
    )
    group.add_argument("--lr-decay-iters", type=int, default=None, help="Decay over this many iterations.")
    group.add_argument("--lr-decay-samples", type=int, default=None, help="Decay over this many samples.")
    group.add_argument("--lr-warmup-iters", type=int, default=0, help="Linear warmup iterations.")
    group.add_argument(
        "--lr-warmup-fraction", type=float, default=None, help="Warmup as a fraction of the decay length."
    )
    group.add_argument("--lr-warmup-samples", type=int, default=0, help="Linear warmup samples.")
    group.add_argument(
        "--lr-decay-tokens",
        type=int,
        default=None,
        help="Decay over this many consumed tokens instead of iterations/samples (a sequence-length "
        "curriculum makes early samples shorter).",
    )
    group.add_argument(
        "--lr-warmup-tokens", type=int, default=None, help="Linear warmup over this many consumed tokens."
    )


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision")
    group.add_argument("--fp16", action="store_true", help="fp16 mixed precision with loss scaling.")
    group.add_argument("--bf16", action="store_true", help="bf16 mixed precision.")
    group.add_argument(
        "--embedding-weights-in-fp32",
        action="store_true",
        help="Look up the word embeddings in an fp32 copy of the bf16/fp16 table (the output cast back), "
        "so that the table's gradient is summed in fp32. Default: in the table's own dtype.",
    )
    group.add_argument(
        "--fp8-format",
        choices=get_args(Fp8Format),
        default=None,
        help="FP8 matmuls in the transformer layers' linear layers (torchao, Ada/Hopper GPUs): hybrid = "
        "e4m3 activations and weights, e5m2 gradients; e4m3 = e4m3 for all three. The rest of the step "
        "keeps the run's precision (bf16 autocast or --bf16). Default: off.",
    )
    group.add_argument(
        "--loss-scale",
        type=float,
        default=None,
        help="Static fp16 loss scale. Default: the ds_config's fp16.loss_scale, else dynamic scaling.",
    )
    group.add_argument(
        "--initial-loss-scale",
        type=float,
        default=None,
        help="Initial dynamic loss scale, a power of two. Default: 2**32.",
    )
    group.add_argument(
        "--min-loss-scale", type=float, default=None, help="Minimum dynamic loss scale. Default: 1."
    )
    group.add_argument(
        "--loss-scale-window",
        type=int,
        default=None,
        help="Overflow-free iterations before the dynamic scale grows. Default: 1000.",
    )
    group.add_argument(
        "--hysteresis",
        type=int,
        default=None,
        help="Overflows tolerated before the scale shrinks. Default: 2.",
    )


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data-path",
        nargs="*",
        default=None,
        help="One dataset prefix, or weighted prefixes 'w1 prefix1 w2 prefix2 ...', divided by --split "
        "(required unless --train-data-path is given).",
    )
    group.add_argument(
        "--split", default="969,30,1", help="Train/validation/test proportions, e.g. 969,30,1."
    )
    for split, name in (("train", "training"), ("valid", "validation"), ("test", "test")):
        group.add_argument(
            f"--{split}-data-path",
            nargs="*",
            default=None,
            help=f"Instead of --data-path and --split: the {name} data, one prefix or 'w1 prefix1 w2 "
            "prefix2 ...', each read whole.",
        )
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="GPT2BPETokenizer")
    group.add_argument(
        "--vocab-file", default=None, help="GPT2BPETokenizer: vocab.json; BertWordPiece*: vocab.txt."
    )
    group.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt (GPT2BPETokenizer).")
    group.add_argument(
        "--tokenizer-model",
        default=None,
        help="HFTokenizer: tokenizer.json, or a folder holding one; SentencePieceTokenizer, "
        "GPTSentencePieceTokenizer, Llama2Tokenizer: a SentencePiece .model file.",
    )
    group.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="NullTokenizer: size of the vocabulary before the eod id and padding (ids 0..N-1; eod is N).",
    )
    group.add_argument("--data-impl", default="mmap", help="Indexed-dataset format; only mmap is supported.")
    group.add_argument("--eod-mask-loss", action="store_true", help="Do not train on end-of-document tokens.")
    group.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes.")
    group.add_argument("--data-cache-path", default=None, help="Where to cache dataset index files.")
    group.add_argument(
        "--verify-data",
        choices=("quick", "full"),
        default="quick",
        help="Checks of each corpus before training: quick (index against .bin, dtype against the "
        "vocabulary; reads only the index) or full (also every token id; reads the whole .bin).",
    )


def _add_deepspeed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deepspeed")
    group.add_argument(
        "--deepspeed", action="store_true", help="Run through the DeepSpeed engine (required)."
    )
    group.add_argument(
        "--deepspeed_config",
        "--deepspeed-config",
        dest="deepspeed_config",
        default=None,
        help="ds_config file.",
    )
    group.add_argument(
        "--zero-stage", type=int, default=None, help="ZeRO stage 0-3. Default: the ds_config's, else 0."
    )
    group.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        default=None,
        help="Set by the launcher; unused.",
    )


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parallel")
    group.add_argument(
        "--tensor-model-parallel-size",
        type=int,
        default=1,
        help="Split each layer's matrices over this many neighbouring ranks.",
    )
    group.add_argument(
        "--pipeline-model-parallel-size",
        type=int,
        default=1,
        help="Split the layers into this many stages, run by DeepSpeed's pipeline engine.",
    )
    group.add_argument(
        "--no-pipeline-parallel",
        action="store_true",
        help="Use DeepSpeed's plain engine instead of its pipeline engine (needs pipeline size 1).",
    )
    group.add_argument(
        "--pipeline-partition-method",
        choices=["parameters", "uniform", "type:transformer"],
        default="parameters",
        help="How DeepSpeed's pipeline engine assigns layers to stages: balance parameters, layers, or "
        "transformer layers.",
    )
    group.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="Megatron sequence parallelism: split LayerNorm and dropout activations along the sequence over "
        "the tensor-parallel ranks (needs tensor-parallel size > 1).",
    )
    group.add_argument(
        "--ds-sequence-parallel-size",
        type=int,
        default=1,
        help="DeepSpeed-Ulysses: split the sequence over this many ranks, attention through all-to-all.",
    )


def _add_recompute_flags(parser: argparse.ArgumentParser) -> None:
    # --recompute-method and --recompute-num-layers default to None so that build_config can tell a flag
    # given without full recomputation (an error) from one left out; it applies uniform and 1.
    group = parser.add_argument_group("activation recomputation")
    group.add_argument(
        "--recompute-granularity",
        choices=["selective", "full"],
        default=None,
        help="Recompute activations in the backward pass: the attention core only (selective) or whole "
        "layers (full). Default: keep all activations.",
    )
    group.add_argument(
        "--recompute-method",
        choices=["uniform", "block"],
        default=None,
        help="With full granularity: recompute chunks of --recompute-num-layers layers (uniform), or the "
        "first --recompute-num-layers layers of each pipeline stage (block). Default: uniform.",
    )
    group.add_argument(
        "--recompute-num-layers",
        type=int,
        default=None,
        help="Layers per chunk (uniform) or per stage (block). Default: 1.",
    )
    group.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="Legacy spelling of --recompute-granularity full --recompute-method uniform.",
    )
    group.add_argument(
        "--deepspeed-activation-checkpointing",
        action="store_true",
        help="Recompute through DeepSpeed's activation checkpointing, set up by the ds_config's "
        "activation_checkpointing section. Alone it means full recomputation, uniform, 1 layer.",
    )


def _add_kernel_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kernels (same model, other implementation)")
    group.add_argument(
        "--torch-compile",
        action="store_true",
        help="Compile the model with torch.compile: as one graph where nothing leaves it (one "
        "tensor-parallel and Ulysses rank, no recomputation, no MoE, ZeRO below 3), otherwise each "
        "transformer layer and the output layer with its loss (fuses the elementwise work around matmuls).",
    )
    group.add_argument(
        "--torch-compile-mode",
        choices=get_args(CompileMode),
        default=None,
        help="torch.compile's mode, with --torch-compile: reduce-overhead replays the compiled graphs as "
        "CUDA graphs (no per-kernel launch cost), max-autotune also tunes matmul and fused kernels for the "
        "GPU (minutes of compilation). Default: default.",
    )
    group.add_argument(
        "--use-flash-attn",
        "--use-flash-attn-v2",
        dest="use_flash_attn",
        action="store_true",
        help="Attention through the flash-attn package (a CUDA build, its version-2 kernels) instead of "
        "torch SDPA. --use-flash-attn-v2 is the same.",
    )
    group.add_argument(
        "--deterministic-mode",
        action="store_true",
        help="Deterministic kernels only (cuBLAS workspace, torch's deterministic algorithms, SDPA's flash "
        "and math attention), so that the same run on the same hardware and software repeats bit for bit. "
        "Refused with features not measured deterministic here.",
    )


def _add_moe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mixture of experts (DeepSpeed MoE)")
    group.add_argument(
        "--num-experts",
        type=int,
        nargs="+",
        default=[1],
        help="Experts per MoE layer: one number, or one per MoE layer for pyramid (PR-)MoE. 1: dense MLP.",
    )
    group.add_argument(
        "--expert-interval", type=int, default=2, help="Every this-many-th layer is an MoE layer."
    )
    group.add_argument(
        "--moe-expert-parallel-size",
        type=int,
        default=1,
        help="Spread each MoE layer's experts over this many data-parallel ranks (all-to-all between them).",
    )
    group.add_argument("--topk", type=int, default=1, help="Experts per token: top-1 or top-2 gating.")
    group.add_argument(
        "--mlp-type",
        choices=["standard", "residual"],
        default="standard",
        help="residual: Residual MoE, a dense MLP alongside the experts, mixed by a learned coefficient.",
    )
    group.add_argument(
        "--moe-train-capacity-factor", type=float, default=1.0, help="Expert capacity factor in training."
    )
    group.add_argument(
        "--moe-eval-capacity-factor", type=float, default=1.0, help="Expert capacity factor in evaluation."
    )
    group.add_argument(
        "--moe-min-capacity", type=int, default=4, help="Tokens each expert can take at least."
    )
    group.add_argument(
        "--disable-moe-token-dropping",
        action="store_false",
        dest="moe_token_dropping",
        help="Size every expert's capacity to the busiest expert's load instead of dropping tokens over "
        "capacity.",
    )
    group.add_argument(
        "--moe-loss-coeff",
        type=float,
        default=0.1,
        help="Weight of the load-balancing loss (summed over MoE layers) added to the LM loss.",
    )
    group.add_argument(
        "--create-moe-param-group",
        action="store_true",
        help="Accepted for Megatron-DeepSpeed recipes: expert parameters always get their own optimizer "
        "groups.",
    )
