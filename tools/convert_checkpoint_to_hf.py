"""Convert between training checkpoints and HuggingFace GPT-2 (``GPT2LMHeadModel``) or LLaMA
(``LlamaForCausalLM``) folders; a checkpoint with rotary positions, SwiGLU or RMSNorm exports as LLaMA.

Export a checkpoint, saved in any tensor/pipeline layout, to a folder ``from_pretrained`` loads::

    python tools/convert_checkpoint_to_hf.py --load-dir checkpoints/gpt --save-dir hf/gpt [--vocab-size N]

It holds ``config.json``, ``model.safetensors`` and, when the training run's GPT2BPETokenizer (or
HFTokenizer) files still exist, the tokenizer (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``).
The padding rows of the vocabulary are cut at the tokenizer's size: ``--vocab-size``, or else the size of
that tokenizer; without either the padded vocabulary is kept. ``--megatron-lm-out FILE`` (with or without
``--save-dir``) also writes Megatron-LM's single ``model_optim_rng.pt``, the input of HuggingFace's
``convert_megatron_gpt2_checkpoint.py``.

A BERT checkpoint (``pretrain_bert.py``) exports the same way to ``MegatronBertForPreTraining`` (or
``MegatronBertForMaskedLM`` without the binary head), with its ``vocab.txt``; its ``--megatron-lm-out``
file is the input of HuggingFace's ``convert_megatron_bert_checkpoint.py``. T5 has no HuggingFace
equivalent.

Import a GPT-2 folder as a checkpoint that ``pretrain_gpt.py --load CKPT --finetune`` starts from::

    python tools/convert_checkpoint_to_hf.py --import-hf hf/gpt2 --save-dir checkpoints/gpt2 \\
        [--target-tensor-parallel-size T --target-pipeline-parallel-size P]

The imported checkpoint has iteration 0 and no optimizer state; train it with the model flags its config
records (the log line says them) and ``--finetune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable, as `python -m tools...` does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron.checkpointing import reshape  # noqa: E402
from megatron.checkpointing.layout import FullModel, read_full_model, write_model_checkpoint  # noqa: E402
from megatron.checkpointing.megatron_lm import masked_lm_args, write_megatron_lm  # noqa: E402
from megatron.config.architecture import model_flags  # noqa: E402
from megatron.config.build import pad_vocab_size  # noqa: E402
from megatron.config.errors import ConfigError, flag_dest  # noqa: E402
from megatron.config.schema import ParallelConfig  # noqa: E402

logger = logging.getLogger("tools.convert_checkpoint_to_hf")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
GPT2_EOD_TOKEN = "<|endoftext|>"
LLAMA_TYPES = ("llama", "mistral")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--load-dir", help="export: checkpoint folder written by --save")
    source.add_argument("--import-hf", help="import: folder of a GPT-2 model saved by save_pretrained")
    parser.add_argument(
        "--save-dir",
        help="export: new folder for the HF model; import: new folder for the checkpoint",
    )
    parser.add_argument(
        "--megatron-lm-out", help="also write the model as Megatron-LM's model_optim_rng.pt at this path"
    )
    parser.add_argument("--tag", help="export: the checkpoint to read (default: the one 'latest' names)")
    parser.add_argument(
        "--vocab-size",
        "--true-vocab-size",
        dest="vocab_size",
        type=int,
        help="export: the tokenizer's vocabulary size (padding rows past it are cut); default: the size of "
        "the tokenizer the training run names, when its files exist",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="export: cast the weights (default: as saved)"
    )
    parser.add_argument(
        reshape.TARGET_T_FLAG, type=int, help="import: tensor-parallel size of the checkpoint (default 1)"
    )
    parser.add_argument(
        reshape.TARGET_P_FLAG, type=int, help="import: pipeline-parallel size of the checkpoint (default 1)"
    )
    parser.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        help="import: pad the vocabulary to a multiple of this (x T), as training does (default 128)",
    )
    args = parser.parse_args(argv)
    _check_args(args)
    return args


EXPORT_ONLY = ("--tag", "--vocab-size", "--dtype")
IMPORT_ONLY = (reshape.TARGET_T_FLAG, reshape.TARGET_P_FLAG, "--make-vocab-size-divisible-by")


def _check_args(args: argparse.Namespace) -> None:
    exporting = args.load_dir is not None
    wrong = [flag for flag in IMPORT_ONLY if exporting and getattr(args, flag_dest(flag)) is not None]
    wrong += [flag for flag in EXPORT_ONLY if not exporting and getattr(args, flag_dest(flag)) is not None]
    if exporting:
        source = f"--load-dir {args.load_dir}"
        if not os.path.isdir(args.load_dir):
            raise ConfigError(f"{source} does not exist; pass the folder training saved to (--save).")
    else:
        source = f"--import-hf {args.import_hf}"
        if not os.path.isfile(os.path.join(args.import_hf, "config.json")):
            raise ConfigError(
                f"{source} has no config.json; pass a folder written by a GPT-2 model's save_pretrained."
            )
    if wrong:
        direction = "exporting (--load-dir)" if args.load_dir is not None else "importing (--import-hf)"
        raise ConfigError(f"{', '.join(wrong)}: not used when {direction}; leave it out.")
    if args.save_dir is None and args.megatron_lm_out is None:
        raise ConfigError(f"{source}: nothing to write; pass --save-dir, --megatron-lm-out or both.")
    if args.save_dir is not None and os.path.isdir(args.save_dir) and os.listdir(args.save_dir):
        raise ConfigError(
            f"--save-dir {args.save_dir} exists and is not empty; pass a new or empty folder, so that files "
            "of two models never mix."
        )
    for flag in ("--vocab-size", *IMPORT_ONLY):
        value = getattr(args, flag_dest(flag))
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1.")
    if not exporting:
        for flag, default in zip(IMPORT_ONLY, (1, 1, 128)):
            if getattr(args, flag_dest(flag)) is None:
                setattr(args, flag_dest(flag), default)


def export(args: argparse.Namespace) -> list[str]:
    from megatron.checkpointing import hf_gpt2, hf_llama  # need transformers

    full = read_full_model(args.load_dir, args.tag)
    model_config = full.model_config()
    data = full.config.get("data", {})
    masked_lm = full.config.get("masked_lm") or {}
    if masked_lm.get("model_type") == "t5" and args.save_dir is not None:
        raise ConfigError(
            f"--load-dir {args.load_dir} holds a T5 (pretrain_t5.py), which has no HuggingFace equivalent: "
            "transformers' T5 uses relative position buckets and bias-free RMS norms, Megatron's T5 learned "
            "positions and LayerNorm. Use --megatron-lm-out alone to write Megatron-LM's layout."
        )
    tokenizer = _training_tokenizer(data)
    vocab_size = args.vocab_size or (tokenizer.vocab_size if tokenizer else None)
    state_dict = full.state_dict
    if args.dtype:
        state_dict = {name: tensor.to(DTYPES[args.dtype]) for name, tensor in state_dict.items()}
    logger.info(
        "read %s: iteration %d, tensor-parallel %d, pipeline-parallel %d, vocabulary %d rows (tokenizer: %s)",
        args.load_dir,
        full.iteration,
        full.tensor_size,
        full.pipeline_size,
        model_config.padded_vocab_size,
        vocab_size or "unknown, keeping the padding rows",
    )
    written = []
    if args.save_dir is not None and masked_lm.get("model_type") == "bert":
        from megatron.checkpointing import hf_bert

        saved = hf_bert.save_pretrained(args.save_dir, state_dict, model_config, vocab_size, tokenizer)
        written.append(saved)
    elif args.save_dir is not None:
        eod = tokenizer.eod if tokenizer else None
        if hf_llama.is_llama_style(model_config):
            hf_config, hf_state = hf_llama.to_llama(state_dict, model_config, vocab_size, eos_token_id=eod)
        else:
            hf_config, hf_state = hf_gpt2.to_gpt2(state_dict, model_config, vocab_size, eod)
        written.append(write_hf_folder(args.save_dir, hf_config, hf_state))
        if tokenizer is not None:
            write_tokenizer_files(args.save_dir, data, model_config.max_position_embeddings)
        else:
            logger.warning("the training run's tokenizer files are not readable: no tokenizer files written")
    if args.megatron_lm_out is not None:
        if vocab_size is not None:  # Megatron-LM at tensor-parallel size 1 pads to a multiple of 128 only
            padded = pad_vocab_size(vocab_size, model_config.make_vocab_size_divisible_by, 1)
            state_dict = reshape.repad_vocab(state_dict, padded)
            model_config = dataclasses.replace(model_config, padded_vocab_size=padded)
        written.append(
            write_megatron_lm(
                args.megatron_lm_out,
                state_dict,
                model_config,
                data,
                full.iteration,
                masked_lm_args(masked_lm),
            )
        )
        logger.info("wrote Megatron-LM checkpoint %s", args.megatron_lm_out)
    return written


def write_hf_folder(save_dir: str, hf_config, hf_state: dict[str, torch.Tensor]) -> str:
    """``config.json`` and ``model.safetensors`` as ``save_pretrained`` writes them: a tied
    ``lm_head.weight`` is left out (``from_pretrained`` ties it back)."""
    from safetensors.torch import save_file

    from megatron.checkpointing.hf_gpt2 import HF_LM_HEAD

    os.makedirs(save_dir, exist_ok=True)
    hf_config.dtype = next(iter(hf_state.values())).dtype
    hf_config.save_pretrained(save_dir)
    tied = hf_config.tie_word_embeddings
    tensors = {
        name: tensor.contiguous() for name, tensor in hf_state.items() if not (tied and name == HF_LM_HEAD)
    }
    save_file(tensors, os.path.join(save_dir, "model.safetensors"), metadata={"format": "pt"})
    logger.info(
        "wrote %s: %s, %d layers, hidden %d, vocabulary %d, %s",
        save_dir,
        hf_config.architectures[0],
        hf_config.num_hidden_layers,
        hf_config.hidden_size,
        hf_config.vocab_size,
        hf_config.dtype,
    )
    return save_dir


def _training_tokenizer(data: dict):
    """The training run's tokenizer when its files still exist, else None."""
    from megatron.data.tokenizer import build_tokenizer

    files = [data.get("vocab_file"), data.get("merge_file"), data.get("tokenizer_model")]
    if not any(files) or not all(os.path.exists(path) for path in files if path):
        return None
    try:
        return build_tokenizer(
            data.get("tokenizer_type", "GPT2BPETokenizer"),
            data.get("vocab_file"),
            data.get("merge_file"),
            data.get("tokenizer_model"),
        )
    except ConfigError as error:
        logger.warning("cannot rebuild the training run's tokenizer (%s)", error)
        return None


