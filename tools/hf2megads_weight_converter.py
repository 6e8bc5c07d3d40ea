"""Megatron-DeepSpeed's ``tools/hf2megads_weight_converter.py`` command line, as users' LLaMA fine-tuning
scripts launch it (``deepspeed tools/hf2megads_weight_converter.py --hf-ckpt-dir HF --save CKPT <the
training flags>``), on top of ``tools/convert_checkpoint_to_hf.py``.

HF -> checkpoint: ``--hf-ckpt-dir`` is read and written to ``--save`` with the training flags'
``--tensor-model-parallel-size`` and ``--pipeline-model-parallel-size``; the model flags must describe the
HF model (they are checked against its config.json, as Megatron-DeepSpeed requires them to match).
``--to-hf-ckpt``: checkpoint ``--load`` -> HF folder ``--save``. ``--load-mode`` and ``--hf-ckpt-num-shards``
are accepted (safetensors and .bin are both read; one file is written). Under a launcher rank 0 converts.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.config.errors import ConfigError  # noqa: E402
from tools.convert_checkpoint_to_hf import main as convert  # noqa: E402

logger = logging.getLogger("tools.hf2megads_weight_converter")

# The model flags the import writes and the training flags must repeat: our field, Megatron's flag.
CHECKED_FIELDS = {
    "num_layers": "--num-layers",
    "hidden_size": "--hidden-size",
    "num_attention_heads": "--num-attention-heads",
    "ffn_hidden_size": "--ffn-hidden-size",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Its own flags and, of the training flags around them, those the conversion needs; the others
    (data, optimizer, schedule ...) belong to the fine-tuning run and are left alone."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--hf-ckpt-dir", required=True, help="the HuggingFace model folder")
    parser.add_argument("--to-hf-ckpt", action="store_true", help="checkpoint --load -> HF folder --save")
    parser.add_argument("--load-mode", choices=("auto", "safetensor", "torchbin"), default="auto")
    parser.add_argument("--hf-ckpt-num-shards", type=int, default=None, help="accepted; one file is written")
    parser.add_argument("--load", help="--to-hf-ckpt: the checkpoint folder")
    parser.add_argument("--save", help="the output: a checkpoint folder, or with --to-hf-ckpt an HF folder")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    for flag in CHECKED_FIELDS.values():
        parser.add_argument(flag, type=int, default=None)
    return parser.parse_known_args(argv)[0]


def main(argv: list[str] | None = None) -> list[str]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    if args.to_hf_ckpt:
        if args.load is None or args.save is None:
            raise ConfigError(
                "--to-hf-ckpt converts the checkpoint --load into the HF folder --save; give both."
            )
        written = convert(["--load-dir", args.load, "--save-dir", args.save])
        copy_tokenizer_files(args.hf_ckpt_dir, args.save)
        return written
    if args.save is None:
        raise ConfigError(f"--hf-ckpt-dir {args.hf_ckpt_dir}: give --save, the folder of the new checkpoint.")
    check_model_flags(args, args.hf_ckpt_dir)
    return convert([
        "--import-hf", args.hf_ckpt_dir, "--save-dir", args.save,
        "--target-tensor-parallel-size", str(args.tensor_model_parallel_size),
        "--target-pipeline-parallel-size", str(args.pipeline_model_parallel_size),
        "--make-vocab-size-divisible-by", str(args.make_vocab_size_divisible_by),
    ])  # fmt: skip


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer_files(hf_dir: str, save: str) -> None:
    """The original HF folder's tokenizer, where the export wrote none (a SentencePiece run's)."""
    if any(os.path.exists(os.path.join(save, name)) for name in HF_TOKENIZER_FILES):
        return
    for name in HF_TOKENIZER_FILES:
        if os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(save, name))
            logger.info("copied %s from --hf-ckpt-dir %s", name, hf_dir)


def check_model_flags(args: argparse.Namespace, hf_dir: str) -> None:
    """The training flags given must describe the HF model (Megatron-DeepSpeed maps the weights by them),
    checked before anything is written."""
    import transformers

    from megatron.checkpointing import hf_gpt2, hf_llama

    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    if hf_config.model_type in hf_llama.LLAMA_TYPES:
        model = hf_llama.model_config_from_llama(hf_config)
    else:
        model = hf_gpt2.model_config_from_gpt2(hf_config)
    wrong = [
        f"{flag} {getattr(args, field)} (the HF model has {getattr(model, field)})"
        for field, flag in CHECKED_FIELDS.items()
        if getattr(args, field) is not None and getattr(args, field) != getattr(model, field)
    ]
    if wrong:
        raise ConfigError(
            f"the training flags do not describe the model in --hf-ckpt-dir {hf_dir}: {'; '.join(wrong)}. "
            "Give the HF model's sizes."
        )


if __name__ == "__main__":
    from megatron.training.entry import run_cli

    sys.exit(run_cli(main))
