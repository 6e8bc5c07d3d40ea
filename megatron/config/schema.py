"""The typed, frozen run configuration.

Every component (model, data, training, checkpointing) receives the part of this object it needs, passed
explicitly. It is built once by ``megatron.config.build.build_config`` from the command line and the ds_config
JSON, validated there, before any process group exists. Field names follow the Megatron-DeepSpeed flag names
(``--hidden-size`` -> ``hidden_size``) so a user can map one to the other without a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ModelConfig:
    """Shape and regularisation of the transformer. ``padded_vocab_size`` is derived from the tokenizer."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    seq_length: int
    max_position_embeddings: int
    padded_vocab_size: int
    make_vocab_size_divisible_by: int = 128
    init_method_std: float = 0.02
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    layernorm_epsilon: float = 1e-5
    # Channels per attention head (Megatron's --kv-channels); None: hidden_size / num_attention_heads.
    kv_channels: int | None = None
    # The MLP's GeLU: the tanh approximation (Megatron's --openai-gelu; our GPT) or the exact erf form
    # (Megatron's default, used by BERT and T5).
    openai_gelu: bool = True
    # LLaMA-style variants (megatron/config/architecture.py has their flags). Positions: a learned table,
    # rotary embeddings on query and key (the first rotary_percent of each head's channels), both, or none.
    learned_position_embeddings: bool = True
    rotary_position_embeddings: bool = False
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    swiglu: bool = False  # gated SiLU MLP, its first projection [gate; up] of 2 x ffn_hidden_size rows
    normalization: Literal["layernorm", "rmsnorm"] = "layernorm"
    add_bias_linear: bool = True
    untie_embeddings_and_output_weights: bool = False
    # Grouped-query attention; None: one key/value head per query head.
    num_key_value_heads: int | None = None
    # Megatron's --embedding-weights-in-fp32: the word-embedding lookup (and so its weight gradient) runs
    # on an fp32 copy of the bf16/fp16 table, its output cast back.
    embedding_weights_in_fp32: bool = False

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Channels of each head that rotate (0 without rotary embeddings)."""
        return int(self.head_dim * self.rotary_percent) if self.rotary_position_embeddings else 0


DistributedBackend = Literal["nccl", "gloo", "ccl"]


@dataclass(frozen=True)
class ParallelConfig:
    """Process layout. ``world_size`` is read from the launcher's environment (WORLD_SIZE) before any group
    starts, so divisibility can be checked up front. Ranks are ordered as in Megatron: tensor-parallel ranks
    are neighbours, then DeepSpeed-Ulysses sequence ranks, then data-parallel, then pipeline stages."""

    world_size: int = 1
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # False for --no-pipeline-parallel: the plain DeepSpeed engine, not the pipeline engine (P must be 1).
    use_pipeline_engine: bool = True
    # Megatron sequence parallelism: LayerNorm/dropout regions split along the sequence over the T ranks.
    sequence_parallel: bool = False
    # DeepSpeed-Ulysses: the sequence split over this many ranks, attention through all-to-all.
    ds_sequence_parallel_size: int = 1
    pipeline_partition_method: str = "parameters"
    # --distributed-backend: the process groups' backend; None: the accelerator's (nccl on GPUs, gloo on CPU).
    distributed_backend: DistributedBackend | None = None

    @property
    def data_parallel_size(self) -> int:
        model_ranks = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        return self.world_size // (model_ranks * self.ds_sequence_parallel_size)


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Fp8Format = Literal["e4m3", "hybrid"]


@dataclass(frozen=True)
class KernelConfig:
    """Which implementation runs, not what is computed: every choice here gives the same model.

    ``torch_compile`` compiles the model (or each transformer layer) with ``torch.compile``, fusing bias,
    GeLU, dropout, LayerNorm and residual adds; ``compile_mode`` is torch.compile's ``mode``:
    "reduce-overhead" replays the compiled graphs as CUDA graphs, "max-autotune" also tunes the matmul and
    fused kernels for the GPU. ``use_flash_attn`` calls the flash-attn package instead of torch's SDPA.
    ``deterministic`` (``--deterministic-mode``) runs deterministic kernels only, so that a rerun is
    bitwise identical (``megatron/training/determinism.py``).
    """

    torch_compile: bool = False
    compile_mode: CompileMode = "default"
    use_flash_attn: bool = False
    deterministic: bool = False

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether torch.compile replays CUDA graphs (its reduce-overhead and max-autotune modes)."""
        return self.torch_compile and self.compile_mode in ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class RecomputeConfig:
    """Activation recomputation. ``granularity`` None: keep all activations; "selective": recompute the
    attention core only; "full": recompute whole layers, ``method`` "uniform" (every ``num_layers`` layers as
    one chunk) or "block" (the first ``num_layers`` layers of each pipeline stage). ``deepspeed`` routes the
    recomputation through ``deepspeed.checkpointing`` (its RNG tracker and activation partitioning)."""

    granularity: Literal["selective", "full"] | None = None
    method: Literal["uniform", "block"] = "uniform"
    num_layers: int = 1
    deepspeed: bool = False