def write_tokenizer_files(save_dir: str, data: dict, max_length: int) -> None:
    """The training tokenizer's files, with a ``tokenizer_config.json`` that makes ``AutoTokenizer`` build
    the same tokenizer (GPT-2's: no prefix space, ``<|endoftext|>`` as bos, eos and unk)."""
    tokenizer_type = data.get("tokenizer_type", "GPT2BPETokenizer")
    if tokenizer_type not in ("GPT2BPETokenizer", "HFTokenizer"):
        # transformers' conversion of a SentencePiece .model does not always give its ids (runs of leading
        # spaces differ), and a tokenizer that encodes differently is worse than none.
        logger.warning(
            "no tokenizer files written for --tokenizer-type %s; give the HF folder a tokenizer that encodes "
            "as the training run did",
            tokenizer_type,
        )
        return
    if tokenizer_type == "GPT2BPETokenizer":
        shutil.copyfile(data["vocab_file"], os.path.join(save_dir, "vocab.json"))
        shutil.copyfile(data["merge_file"], os.path.join(save_dir, "merges.txt"))
        tokenizer_config = {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": max_length,
            "bos_token": GPT2_EOD_TOKEN,
            "eos_token": GPT2_EOD_TOKEN,
            "unk_token": GPT2_EOD_TOKEN,
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
        }
    else:  # HFTokenizer: tokenizer.json, and its tokenizer_config.json when it has one
        path = data["tokenizer_model"]
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        shutil.copyfile(path if os.path.isfile(path) else os.path.join(path, "tokenizer.json"),
                        os.path.join(save_dir, "tokenizer.json"))  # fmt: skip
        own_config = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(own_config):
            shutil.copyfile(own_config, os.path.join(save_dir, "tokenizer_config.json"))
            return
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length}
    with open(os.path.join(save_dir, "tokenizer_config.json"), "w") as handle:
        json.dump(tokenizer_config, handle, indent=2)
    logger.info("wrote the %s tokenizer files to %s", data.get("tokenizer_type"), save_dir)


