"""Convert a training checkpoint to another tensor/pipeline-parallel layout (Megatron's flag names).

    python tools/checkpoint_util.py --load-dir checkpoints/gpt --save-dir checkpoints/gpt_t1p2 \\
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 2

Reads the checkpoint that ``--load-dir/latest`` names, merges its weights over the saved tensor and
pipeline ranks and writes them split for the target layout, with the iteration, consumed samples and LR
schedule, so that ``pretrain_gpt.py --load SAVE_DIR`` with the target sizes continues training from there.
The optimizer state is not converted (it starts afresh), nor the RNG state. ``--model-type GPT`` and
``--loader/--saver megatron`` are accepted as in Megatron's tool; they are the only choices here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.checkpointing.layout import read_client_state, read_full_model, write_model_checkpoint  # noqa: E402
from megatron.checkpointing.reshape import (  # noqa: E402
    TARGET_P_FLAG,
    TARGET_T_FLAG,
    TRUE_VOCAB_FLAG,
    check_target_layout,
)
from megatron.checkpointing.universal import convert_to_universal  # noqa: E402
from megatron.config.errors import ConfigError, flag_dest  # noqa: E402

logger = logging.getLogger("tools.checkpoint_util")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True, help="checkpoint folder written by --save")
    parser.add_argument("--save-dir", required=True, help="new folder for the converted checkpoint")
    parser.add_argument(TARGET_T_FLAG, type=int, default=1, help="tensor-parallel size to convert to")
    parser.add_argument(TARGET_P_FLAG, type=int, default=1, help="pipeline-parallel size to convert to")
    parser.add_argument(
        TRUE_VOCAB_FLAG,
        type=int,
        default=None,
        help="the tokenizer's vocabulary size; needed only when the target tensor-parallel size changes "
        "the vocabulary padding and the training run's tokenizer files are not readable",
    )
    parser.add_argument(
        "--universal",
        action="store_true",
        help="write DeepSpeed's universal checkpoint instead: weights and ZeRO optimizer state, loadable "
        "with any tensor-parallel and data-parallel size by a run with --universal-checkpoint; "
        "--target-pipeline-parallel-size only says whether that run is pipelined",
    )
    parser.add_argument("--model-type", default="GPT", choices=["GPT"], help="accepted for Megatron's habits")
    parser.add_argument("--loader", default="megatron", choices=["megatron"], help="accepted, as in Megatron")
    parser.add_argument("--saver", default="megatron", choices=["megatron"], help="accepted, as in Megatron")
    args = parser.parse_args(argv)
    for flag in (TARGET_T_FLAG, TARGET_P_FLAG, TRUE_VOCAB_FLAG):
        value = getattr(args, flag_dest(flag))
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1.")
    if not os.path.isdir(args.load_dir):
        raise ConfigError(f"--load-dir {args.load_dir} does not exist; pass the folder training saved to.")
    if os.path.abspath(args.save_dir) == os.path.abspath(args.load_dir):
        raise ConfigError(
            f"--save-dir {args.save_dir} is --load-dir; write the converted checkpoint to a new folder."
        )
    return args


def main(argv: list[str] | None = None) -> str:
    """Convert; returns the written tag folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    target_tensor, target_pipeline = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
    if args.universal:
        folder = convert_to_universal(args.load_dir, args.save_dir, target_pipeline)
        logger.info(
            "wrote the universal checkpoint %s; train on with --load %s --universal-checkpoint, any "
            "--tensor-model-parallel-size",
            folder,
            args.save_dir,
        )
        return folder
    # The cheap checks first: the whole model is read only for a conversion that can succeed.
    config = read_client_state(args.load_dir)["config"]
    check_target_layout(config["model"], target_tensor, target_pipeline)
    full = read_full_model(args.load_dir)
    logger.info(
        "read %s: iteration %d, tensor-parallel %d, pipeline-parallel %d, %d tensors",
        args.load_dir,
        full.iteration,
        full.tensor_size,
        full.pipeline_size,
        len(full.state_dict),
    )
    folder = write_model_checkpoint(
        args.save_dir, full, target_tensor, target_pipeline, true_vocab_size=args.true_vocab_size
    )
    logger.info(
        "converted to tensor-parallel %d, pipeline-parallel %d in %s; train on with --load %s "
        "--tensor-model-parallel-size %d --pipeline-model-parallel-size %d",
        target_tensor,
        target_pipeline,
        folder,
        args.save_dir,
        target_tensor,
        target_pipeline,
    )
    return folder


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # the message says what to fix; a traceback would only bury it
        sys.exit(f"checkpoint_util.py: error: {error}")