@dataclass(frozen=True)
class BatchConfig:
    """Batch arithmetic, derived in one place: global = micro x accumulation x data-parallel size."""

    micro_batch_size: int
    global_batch_size: int
    data_parallel_size: int
    # (start global batch, increment, ramp-up samples) as in Megatron's --rampup-batch-size; None: no ramp-up.
    rampup_batch_size: tuple[int, int, int] | None = None

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)


@dataclass(frozen=True)
class DurationConfig:
    """How long to train. Exactly one of ``train_iters`` / ``train_samples`` is set; ``train_tokens``
    (Megatron-DeepSpeed's --train-tokens) stops the run earlier once that many tokens were consumed.
    ``exit_signal_handler``: a signal stops the run with a checkpoint (``megatron.training.exit_signals``)."""

    train_iters: int | None = None
    train_samples: int | None = None
    train_tokens: int | None = None
    exit_interval: int | None = None
    exit_duration_in_mins: float | None = None
    exit_signal_handler: bool = True


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.9
    # ZeRO-Offload (--cpu-optimizer, or the ds_config's zero_optimization.offload_optimizer): the update runs
    # on the CPU in DeepSpeed's CPUAdam, which DeepSpeed requires there.
    cpu_adam: bool = False


@dataclass(frozen=True)
class LRScheduleConfig:
    """Warmup then decay, counted in iterations or in samples (Megatron's two modes; never both).

    After validation ``decay_iters``/``warmup_iters`` are set in iteration mode and ``decay_samples``/
    ``warmup_samples`` in sample mode; ``warmup_fraction`` has already been resolved into one of them.
    """

    decay_style: Literal["linear", "cosine", "constant"] = "linear"
    min_lr: float = 0.0
    decay_iters: int | None = None
    decay_samples: int | None = None
    warmup_iters: int = 0
    warmup_samples: int = 0
    # Megatron-DeepSpeed's --lr-decay-tokens / --lr-warmup-tokens: when set, that phase counts consumed
    # tokens instead (fewer per sample under a sequence-length curriculum).
    decay_tokens: int | None = None
    warmup_tokens: int | None = None


@dataclass(frozen=True)
class PrecisionConfig:
    """``loss_scale`` None means dynamic loss scaling (fp16 only). ``bf16_autocast`` is the ds_config's
    ``torch_autocast`` section: fp32 weights, gradients and optimizer, the forward under ``torch.autocast``
    in bf16 (where ``bf16`` keeps bf16 weights with fp32 master copies in DeepSpeed's optimizer)."""

    fp16: bool = False
    bf16: bool = False
    bf16_autocast: bool = False
    loss_scale: float | None = None
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2

    @property
    def dtype_name(self) -> str:
        if self.bf16_autocast:
            return "bf16 autocast over fp32 weights"
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"