def read_hf_folder(folder: str):
    """(GPT2Config, state dict) of a saved GPT-2 model, in the dtype it was saved in."""
    import transformers

    with open(os.path.join(folder, "config.json")) as handle:
        try:
            model_type = json.load(handle).get("model_type")
        except json.JSONDecodeError as error:
            raise ConfigError(f"--import-hf {folder}: config.json is not valid JSON ({error}).") from error
    if model_type not in ("gpt2", *LLAMA_TYPES):
        raise ConfigError(
            f"--import-hf {folder}: config.json says model_type {model_type!r}; GPT-2 (GPT2LMHeadModel) and "
            f"LLaMA-style models ({', '.join(LLAMA_TYPES)}) convert to this toolkit's GPT."
        )
    hf_config = transformers.AutoConfig.from_pretrained(folder)
    return hf_config, _read_hf_weights(folder)


def _read_hf_weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in HF_WEIGHT_FILES:
        index = os.path.join(folder, f"{name}.index.json")
        if os.path.isfile(index):  # sharded: the index maps each tensor to its file
            with open(index) as handle:
                files = sorted(set(json.load(handle)["weight_map"].values()))
        elif os.path.isfile(os.path.join(folder, name)):
            files = [name]
        else:
            continue
        state = {}
        for file in files:
            path = os.path.join(folder, file)
            if file.endswith(".safetensors"):
                state.update(load_file(path))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        return state
    raise ConfigError(
        f"--import-hf {folder} has none of {', '.join(HF_WEIGHT_FILES)} (or their .index.json); pass a "
        "folder written by save_pretrained."
    )


