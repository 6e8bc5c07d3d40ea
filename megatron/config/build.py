"""Turning parsed flags and the ds_config into one validated, frozen :class:`Config`.

Every cross-flag rule and every derived value (data-parallel size, gradient accumulation, padded vocabulary,
warmup length, the reconciled ds_config) is reached from here, so a bad combination fails on every rank the
same way before any process group starts. The rules follow Megatron's ``validate_args`` so that
Megatron-DeepSpeed recipes behave as they did there; the larger groups of them have modules of their own
(``parallelism``, ``recompute``, ``schedules``, ``ds_config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os

from deepspeed.accelerator import get_accelerator

from megatron.config import ds_config, parallelism, schedules
from megatron.config.architecture import architecture_fields, swiglu_ffn_hidden_size
from megatron.config.compat import check_distributed_backend, log_compat_flags
from megatron.config.curriculum import curriculum_config, shortest_seq_length
from megatron.config.data import data_config
from megatron.config.errors import ConfigError, flag_dest, require_positive
from megatron.config.float8 import float8_config
from megatron.config.masked_lm import (
    check_masked_lm_features,
    check_masked_lm_parallel,
    masked_lm_config,
    resolve_sequence_flags,
)
from megatron.config.moe import check_moe_tokens, check_moe_zero_stage, moe_config
from megatron.config.monitoring import logging_config
from megatron.config.nonfinite import nonfinite_config
from megatron.config.offload import offload_optimizer
from megatron.config.recompute import recompute_config
from megatron.config.resume import checkpoint_config
from megatron.config.schema import (
    Config,
    DeepSpeedConfig,
    KernelConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    RecomputeConfig,
)
from megatron.parallel.launch_env import discover

_REQUIRED_FLAGS = (
    "--num-layers",
    "--hidden-size",
    "--num-attention-heads",
    "--seq-length",
    "--lr",
)


def world_size_from_env() -> int:
    """The number of processes the launcher started, whichever launcher it was (torchrun, the deepspeed
    launcher, ``srun``, ``mpirun``: ``megatron.parallel.launch_env``); 1 when run directly."""
    return discover(os.environ).world_size


def pad_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int) -> int:
    """Megatron's padding: round the vocabulary up to a multiple of ``divisible_by`` x T, so that each
    tensor-parallel shard of the embedding is the same size and a multiple of ``divisible_by``."""
    if vocab_size < 1:
        raise ConfigError(f"vocabulary size {vocab_size}: the tokenizer must have at least one token.")
    if divisible_by < 1:
        raise ConfigError(f"--make-vocab-size-divisible-by {divisible_by}: must be >= 1.")
    if tensor_parallel_size < 1:
        raise ConfigError(f"--tensor-model-parallel-size {tensor_parallel_size}: must be >= 1.")
    multiple = divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple


def build_config(
    args: argparse.Namespace,
    world_size: int,
    vocab_size: int,
    model_type: str = "gpt",
    needs_corpus: bool = True,
) -> Config:
    """Validate ``args`` (from ``parse_args``) with the ds_config it names and derive everything else.

    ``world_size`` is passed in (usually ``world_size_from_env()``) so this needs no process group, and
    ``vocab_size`` is the tokenizer's, before padding. ``model_type`` ("gpt", "bert", "t5") is the entry
    point's model family: BERT and T5 add their flags' settings (``Config.masked_lm``) and their rules.
    ``needs_corpus`` False: the run reads no pretraining corpus (finetuning reads its task files), so
    ``--data-path`` is not required.
    """
    args = resolve_sequence_flags(args, model_type)
    _check_required(args)
    ds_path = _ds_config_path(args)
    parallel = parallelism.parallel_config(args, world_size)
    model = _model_config(args, vocab_size, parallel.tensor_model_parallel_size, model_type)
    if model_type != "gpt":  # Megatron's default erf GeLU, which HF's MegatronBert computes too
        model = dataclasses.replace(model, openai_gelu=False)
    parallelism.check_model_split(model, parallel)
    masked_lm = masked_lm_config(args, model_type, model)
    check_masked_lm_parallel(masked_lm, parallel)
    recompute = recompute_config(args, model.num_layers, parallel.pipeline_model_parallel_size)
    duration = schedules.duration_config(args)
    lr_schedule = schedules.lr_schedule_config(args, duration)
    data = data_config(args, needs_corpus)
    checkpoint = checkpoint_config(args)
    moe = moe_config(args, model, parallel)

    ds = ds_config.load_ds_config(ds_path)
    ds, curriculum = curriculum_config(ds, model, parallel)
    micro, global_batch = ds_config.batch_sizes(ds, args, parallel.data_parallel_size)
    batch = schedules.batch_config(micro, global_batch, parallel, args.rampup_batch_size, duration)
    precision = ds_config.precision_config(ds, args)
    clip = ds_config.clip_grad(ds, args)
    stage = ds_config.zero_stage(ds, args)
    _check_fp16_stage(precision, stage, ds.path)
    cpu_adam, offload_section = offload_optimizer(ds, args, stage)
    optimizer = _optimizer_config(args, clip, cpu_adam)
    log_config = logging_config(args, optimizer)
    kernels = _kernel_config(args)
    log_compat_flags(args, kernels)
    _check_cuda_graph_layout(kernels, model_type, parallel, recompute, moe.enabled, stage)
    parallelism.check_pipeline_zero_stage(parallel, stage, ds.path)
    check_moe_zero_stage(moe, stage, ds.path)
    check_moe_tokens(moe, batch.micro_batch_size, shortest_seq_length(curriculum, model.seq_length))
    check_masked_lm_features(masked_lm, moe.enabled, curriculum is not None)
    fp8 = float8_config(args, model, parallel, batch.micro_batch_size, masked_lm, curriculum)
    _check_deterministic_features(kernels, fp8 is not None)
    reconciled = ds_config.reconcile_ds_config(
        ds,
        batch=batch,
        parallel=parallel,
        precision=precision,
        clip=clip,
        stage=stage,
        offload_optimizer=offload_section,
    )
    if args.universal_checkpoint:
        # DeepSpeed's own switch for loading the per-parameter files of a universal checkpoint.
        reconciled.setdefault("checkpoint", {})["load_universal"] = True
    return Config(
        model=model,
        parallel=parallel,
        batch=batch,
        duration=duration,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        precision=precision,
        data=data,
        logging=log_config,
        checkpoint=checkpoint,
        deepspeed=DeepSpeedConfig(config_path=ds.path, ds_config=reconciled, zero_stage=stage),
        recompute=recompute,
        kernels=kernels,
        moe=moe,
        curriculum=curriculum,
        masked_lm=masked_lm,
        fp8=fp8,
        seed=args.seed,
        nonfinite=nonfinite_config(args),
    )


def _kernel_config(args: argparse.Namespace) -> KernelConfig:
    if args.use_flash_attn and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "--use-flash-attn: the flash-attn package is not installed (it needs a CUDA build: "
            "pip install flash-attn --no-build-isolation); drop the flag to use torch SDPA, which runs "
            "flash kernels itself on recent GPUs."
        )
    if args.torch_compile_mode is not None and not args.torch_compile:
        raise ConfigError(
            f"--torch-compile-mode {args.torch_compile_mode} without --torch-compile: add --torch-compile, "
            "or drop --torch-compile-mode to run eager."
        )
    return KernelConfig(
        torch_compile=args.torch_compile,
        compile_mode=args.torch_compile_mode or "default",
        use_flash_attn=args.use_flash_attn,
        deterministic=args.deterministic_mode,
    )


def _check_deterministic_features(kernels: KernelConfig, fp8_enabled: bool) -> None:
    """``--deterministic-mode`` with the features that were not measured to repeat bit for bit on a GPU
    (README, "Reproducible runs"): refused, rather than promised."""
    if not kernels.deterministic:
        return
    unproven = [
        (kernels.use_flash_attn, "--use-flash-attn (the flash-attn package)"),
        (fp8_enabled, "--fp8-format (FP8 training)"),
    ]
    found = [name for applies, name in unproven if applies]
    if found:
        raise ConfigError(
            f"--deterministic-mode with {', '.join(found)}: not measured to repeat bit for bit here. Drop "
            f"{'it' if len(found) == 1 else 'them'}, or drop --deterministic-mode."
        )


def _check_cuda_graph_layout(
    kernels: KernelConfig,
    model_type: str,
    parallel: ParallelConfig,
    recompute: RecomputeConfig,
    moe_enabled: bool,
    stage: int,
) -> None:
    """CUDA graphs (reduce-overhead, max-autotune) only where the whole GPT compiles as one graph, the
    layout where they were run on a GPU. Elsewhere the model compiles in pieces around graph breaks, whose
    outputs a later replay overwrites while eager code still holds them (seen with tensor parallelism on two
    H200s), and DeepSpeed's pipeline engine keeps gradients across its schedule's replays."""
    if not kernels.uses_cuda_graphs:
        return
    reasons = [
        (model_type != "gpt", f"{model_type.upper()} compiles layer by layer"),
        (parallel.tensor_model_parallel_size > 1, "--tensor-model-parallel-size > 1"),
        (parallel.ds_sequence_parallel_size > 1, "--ds-sequence-parallel-size > 1"),
        (parallel.pipeline_model_parallel_size > 1, "--pipeline-model-parallel-size > 1"),
        (recompute.granularity is not None, f"--recompute-granularity {recompute.granularity}"),
        (moe_enabled, "--num-experts"),
        (stage == 3, "ZeRO stage 3"),
    ]
    found = [reason for applies, reason in reasons if applies]
    if found:
        raise ConfigError(
            f"--torch-compile-mode {kernels.compile_mode} replays CUDA graphs, which this toolkit runs only "
            f"where the whole GPT is one compiled graph; here {', '.join(found)} split(s) it. Use "
            "--torch-compile-mode default (or max-autotune-no-cudagraphs), or drop what splits the graph."
        )


def check_machine(config: Config) -> None:
    """The entry points' check of this machine against the config, before any process group starts:
    kernels for its precision, a process-group backend it can run, a --save folder it can write to."""
    check_device_precision(config)
    check_distributed_backend(config.parallel.distributed_backend)
    # Imported here: megatron.checkpointing itself imports this module (vocabulary padding).
    from megatron.checkpointing.save_guards import check_save_folder

    check_save_folder(config.checkpoint)


def check_device_precision(config: Config) -> None:
    """Whether this machine has kernels for the config's half precision.

    DeepSpeed refuses a half precision its accelerator lacks only once the engine is built (fp16 on a CPU
    whose PyTorch has no oneDNN fp16 kernels for it, bf16 on a GPU older than Ampere). Apart from
    :func:`build_config`, which checks a config for any machine.
    """
    precision, ds_path = config.precision, config.deepspeed.config_path
    accelerator = get_accelerator()
    device = accelerator.device_name()
    for enabled, name, supported, instead in (
        (precision.fp16, "fp16", accelerator.is_fp16_supported, "--bf16"),
        (precision.bf16, "bf16", accelerator.is_bf16_supported, "--fp16 (with ZeRO stage 1 or more)"),
    ):
        if enabled and not supported():
            hint = " (on a CPU, oneDNN needs AVX512-FP16 or AMX for it)" if device == "cpu" else ""
            raise ConfigError(
                f"--{name} (or {name}.enabled in {ds_path}): PyTorch has no {name} kernels for this {device}"
                f"{hint}, so DeepSpeed refuses {name} here. Use {instead}, or neither flag for fp32, or a "
                "device that has them."
            )


def _check_fp16_stage(precision: PrecisionConfig, stage: int, ds_path: str) -> None:
    """DeepSpeed 0.19's stage-0 fp16 wrapper leaves the loss unscaled around an optimizer built outside
    DeepSpeed (seen on CPU and on an H100: the scale never moves, no step is skipped, the loss stays flat),
    while its ZeRO optimizers scale correctly; so fp16 runs need ZeRO stage 1 or more."""
    if precision.fp16 and stage == 0:
        raise ConfigError(
            f"--fp16 with ZeRO stage 0 (--zero-stage / zero_optimization.stage in {ds_path}): DeepSpeed's "
            "stage-0 fp16 path does not apply dynamic loss scaling to this toolkit's optimizer. Use "
            "--zero-stage 1 (free on one GPU, and it shards optimizer states on several), or --bf16."
        )


def _check_required(args: argparse.Namespace) -> None:
    missing = [flag for flag in _REQUIRED_FLAGS if getattr(args, flag_dest(flag)) is None]
    if missing:
        raise ConfigError(f"missing required flag(s): {', '.join(missing)}. Add them to the command line.")


def _model_config(
    args: argparse.Namespace, vocab_size: int, tensor_parallel_size: int, model_type: str
) -> ModelConfig:
    variants = architecture_fields(args, model_type)
    ffn_hidden_size = args.ffn_hidden_size
    if ffn_hidden_size is None:
        ffn_hidden_size = swiglu_ffn_hidden_size(args.hidden_size) if args.swiglu else 4 * args.hidden_size
    max_positions = args.max_position_embeddings
    if max_positions is None:
        max_positions = args.seq_length
    for flag, value in (
        ("--num-layers", args.num_layers),
        ("--hidden-size", args.hidden_size),
        ("--num-attention-heads", args.num_attention_heads),
        ("--ffn-hidden-size", ffn_hidden_size),
        ("--seq-length", args.seq_length),
        ("--max-position-embeddings", max_positions),
        ("--init-method-std", args.init_method_std),
        ("--layernorm-epsilon", args.layernorm_epsilon),
        ("--kv-channels", args.kv_channels),
    ):
        require_positive(flag, value)
    if args.kv_channels is None and args.hidden_size % args.num_attention_heads:
        raise ConfigError(
            f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
            f"{args.num_attention_heads}: each head gets hidden-size / heads channels. Choose a head count "
            "that divides the hidden size."
        )
    if max_positions < args.seq_length:
        raise ConfigError(
            f"--max-position-embeddings {max_positions} is smaller than --seq-length {args.seq_length}; "
            "raise it (or leave it out to use --seq-length)."
        )
    for flag, value in (
        ("--attention-dropout", args.attention_dropout),
        ("--hidden-dropout", args.hidden_dropout),
    ):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{flag} {value}: a dropout probability must be in [0, 1).")
    model = ModelConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=ffn_hidden_size,
        seq_length=args.seq_length,
        max_position_embeddings=max_positions,
        padded_vocab_size=pad_vocab_size(vocab_size, args.make_vocab_size_divisible_by, tensor_parallel_size),
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        init_method_std=args.init_method_std,
        attention_dropout=args.attention_dropout,
        hidden_dropout=args.hidden_dropout,
        layernorm_epsilon=args.layernorm_epsilon,
        kv_channels=args.kv_channels,
        embedding_weights_in_fp32=args.embedding_weights_in_fp32,
        **variants,
    )
    if model.rotary_position_embeddings and model.rotary_dim % 2:
        raise ConfigError(
            f"--rotary-percent {model.rotary_percent} of {model.head_dim} channels per head leaves "
            f"{model.rotary_dim}: rotary embeddings turn channels in pairs, so that must be even."
        )
    return model


def _optimizer_config(args: argparse.Namespace, clip: float, cpu_adam: bool) -> OptimizerConfig:
    if args.weight_decay < 0:
        raise ConfigError(f"--weight-decay {args.weight_decay}: must be >= 0.")
    for flag, value in (("--adam-beta1", args.adam_beta1), ("--adam-beta2", args.adam_beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{flag} {value}: must be in [0, 1).")
    require_positive("--adam-eps", args.adam_eps)
    if args.sgd_momentum < 0:
        raise ConfigError(f"--sgd-momentum {args.sgd_momentum}: must be >= 0.")
    return OptimizerConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip_grad=clip,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        sgd_momentum=args.sgd_momentum,
        cpu_adam=cpu_adam,
    )


def _ds_config_path(args: argparse.Namespace) -> str:
    if not args.deepspeed:
        raise ConfigError(
            "--deepspeed is required: this toolkit always trains through the DeepSpeed engine. Add "
            "--deepspeed and --deepspeed_config <ds_config.json>."
        )
    if not args.deepspeed_config:
        raise ConfigError(
            "--deepspeed was given without --deepspeed_config; add --deepspeed_config <ds_config.json>."
        )
    return args.deepspeed_config