@dataclass(frozen=True)
class Float8Config:
    """FP8 matmuls in the transformer layers (``--fp8-format``, Megatron-LM's flag), through torchao with
    dynamic tensorwise scaling: each operand is scaled by its own absolute maximum, taken in the step.
    "hybrid" casts activations and weights to e4m3 and gradients to e5m2 (more range, less precision);
    "e4m3" casts all three to e4m3. ``pad_tokens``: pad the token dimension of the weight-gradient matmul
    to a multiple of 16 (the FP8 kernels' requirement), for micro batches whose token count may not be one.
    """

    format: Fp8Format
    pad_tokens: bool = False


# (weight, prefix) pairs of a dataset blend, weights normalised to sum to 1.
Blend = tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from: ``data_path`` divided by ``split``, or (Megatron-DeepSpeed's
    --train-data-path / --valid-data-path / --test-data-path) a blend per split, each read whole; then
    ``data_path`` is empty and a split without a blend has no data."""

    data_path: Blend
    split: str = "969,30,1"
    tokenizer_type: str = "GPT2BPETokenizer"
    vocab_file: str | None = None
    merge_file: str | None = None
    # HFTokenizer: a tokenizer.json file, or a folder that holds one.
    tokenizer_model: str | None = None
    data_impl: Literal["mmap"] = "mmap"
    eod_mask_loss: bool = False
    num_workers: int = 2
    data_cache_path: str | None = None
    train_data_path: Blend | None = None
    valid_data_path: Blend | None = None
    test_data_path: Blend | None = None
    # How the corpora are checked before training: "quick" (index vs .bin, dtype vs vocabulary) or "full"
    # (also every token id against the vocabulary); see megatron/data/verify.py.
    verify_data: Literal["quick", "full"] = "quick"

    @property
    def split_paths(self) -> tuple[Blend | None, Blend | None, Blend | None] | None:
        """The train/valid/test blends when each split has its own paths; None with --data-path."""
        if self.data_path:
            return None
        return self.train_data_path, self.valid_data_path, self.test_data_path

    def blends(self) -> dict[str, Blend]:
        """Every blend given, by the flag that gave it (for checking that the files exist)."""
        named = {
            "--data-path": self.data_path,
            "--train-data-path": self.train_data_path,
            "--valid-data-path": self.valid_data_path,
            "--test-data-path": self.test_data_path,
        }
        return {flag: blend for flag, blend in named.items() if blend}


@dataclass(frozen=True)
class MaskedLMConfig:
    """What BERT and T5 pretraining add (``Config.masked_lm`` is None for GPT): the masking of the data,
    BERT's sentence-order head and T5's decoder length. ``vocab_extra_ids`` are T5's sentinel tokens."""

    model_type: Literal["bert", "t5"]
    mask_prob: float = 0.15
    short_seq_prob: float = 0.1
    binary_head: bool = True
    vocab_extra_ids: int = 0
    decoder_seq_length: int | None = None


@dataclass(frozen=True)
class LoggingConfig:
    """What is logged where. The ``log_*`` switches add Megatron-DeepSpeed's optional tensorboard scalars;
    ``timing_log_level`` (0-2) chooses which parts of the step are timed (1: forward-backward and
    optimizer, 2: also batch generation, forward and backward compute), at the cost of a device sync each."""

    log_interval: int = 100
    eval_interval: int = 1000
    eval_iters: int = 100
    tensorboard_dir: str | None = None
    wandb_project: str | None = None
    wandb_exp_name: str | None = None
    wandb_save_dir: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    tensorboard_queue_size: int = 1000
    timing_log_level: int = 0
    log_timers_to_tensorboard: bool = False
    log_batch_size_to_tensorboard: bool = False
    log_validation_ppl_to_tensorboard: bool = False
    log_optimizer_states_to_tensorboard: bool = False
    log_memory_to_tensorboard: bool = False


