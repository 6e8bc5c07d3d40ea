"""Reading the ds_config file and reconciling it with the command-line flags.

DeepSpeed reads the batch sizes, precision, ZeRO stage and gradient clipping from this file while Megatron
reads the same settings from flags. Making the two sources agree here turns a silent difference (a run with
another batch size or precision than the flags say) into an error that names both sides, before any process
starts. The file itself is checked against DeepSpeed's parser in ``ds_config_keys``.

The rule for each setting that both sides can give: if both give it they must agree; if one gives it, the
other is filled from it; if neither does, the documented default applies. Precision therefore follows the
ds_config when only the ds_config enables fp16 or bf16.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hjson

from megatron.config.ds_config_keys import check_keys, check_with_deepspeed
from megatron.config.errors import ConfigError
from megatron.config.parallelism import describe_data_parallel
from megatron.config.schema import BatchConfig, ParallelConfig, PrecisionConfig

# The training loop logs on its own --log-interval; this keeps DeepSpeed's per-step prints out of the way.
QUIET_STEPS_PER_PRINT = 1_000_000_000
DEFAULT_CLIP_GRAD = 1.0
# DeepSpeed's torch.autocast section, and the spellings of bf16 its dtype parser accepts.
AUTOCAST_SECTION = "torch_autocast"
_BF16_NAMES = ("bfloat16", "bf16", "torch.bfloat16")


@dataclass(frozen=True)
class DsConfigFile:
    """A ds_config as the user wrote it, kept with its path so every error can name the file."""

    path: str
    data: Mapping[str, Any]

    def lookup(self, key_path: str) -> tuple[bool, Any]:
        """(present, value) for a dotted key such as ``fp16.enabled``."""
        node: Any = self.data
        for part in key_path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def agree(self, key_path: str, flag: str, flag_value: Any, shown: Any = None) -> Any:
        """The value the flag and the key agree on: the flag's if given (None: not given), else the key's,
        else None. ``shown`` is how to print the flag's value when it differs from what the key holds."""
        present, value = self.lookup(key_path)
        if present and flag_value is not None and value != flag_value:
            raise ConfigError(
                f"ds_config {self.path}: '{key_path}' is {value!r} but {flag} gives "
                f"{flag_value if shown is None else shown!r}. Make them agree, or drop one of them: the "
                "missing one is filled in from the other."
            )
        return flag_value if flag_value is not None else value


