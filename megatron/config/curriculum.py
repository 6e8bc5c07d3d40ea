"""The ds_config's sequence-length curriculum (``curriculum_learning``), read and checked here.

Megatron-DeepSpeed recipes configure the curriculum in the ds_config's top-level ``curriculum_learning``
section, which DeepSpeed's engine used to apply itself. DeepSpeed 0.19 rejects that section, so the toolkit
takes it out of the dict it hands to DeepSpeed, validates it with key paths in the errors, and the training
loop applies it (each micro batch cut to the scheduled length, with DeepSpeed's ``CurriculumScheduler``).
DeepSpeed's newer ``data_efficiency`` pipeline (data sampling by difficulty, random-LTD) is not supported.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

from megatron.config.ds_config import DsConfigFile
from megatron.config.errors import ConfigError
from megatron.config.schema import CurriculumConfig, ModelConfig, ParallelConfig

SECTION = "curriculum_learning"
_KEYS = ("enabled", "curriculum_type", "min_difficulty", "max_difficulty", "schedule_type", "schedule_config")
_SCHEDULE_KEYS = {
    "fixed_linear": ("total_curriculum_step", "difficulty_step"),
    "fixed_root": ("total_curriculum_step", "difficulty_step", "root_degree"),
    "fixed_discrete": ("difficulty", "max_step"),
}


def curriculum_config(
    ds: DsConfigFile, model: ModelConfig, parallel: ParallelConfig
) -> tuple[DsConfigFile, CurriculumConfig | None]:
    """(the ds_config without the curriculum section, the curriculum or None when absent or disabled)."""
    _refuse_data_efficiency(ds)
    if SECTION not in ds.data:
        return ds, None
    rest = DsConfigFile(ds.path, {key: value for key, value in ds.data.items() if key != SECTION})
    section = ds.data[SECTION]
    where = f"ds_config {ds.path}: '{SECTION}"
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"{where}' is {section!r}; it must be an object with 'enabled', 'min_difficulty', ..."
        )
    _check_known(section, _KEYS, where)
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled' is {enabled!r}; it must be true or false.")
    if not enabled:
        return rest, None
    if section.get("curriculum_type", "seqlen") != "seqlen":
        raise ConfigError(
            f"{where}.curriculum_type' is {section['curriculum_type']!r}: only 'seqlen' (sequence-length "
            "curriculum) is supported."
        )
    seq_length = model.seq_length
    low = _integer(section, "min_difficulty", where, 1)
    high = _integer(section, "max_difficulty", where, 1)
    if not low <= high <= seq_length:
        raise ConfigError(
            f"{where}': min_difficulty {low} and max_difficulty {high} must satisfy min <= max <= "
            f"--seq-length {seq_length} (they are sequence lengths in tokens)."
        )
    schedule_type = section.get("schedule_type")
    if schedule_type not in _SCHEDULE_KEYS:
        raise ConfigError(
            f"{where}.schedule_type' is {schedule_type!r}; use one of {', '.join(_SCHEDULE_KEYS)}."
        )
    schedule = section.get("schedule_config")
    if not isinstance(schedule, Mapping):
        raise ConfigError(
            f"{where}.schedule_config' is {schedule!r}; {schedule_type} needs an object with "
            f"{', '.join(_SCHEDULE_KEYS[schedule_type])}."
        )
    schedule_where = f"{where}.schedule_config"
    _check_known(schedule, _SCHEDULE_KEYS[schedule_type], schedule_where)
    if schedule_type == "fixed_discrete":
        lengths = _check_discrete(schedule, schedule_where, seq_length)
    else:
        lengths = _check_root(schedule, schedule_type, schedule_where, low, high)
    _check_split(lengths, parallel, where)
    config = CurriculumConfig(
        min_difficulty=low, max_difficulty=high, schedule_type=schedule_type, schedule=dict(schedule)
    )
    try:
        scheduler(config)
    except (AssertionError, RuntimeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}': DeepSpeed's CurriculumScheduler rejects it: {exc}") from exc
    return rest, config


def scheduler(config: CurriculumConfig) -> CurriculumScheduler:
    return CurriculumScheduler(
        {
            "min_difficulty": config.min_difficulty,
            "max_difficulty": config.max_difficulty,
            "schedule_type": config.schedule_type,
            "schedule_config": dict(config.schedule),
        }
    )


def shortest_seq_length(config: CurriculumConfig | None, seq_length: int) -> int:
    """The shortest sequence the curriculum hands the model (the first step's)."""
    return seq_length if config is None else scheduler(config).get_difficulty(1)


def _refuse_data_efficiency(ds: DsConfigFile) -> None:
    section = ds.data.get("data_efficiency")
    if section is not None and _anything_enabled(section):
        raise ConfigError(
            f"ds_config {ds.path}: 'data_efficiency' (DeepSpeed's data sampling and routing) is not "
            f"supported yet. For a sequence-length curriculum use the top-level '{SECTION}' section "
            "(README: Mixture of experts and curriculum learning); otherwise remove 'data_efficiency' or "
            "set its 'enabled' keys to false."
        )


def _anything_enabled(node: Any) -> bool:
    if isinstance(node, Mapping):
        return node.get("enabled") is True or any(_anything_enabled(value) for value in node.values())
    return False


def _check_known(section: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in section:
        if key not in known:
            match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise ConfigError(f"{where}.{key}' is not a known key{hint}; the keys are {', '.join(known)}.")


def _integer(section: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        seen = "missing" if key not in section else f"{value!r}"
        raise ConfigError(f"{where}.{key}' is {seen}; it must be an integer >= {minimum}.")
    return value


def _check_root(
    schedule: Mapping[str, Any], schedule_type: str, where: str, low: int, high: int
) -> list[int]:
    """The lengths a fixed_linear/fixed_root schedule produces: DeepSpeed rounds each down to a multiple of
    difficulty_step, and up to the first multiple at or above min_difficulty."""
    _integer(schedule, "total_curriculum_step", where, 1)
    step = _integer(schedule, "difficulty_step", where, 1)
    if schedule_type == "fixed_root":
        degree = schedule.get("root_degree")
        if isinstance(degree, bool) or not isinstance(degree, (int, float)) or degree <= 0:
            raise ConfigError(
                f"{where}.root_degree' is {degree!r}; it must be a number > 0 (2: square root)."
            )
    if high % step:
        raise ConfigError(
            f"{where}.difficulty_step' is {step} but max_difficulty {high} is not a multiple of it: the "
            f"schedule rounds lengths down to multiples of the step and would stop at {high - high % step}. "
            "Use a max_difficulty (usually --seq-length) that the step divides."
        )
    return list(range(-(-low // step) * step, high + 1, step))


def _check_discrete(schedule: Mapping[str, Any], where: str, seq_length: int) -> list[int]:
    lengths, steps = schedule.get("difficulty"), schedule.get("max_step")
    if not isinstance(lengths, list) or not lengths or not all(_is_int(v) and v >= 1 for v in lengths):
        raise ConfigError(f"{where}.difficulty' is {lengths!r}; it must be a non-empty list of lengths >= 1.")
    if not isinstance(steps, list) or len(steps) != len(lengths) - 1 or not all(_is_int(v) for v in steps):
        raise ConfigError(
            f"{where}.max_step' is {steps!r}; it must list one step fewer than 'difficulty' "
            f"({len(lengths) - 1} integers): the last difficulty applies after the last max_step."
        )
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])) or (steps and steps[0] < 1):
        raise ConfigError(f"{where}.max_step' is {steps}; the steps must be >= 1 and increasing.")
    if any(later < earlier for earlier, later in zip(lengths, lengths[1:])) or max(lengths) > seq_length:
        raise ConfigError(
            f"{where}.difficulty' is {lengths}; the lengths must not decrease and must be at most "
            f"--seq-length {seq_length}."
        )
    return lengths


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_split(lengths: list[int], parallel: ParallelConfig, where: str) -> None:
    """Sequence parallelism (Megatron's or DeepSpeed-Ulysses) splits every length evenly over its ranks."""
    tensor, ulysses = parallel.tensor_model_parallel_size, parallel.ds_sequence_parallel_size
    split, flag = (
        (tensor, "--tensor-model-parallel-size with --sequence-parallel")
        if parallel.sequence_parallel
        else (ulysses, "--ds-sequence-parallel-size")
    )
    uneven = sorted({length for length in lengths if length % split})
    if uneven:
        raise ConfigError(
            f"{where}': the schedule reaches sequence lengths {uneven[:5]} that {flag} {split} does not "
            f"divide; choose min/max_difficulty, difficulty_step or the difficulty list as multiples of "
            f"{split}."
        )