@dataclass(frozen=True)
class NonFiniteConfig:
    """Megatron-LM's --check-for-nan-in-loss-and-grad (``check``) and how many consecutive non-finite
    iterations it tolerates (``max_consecutive``, 1: stop at the first, as Megatron-LM does)."""

    check: bool = True
    max_consecutive: int = 1


# Whose LR-schedule settings win when a checkpoint's differ from the flags': neither ("match": a difference
# is an error), the flags' (--override-opt_param-scheduler) or the checkpoint's
# (--use-checkpoint-opt_param-scheduler).
SchedulerSource = Literal["match", "flags", "checkpoint"]


@dataclass(frozen=True)
class CheckpointConfig:
    """``no_load_lr_state``: the LR schedule starts afresh from the flags. ``reset_iteration``: the iteration
    and the consumed samples and tokens start from zero (weights, optimizer state and LR schedule load).
    ``overwrite_save``: writing into a ``save`` folder that holds checkpoints of another run is deliberate."""

    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    overwrite_save: bool = False
    no_load_optim: bool = False
    no_load_rng: bool = False
    finetune: bool = False
    scheduler_source: SchedulerSource = "match"
    no_load_lr_state: bool = False
    reset_iteration: bool = False


@dataclass(frozen=True)
class DeepSpeedConfig:
    """The ds_config reconciled with the flags: ``ds_config`` is what ``deepspeed.initialize`` gets."""

    config_path: str
    ds_config: Mapping[str, Any]
    zero_stage: int


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts (DeepSpeed's ``deepspeed.moe.layer.MoE``) in place of some layers' MLP.

    ``experts_per_layer`` is derived from ``--num-experts`` and ``--expert-interval`` (Megatron-DeepSpeed's
    rule): one entry per layer, 1 for a dense MLP; empty when no layer has experts. Capacity per expert is
    ``max(ceil(tokens / experts x capacity_factor x topk), min_capacity)``; beyond it tokens are dropped
    unless ``token_dropping`` is off.
    """

    experts_per_layer: tuple[int, ...] = ()
    expert_parallel_size: int = 1
    topk: int = 1
    train_capacity_factor: float = 1.0
    eval_capacity_factor: float = 1.0
    min_capacity: int = 4
    token_dropping: bool = True
    loss_coeff: float = 0.1
    mlp_type: Literal["standard", "residual"] = "standard"

    @property
    def enabled(self) -> bool:
        return any(experts > 1 for experts in self.experts_per_layer)

    def experts_at(self, layer_number: int) -> int:
        """Experts of layer ``layer_number`` (from 0); 1 means the dense MLP."""
        return self.experts_per_layer[layer_number] if self.experts_per_layer else 1


@dataclass(frozen=True)
class CurriculumConfig:
    """Sequence-length curriculum (the ds_config's legacy ``curriculum_learning`` section, read here since
    DeepSpeed 0.19 no longer accepts it): each micro batch is cut to the length scheduled for its step.
    ``schedule`` is the section as DeepSpeed's ``CurriculumScheduler`` takes it."""

    min_difficulty: int
    max_difficulty: int
    schedule_type: Literal["fixed_linear", "fixed_root", "fixed_discrete"]
    schedule: Mapping[str, Any]


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    parallel: ParallelConfig
    batch: BatchConfig
    duration: DurationConfig
    optimizer: OptimizerConfig
    lr_schedule: LRScheduleConfig
    precision: PrecisionConfig
    data: DataConfig
    logging: LoggingConfig
    checkpoint: CheckpointConfig
    deepspeed: DeepSpeedConfig
    recompute: RecomputeConfig = RecomputeConfig()
    kernels: KernelConfig = KernelConfig()
    moe: MoEConfig = MoEConfig()
    curriculum: CurriculumConfig | None = None
    masked_lm: MaskedLMConfig | None = None
    fp8: Float8Config | None = None
    seed: int = 1234
    nonfinite: NonFiniteConfig = NonFiniteConfig()
