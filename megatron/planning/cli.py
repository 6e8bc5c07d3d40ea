"""``tools/plan.py`` / ``megatron-plan``: the model's ``pretrain_gpt.py`` flags plus the cluster's, in; the
ranked layouts and the rejections, out; with ``--write DIR`` the best layout's ds_config and flag line.

The planner's own flags are parsed first; everything else is handed to the toolkit's parser unchanged, so a
launch line's model, batch and precision flags mean what they mean in training.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.errors import ConfigError
from megatron.config.presets import VOCAB_SIZES
from megatron.data.bert_tokenizer import BERT_TOKENIZER_TYPES
from megatron.data.sentencepiece_tokenizer import SENTENCEPIECE_TOKENIZER_TYPES
from megatron.planning.gpus import GPUS, Cluster, gpu_spec
from megatron.planning.report import describe, render
from megatron.planning.search import PlanRequest, search
from megatron.planning.write import without_layout_flags, write_layout


def planner_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-plan",
        description="Rank the layouts (T, P, D, Ulysses, ZeRO, micro batch, recomputation, offload) of a GPT "
        "model on a cluster by predicted throughput. Give the model with pretrain_gpt.py's flags "
        "(--num-layers, --hidden-size, ..., --seq-length, --global-batch-size, --bf16/--fp16, the tokenizer "
        "or --vocab-size); any other pretrain_gpt.py flag is passed through to --write's flag line.",
        allow_abbrev=False,
    )
    group = parser.add_argument_group("cluster")
    group.add_argument("--num-gpus", type=int, required=True, help="GPUs in the job.")
    group.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8).")
    group.add_argument("--gpu", choices=sorted(GPUS), default=None, help="A named GPU's datasheet figures.")
    group.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="Memory per GPU in GiB. Without --gpu, figures not given are an H100's.",
    )
    group.add_argument("--peak-tflops", type=float, default=None, help="Dense bf16/fp16 TFLOP/s per GPU.")
    group.add_argument("--intra-node-bandwidth", type=float, default=None, help="NVLink/xGMI GB/s per GPU.")
    group.add_argument("--inter-node-bandwidth", type=float, default=None, help="Network GB/s per GPU.")
    group.add_argument("--host-link-bandwidth", type=float, default=None, help="PCIe GB/s per GPU.")
    group.add_argument("--host-memory-gb", type=float, default=1024.0, help="Host memory per node, GiB.")
    out = parser.add_argument_group("output")
    out.add_argument("--top", type=int, default=10, help="Layouts shown in the table (default 10).")
    out.add_argument("--write", type=Path, default=None, help="Write the best layout's ds_config and flags.")
    return parser


def vocab_size_of(args: argparse.Namespace) -> int:
    """The tokenizer's vocabulary before padding, as pretrain_gpt.py would get it: --vocab-size (plus the
    eod id for NullTokenizer, as that tokenizer adds it), else the tokenizer family's published size."""
    if args.vocab_size is not None:
        return args.vocab_size + (1 if args.tokenizer_type == "NullTokenizer" else 0)
    family = {"GPT2BPETokenizer": "gpt", **dict.fromkeys(SENTENCEPIECE_TOKENIZER_TYPES, "llama")}
    family.update(dict.fromkeys(BERT_TOKENIZER_TYPES, "bert"))
    if args.tokenizer_type not in family:
        raise ConfigError(
            f"--tokenizer-type {args.tokenizer_type}: its vocabulary size depends on its files; give "
            "--vocab-size N (the tokenizer's size before padding)."
        )
    return VOCAB_SIZES[family[args.tokenizer_type]]


def main(argv: list[str] | None = None) -> int:
    plan, train_argv = planner_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = gpu_spec(
            plan.gpu,
            plan.gpu_memory_gb,
            plan.peak_tflops,
            plan.intra_node_bandwidth,
            plan.inter_node_bandwidth,
            plan.host_link_bandwidth,
        )
        cluster = Cluster(plan.num_gpus, plan.gpus_per_node, spec, plan.host_memory_gb)
        argv_model = tuple(without_layout_flags(train_argv))
        request = PlanRequest(argv_model, vocab_size_of(parse_args(list(argv_model))), cluster)
        result = search(request)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    gpus = f"{cluster.num_gpus} x {spec.name} ({spec.memory_gib:.0f} GiB, {cluster.gpus_per_node} per node)"
    print(f"planning on {gpus}, {request.precision}, global batch {request.global_batch_size}\n")
    print(render(result, plan.top))
    if not result.feasible:
        return 1
    if plan.write is not None:
        best = result.feasible[0].layout
        ds_path, flags_path = write_layout(plan.write, train_argv, best, request.precision)
        line = flags_path.read_text().strip()
        print(f"\nwrote {ds_path} and {flags_path} ({describe(best)}):\n  pretrain_gpt.py {line}")
        _check_written(shlex.split(line), cluster.num_gpus, request.vocab_size)
    return 0


def _check_written(flags: list[str], world_size: int, vocab_size: int) -> None:
    """Run the written flags through build_config, as pretrain_gpt.py will; what it still asks for (say
    --lr or --data-path, which the planner does not need) is printed rather than left for the launch."""
    try:
        build_config(parse_args(flags), world_size, vocab_size)
    except ConfigError as error:
        print(f"note: pretrain_gpt.py will still refuse these flags: {error}")