def load_ds_config(path: str) -> DsConfigFile:
    """Read and check a ds_config file (JSON, or hjson as DeepSpeed also accepts). The file is never
    written; reconciliation works on a copy."""
    data = _parse(path)
    check_keys(data, path)
    return DsConfigFile(path=path, data=data)


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """DeepSpeed rejects duplicate keys too: with them, which value wins depends on the parser."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"--deepspeed_config {path}: no such file. Give the path of the ds_config JSON file."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--deepspeed_config {path}: cannot read the file ({exc}).") from exc
    try:
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as json_error:
            try:
                data = hjson.loads(text, object_pairs_hook=_no_duplicates)
            except hjson.HjsonDecodeError:
                raise ConfigError(
                    f"ds_config {path}: not valid JSON (nor hjson): {json_error.msg} at line "
                    f"{json_error.lineno}, column {json_error.colno}. Fix the syntax there."
                ) from json_error
    except _DuplicateKey as exc:
        raise ConfigError(
            f"ds_config {path}: key '{exc.args[0]}' appears twice in one object; keep one."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"ds_config {path}: the top level is {type(data).__name__}, expected a JSON object."
        )
    return data


def _bf16_key(ds: DsConfigFile) -> str:
    """DeepSpeed reads ``bf16``, falling back to the older ``bfloat16``."""
    return "bfloat16" if "bfloat16" in ds.data and "bf16" not in ds.data else "bf16"


def batch_sizes(
    ds: DsConfigFile, args: argparse.Namespace, data_parallel_size: int
) -> tuple[int | None, int | None]:
    """(micro, global) batch sizes from the flags and the ds_config; micro is None when neither gives it.

    With no global size on either side it follows DeepSpeed's rule, micro x accumulation x data-parallel
    size, with the accumulation from the ds_config, else 1 (Megatron's default of micro x data-parallel).
    """
    micro = ds.agree("train_micro_batch_size_per_gpu", "--micro-batch-size", args.micro_batch_size)
    global_batch = ds.agree("train_batch_size", "--global-batch-size", args.global_batch_size)
    if global_batch is None and micro is not None:
        global_batch = micro * data_parallel_size * ds.data.get("gradient_accumulation_steps", 1)
    return micro, global_batch


def zero_stage(ds: DsConfigFile, args: argparse.Namespace) -> int:
    if args.zero_stage is not None and not 0 <= args.zero_stage <= 3:
        raise ConfigError(f"--zero-stage {args.zero_stage}: ZeRO stages are 0, 1, 2 and 3.")
    stage = ds.agree("zero_optimization.stage", "--zero-stage", args.zero_stage)
    return 0 if stage is None else int(stage)


def clip_grad(ds: DsConfigFile, args: argparse.Namespace) -> float:
    if args.clip_grad is not None and args.clip_grad < 0:
        raise ConfigError(f"--clip-grad {args.clip_grad}: must be >= 0 (0 turns clipping off).")
    value = ds.agree("gradient_clipping", "--clip-grad", args.clip_grad)
    return DEFAULT_CLIP_GRAD if value is None else float(value)


def precision_config(ds: DsConfigFile, args: argparse.Namespace) -> PrecisionConfig:
    """Precision from --fp16/--bf16 and the ds_config's ``fp16``/``bf16`` sections; when only the ds_config
    enables one, the run uses it. The loss-scale settings matter only for fp16."""
    if args.fp16 and args.bf16:
        raise ConfigError("--fp16 and --bf16 were both given; choose one.")
    fp16 = bool(ds.agree("fp16.enabled", "--fp16", True if args.fp16 else None))
    bf16 = bool(ds.agree(f"{_bf16_key(ds)}.enabled", "--bf16", True if args.bf16 else None))
    fp16_source = "--fp16" if args.fp16 else "'fp16.enabled'"
    bf16_source = "--bf16" if args.bf16 else f"'{_bf16_key(ds)}.enabled'"
    if fp16 and bf16:
        raise ConfigError(
            f"ds_config {ds.path}: fp16 and bf16 are both enabled (fp16 by {fp16_source}, bf16 by "
            f"{bf16_source}); enable only one."
        )
    defaults = PrecisionConfig()
    autocast = _bf16_autocast(ds, fp16_source if fp16 else bf16_source if bf16 else None)
    if not fp16:
        return PrecisionConfig(
            bf16=bf16,
            bf16_autocast=autocast,
            loss_scale=args.loss_scale,
            initial_loss_scale=_or(args.initial_loss_scale, defaults.initial_loss_scale),
            min_loss_scale=_or(args.min_loss_scale, defaults.min_loss_scale),
            loss_scale_window=_or(args.loss_scale_window, defaults.loss_scale_window),
            hysteresis=_or(args.hysteresis, defaults.hysteresis),
        )
    for flag, value in (("--loss-scale", args.loss_scale), ("--initial-loss-scale", args.initial_loss_scale)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} {value}: must be > 0.")
    for flag, value in (
        ("--min-loss-scale", args.min_loss_scale),
        ("--loss-scale-window", args.loss_scale_window),
    ):
        if value is not None and (value < 1 or value != int(value)):
            raise ConfigError(f"{flag} {value}: DeepSpeed takes a whole number >= 1 here.")
    if args.hysteresis is not None and args.hysteresis < 1:
        raise ConfigError(f"--hysteresis {args.hysteresis}: must be >= 1.")
    loss_scale = ds.agree("fp16.loss_scale", "--loss-scale", args.loss_scale)
    power = None if args.initial_loss_scale is None else _log2(args.initial_loss_scale)
    power = ds.agree("fp16.initial_scale_power", "--initial-loss-scale", power, shown=args.initial_loss_scale)
    min_scale = ds.agree("fp16.min_loss_scale", "--min-loss-scale", args.min_loss_scale)
    window = ds.agree("fp16.loss_scale_window", "--loss-scale-window", args.loss_scale_window)
    return PrecisionConfig(
        fp16=True,
        loss_scale=float(loss_scale) if loss_scale else None,
        initial_loss_scale=defaults.initial_loss_scale if power is None else 2.0**power,
        min_loss_scale=float(_or(min_scale, defaults.min_loss_scale)),
        loss_scale_window=int(_or(window, defaults.loss_scale_window)),
        hysteresis=int(
            _or(ds.agree("fp16.hysteresis", "--hysteresis", args.hysteresis), defaults.hysteresis)
        ),
    )


def _bf16_autocast(ds: DsConfigFile, half_precision: str | None) -> bool:
    """Whether the ds_config's ``torch_autocast`` section is on. It replaces --bf16/--fp16 rather than
    joining them: ``half_precision`` names the one enabled, if any."""
    enabled = ds.lookup(f"{AUTOCAST_SECTION}.enabled")[1]
    where = f"ds_config {ds.path}: '{AUTOCAST_SECTION}"
    if enabled is None or enabled is False:
        return False
    if enabled is not True:
        raise ConfigError(f"{where}.enabled' is {enabled!r}; use true or false.")
    dtype = ds.lookup(f"{AUTOCAST_SECTION}.dtype")[1]
    if dtype is not None and dtype not in _BF16_NAMES:
        raise ConfigError(
            f'{where}.dtype\' is {dtype!r}; autocast is supported in bf16 only ("bfloat16"). For fp16 '
            "training use --fp16 (DeepSpeed's loss-scaled fp16 optimizer)."
        )
    if half_precision is not None:
        raise ConfigError(
            f"{where}' is enabled together with {half_precision}. Choose one: '{AUTOCAST_SECTION}' keeps "
            f"fp32 weights and runs the forward in bf16, {half_precision} keeps half-precision weights."
        )
    return True


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _log2(initial_loss_scale: float) -> int:
    power = math.log2(initial_loss_scale)
    if not power.is_integer():
        raise ConfigError(
            f"--initial-loss-scale {initial_loss_scale}: DeepSpeed sets the initial fp16 loss scale as a "
            "power of two (fp16.initial_scale_power); give a power of two such as 65536 or 4294967296."
        )
    return int(power)


def reconcile_ds_config(
    ds: DsConfigFile,
    *,
    batch: BatchConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    clip: float,
    stage: int,
    offload_optimizer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict ``deepspeed.initialize`` gets: the user's file with every setting the flags decide filled
    in, checked against those flags, and finally run through DeepSpeed's own parser. ``offload_optimizer``
    is the ZeRO-Offload section that --cpu-optimizer fills in when the file has none."""
    _check_parallel_keys(ds, parallel)
    result = copy.deepcopy(dict(ds.data))
    # Checked to agree with the flags, then dropped: with both present deepspeed.initialize would build a
    # device mesh of its own and consult it before the groups this toolkit passes in.
    result.pop("sequence_parallel_size", None)
    result.pop("data_parallel_size", None)
    accumulation = batch.gradient_accumulation_steps
    if result.get("gradient_accumulation_steps", accumulation) != accumulation:
        raise ConfigError(
            f"ds_config {ds.path}: 'gradient_accumulation_steps' is {result['gradient_accumulation_steps']} "
            f"but the flags give {accumulation} (--global-batch-size {batch.global_batch_size} / "
            f"(--micro-batch-size {batch.micro_batch_size} x {describe_data_parallel(parallel)})). Drop the "
            "key (it is filled in) or make the batch sizes agree."
        )
    result["train_micro_batch_size_per_gpu"] = batch.micro_batch_size
    result["train_batch_size"] = batch.global_batch_size
    result["gradient_accumulation_steps"] = accumulation
    result.setdefault("zero_optimization", {})["stage"] = stage
    if offload_optimizer is not None:
        result["zero_optimization"]["offload_optimizer"] = dict(offload_optimizer)
    result["gradient_clipping"] = clip
    result.setdefault("steps_per_print", QUIET_STEPS_PER_PRINT)
    if precision.bf16:
        result.setdefault(_bf16_key(ds), {})["enabled"] = True
    if precision.bf16_autocast:
        result[AUTOCAST_SECTION]["dtype"] = "bfloat16"  # DeepSpeed's default would be fp16 on a GPU
    if precision.fp16:
        fp16 = result.setdefault("fp16", {})
        fp16["enabled"] = True
        fp16["loss_scale"] = precision.loss_scale or 0
        fp16["initial_scale_power"] = _log2(precision.initial_loss_scale)
        fp16["loss_scale_window"] = precision.loss_scale_window
        fp16["hysteresis"] = precision.hysteresis
        fp16["min_loss_scale"] = int(precision.min_loss_scale)
    check_with_deepspeed(result, ds.path)
    return result


def _check_parallel_keys(ds: DsConfigFile, parallel: ParallelConfig) -> None:
    """deepspeed.initialize reads these keys itself (with both present it builds its own device mesh), so a
    value other than the flags' would hand DeepSpeed another layout than the groups this toolkit builds.
    They are not filled in: the groups are passed to DeepSpeed directly."""
    for key, value, source in (
        (
            "sequence_parallel_size",
            parallel.ds_sequence_parallel_size,
            f"--ds-sequence-parallel-size gives {parallel.ds_sequence_parallel_size}",
        ),
        (
            "data_parallel_size",
            parallel.data_parallel_size,
            f"the flags give {describe_data_parallel(parallel)}",
        ),
    ):
        present, seen = ds.lookup(key)
        if present and seen != value:
            raise ConfigError(
                f"ds_config {ds.path}: '{key}' is {seen!r} but {source}. Drop the key (the parallel layout "
                f"comes from the flags) or set it to {value}."
            )
