"""A checkpoint of this toolkit, saved in any tensor/pipeline layout, as a model for generation on this
rank: merged over its ranks (``megatron.checkpointing.layout``), then split again over the tensor-parallel
ranks of the generation run (pipeline stages are not used for generation: every rank holds all layers).

The model's shape comes from the checkpoint; shape flags given on the command line must agree with it.
The tokenizer is the one the flags name, or else the one the training run named, when its files exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import torch

from megatron.checkpointing import reshape
from megatron.checkpointing.layout import FullModel, read_expert_weights, read_full_model
from megatron.config.arguments import build_parser
from megatron.config.build import world_size_from_env
from megatron.config.errors import ConfigError
from megatron.config.schema import MoEConfig
from megatron.data.tokenizer import Tokenizer, build_tokenizer
from megatron.model import GPTModel
from megatron.model.moe import MoEMLP
from megatron.parallel.context import ParallelContext, build_parallel_context
from megatron.text_generation.generator import ModelTextGenerator

logger = logging.getLogger("megatron")

# Shape flags a user may pass with the training command line; each must match the checkpoint.
_SHAPE_FLAGS = {
    "--num-layers": "num_layers",
    "--hidden-size": "hidden_size",
    "--num-attention-heads": "num_attention_heads",
    "--num-key-value-heads": "num_key_value_heads",
    "--ffn-hidden-size": "ffn_hidden_size",
    "--max-position-embeddings": "max_position_embeddings",
}
_TOKENIZER_FILE_FLAGS = ("vocab_file", "merge_file", "tokenizer_model", "vocab_size")


def check_shape_flags(args: argparse.Namespace, full: FullModel) -> None:
    defaults = build_parser().parse_args([])
    saved = full.config["model"]
    for flag, key in _SHAPE_FLAGS.items():
        given = getattr(args, key, None)
        if given is not None and given != getattr(defaults, key, None) and given != saved.get(key):
            raise ConfigError(
                f"{flag} {given}: the checkpoint in --load {args.load} has {key} {saved.get(key)}. Drop the "
                "flag (the model's shape is read from the checkpoint) or load the checkpoint it belongs to."
            )


def generation_tokenizer(args: argparse.Namespace, full: FullModel) -> Tokenizer:
    """The flags' tokenizer when any tokenizer file is given, else the training run's."""
    if any(getattr(args, name, None) for name in _TOKENIZER_FILE_FLAGS):
        source = vars(args)
    else:
        source = full.config.get("data", {})
        logger.info("tokenizer: %s, as the checkpoint's training run named it", source.get("tokenizer_type"))
    tokenizer = build_tokenizer(
        source.get("tokenizer_type") or "GPT2BPETokenizer",
        source.get("vocab_file"),
        source.get("merge_file"),
        source.get("tokenizer_model"),
        vocab_size=source.get("vocab_size"),
    )
    padded = full.config["model"]["padded_vocab_size"]
    if tokenizer.vocab_size > padded:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, more than the {padded} rows of the "
            "checkpoint's embedding: it is not the tokenizer the model was trained with. Pass that one's "
            "--tokenizer-type and files."
        )
    return tokenizer


def generation_context(tensor_size: int) -> ParallelContext:
    """The tensor-parallel groups of a generation run over the whole world (tensor parallelism only)."""
    if tensor_size == 1:
        return ParallelContext.single()
    return build_parallel_context(tensor_size)


def load_generation_model(
    full: FullModel, tokenizer: Tokenizer, context: ParallelContext, dtype: torch.dtype, device: torch.device
) -> GPTModel:
    """This rank's part of the checkpoint's model, in ``dtype`` on ``device``, in eval mode."""
    padded = reshape.target_padded_vocab_size(
        full.config, full.tensor_size, context.tensor_size, tokenizer.vocab_size
    )
    state = reshape.split_tensor_parallel(
        reshape.repad_vocab(full.state_dict, padded), context.tensor_size, full.config["model"]
    )[context.tensor_rank]
    moe = saved_moe(full)
    model = GPTModel(dataclasses.replace(full.model_config(), padded_vocab_size=padded), context, moe=moe)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"the checkpoint's weights do not fit a GPT model (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}): --load a pretrain_gpt.py checkpoint (BERT and T5 ones do not "
            "generate here)."
        )
    for module in model.modules():
        if isinstance(module, MoEMLP):
            module.set_deepspeed_parallelism()  # what DeepSpeed's engine would do: the expert groups
    return model.to(device=device, dtype=dtype).eval()


def read_generation_checkpoint(args: argparse.Namespace) -> tuple[FullModel, Tokenizer]:
    """Every check that needs no process group: ``--load``, the shape flags, the tokenizer, the layout."""
    if not args.load:
        raise ConfigError("--load is required: the checkpoint folder to generate from.")
    world_size = world_size_from_env()
    tensor_size = args.tensor_model_parallel_size
    if world_size != tensor_size:
        raise ConfigError(
            f"--tensor-model-parallel-size {tensor_size} with {world_size} process(es): generation runs "
            f"tensor parallelism only, one process per tensor-parallel rank. Launch {tensor_size} (torchrun "
            f"--nproc_per_node {tensor_size}) or set --tensor-model-parallel-size {world_size}."
        )
    full = read_full_model(args.load)
    check_shape_flags(args, full)
    reshape.check_target_layout(full.config["model"], tensor_size, 1)
    if saved_moe(full).enabled:
        if tensor_size > 1:
            raise ConfigError(
                f"--tensor-model-parallel-size {tensor_size}: the checkpoint in --load {args.load} has MoE "
                "layers, which run without tensor parallelism here. Generate with one process."
            )
        full.state_dict.update(read_expert_weights(args.load))
    return full, generation_tokenizer(args, full)


def saved_moe(full: FullModel) -> MoEConfig:
    """The checkpoint's MoE layers, all experts on this rank (expert-parallel size 1), dropping no token:
    capacity limits balance training batches, while a generated token must reach its experts whatever
    the batch (and one decoding step of a few tokens is below DeepSpeed's minimum capacity, which it
    asserts)."""
    saved = dict(full.config.get("moe") or {})
    if not saved:
        return MoEConfig()
    saved["experts_per_layer"] = tuple(saved.get("experts_per_layer", ()))
    return dataclasses.replace(
        MoEConfig(**saved), expert_parallel_size=1, token_dropping=False, min_capacity=0
    )


def build_text_generator(
    args: argparse.Namespace, full: FullModel, tokenizer: Tokenizer, device: torch.device
) -> ModelTextGenerator:
    """This rank's generator, once the process group is up (``--bf16``/``--fp16`` set the dtype)."""
    context = generation_context(args.tensor_model_parallel_size)
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    model = load_generation_model(full, tokenizer, context, dtype, device)
    logger.info(
        "generation model: %d layers, hidden %d, from iteration %d of %s (saved with tensor-parallel %d, "
        "pipeline-parallel %d), tensor-parallel size %d, %s",
        model.config.num_layers, model.config.hidden_size, full.iteration, args.load, full.tensor_size,
        full.pipeline_size, context.tensor_size, str(dtype).removeprefix("torch."),
    )  # fmt: skip
    return ModelTextGenerator(model, tokenizer, context.tensor_group)