def import_hf(args: argparse.Namespace) -> list[str]:
    from megatron.checkpointing import hf_gpt2, hf_llama  # need transformers

    hf_config, hf_state = read_hf_folder(args.import_hf)
    convert = hf_llama.from_llama if hf_config.model_type in LLAMA_TYPES else hf_gpt2.from_gpt2
    try:
        state_dict, model_config = convert(hf_state, hf_config, args.make_vocab_size_divisible_by)
    except ConfigError as error:
        raise ConfigError(f"--import-hf {args.import_hf}: {error}") from error
    data = _hf_tokenizer_data(args.import_hf)
    logger.info(
        "read %s: %s, %d layers, hidden %d, %d heads, ffn %d, vocabulary %d (padded to %d)",
        args.import_hf,
        hf_config.model_type,
        model_config.num_layers,
        model_config.hidden_size,
        model_config.num_attention_heads,
        model_config.ffn_hidden_size,
        hf_config.vocab_size,
        model_config.padded_vocab_size,
    )
    written = []
    if args.save_dir is not None:
        full = FullModel(
            state_dict=state_dict,
            config={
                "model": dataclasses.asdict(model_config),
                "parallel": dataclasses.asdict(ParallelConfig()),
                "data": data,
            },
            iteration=0,
            consumed_train_samples=0,
            consumed_valid_samples=0,
            tensor_size=1,
            pipeline_size=1,
        )
        tensor, pipeline = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
        written.append(write_model_checkpoint(args.save_dir, full, tensor, pipeline, hf_config.vocab_size))
        tokenizer_flags = (
            f"--vocab-file {data['vocab_file']} --merge-file {data['merge_file']}"
            if data.get("vocab_file")
            else f"--tokenizer-type HFTokenizer --tokenizer-model {data['tokenizer_model']}"
            if data.get("tokenizer_model")
            else "(tokenizer flags: no tokenizer files found in the HF folder)"
        )
        logger.info(
            "train from it with --load %s --finetune %s --tensor-model-parallel-size %d "
            "--pipeline-model-parallel-size %d %s",
            args.save_dir,
            " ".join(model_flags(model_config)),
            tensor,
            pipeline,
            tokenizer_flags,
        )
    if args.megatron_lm_out is not None:
        written.append(write_megatron_lm(args.megatron_lm_out, state_dict, model_config, data))
        logger.info("wrote Megatron-LM checkpoint %s", args.megatron_lm_out)
    return written


def _hf_tokenizer_data(folder: str) -> dict:
    """The data config a run on this model would use: the HF folder's GPT-2 or tokenizers files, if any."""
    folder = os.path.abspath(folder)
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if os.path.isfile(vocab) and os.path.isfile(merges):
        return {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": vocab, "merge_file": merges}
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return {"tokenizer_type": "HFTokenizer", "tokenizer_model": folder}
    return {"tokenizer_type": "GPT2BPETokenizer"}


def main(argv: list[str] | None = None) -> list[str]:
    """Convert; returns the folders and files written."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "converting to or from HuggingFace needs the transformers package: pip install transformers"
        ) from error
    return export(args) if args.load_dir is not None else import_hf(args)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # the message says what to fix; a traceback would only bury it
        sys.exit(f"convert_checkpoint_to_hf.py: error: {error}")
