"""Checking a ds_config dict against DeepSpeed's own parser and pydantic models.

DeepSpeed silently ignores top-level keys it does not know, so a misspelt section does nothing. Rather than a
hand-written key list, which would go stale with each DeepSpeed release, the known keys are learnt from the
installed DeepSpeed, and the sections it parses with pydantic are validated with those same models, so each
error can name the full key path and the closest valid key.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import typing
from collections.abc import Iterable, Iterator, KeysView, Mapping
from typing import Any

import pydantic
from deepspeed.comm.config import CommsLoggerConfig
from deepspeed.compile.config import CompileConfig
from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
from deepspeed.runtime.config import DeepSpeedConfig as DeepSpeedRuntimeConfig
from deepspeed.runtime.config import HybridEngineConfig
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from deepspeed.utils import logger as deepspeed_logger

from megatron.config.errors import ConfigError

logger = logging.getLogger(__name__)

DOCS = "https://www.deepspeed.ai/docs/config-json/"

# deepspeed.initialize and the warning checks read these straight from the dict, outside the parser.
_KEYS_READ_OUTSIDE_PARSER = frozenset({"sequence_parallel_size", "data_parallel_size", "vocabulary_size"})

# Sections DeepSpeed parses with a pydantic model: validating them here yields errors with the key path.
_SECTION_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "zero_optimization": DeepSpeedZeroConfig,
    "fp16": DeepSpeedFP16Config,
    "bf16": DeepSpeedBF16Config,
    "bfloat16": DeepSpeedBF16Config,
    "tensorboard": TensorBoardConfig,
    "wandb": WandbConfig,
    "csv_monitor": CSVConfig,
    "comet": CometConfig,
    "comms_logger": CommsLoggerConfig,
    "compile": CompileConfig,
    "hybrid_engine": HybridEngineConfig,
}

_REFUSED_SECTION_FLAGS = {
    "optimizer": "--optimizer, --lr, --weight-decay, --adam-beta1/--adam-beta2/--adam-eps or --sgd-momentum",
    "scheduler": "--lr, --min-lr, --lr-decay-style, --lr-decay-iters/--lr-decay-samples and --lr-warmup-*",
}

_POSITIVE_INT_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "steps_per_print",
)


def check_keys(data: Mapping[str, Any], path: str) -> None:
    """The file as the user wrote it: no refused section, no unknown top-level key, well-typed batch and
    clipping values, and every pydantic-parsed section valid under DeepSpeed's own model."""
    _check_top_level(data, path)
    for key, model in _SECTION_MODELS.items():
        if key in data:
            _check_section(data[key], key, model, path)


def check_with_deepspeed(data: Mapping[str, Any], path: str) -> None:
    """Run DeepSpeed's parser over the whole dict, catching what the section models do not (cross-section
    rules, removed features, bad enum strings). Batch keys are replaced by a micro batch of 1, since this
    process does not know the world size DeepSpeed would check them against; the batch is checked by the
    caller."""
    probe = {k: v for k, v in data.items() if k not in ("train_batch_size", "gradient_accumulation_steps")}
    probe["train_micro_batch_size_per_gpu"] = 1
    try:
        with _quiet_deepspeed():
            DeepSpeedRuntimeConfig(probe)
    except Exception as exc:
        raise ConfigError(f"ds_config {path}: DeepSpeed rejects it: {exc}") from exc


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> frozenset[str] | None:
    """Every top-level key DeepSpeed's config parser looks at, learnt by running that parser on a dict that
    records lookups. A hand-written list would go stale with each DeepSpeed release and reject valid
    configs; this follows the installed version. None if the parser cannot be probed (then unknown keys go
    unchecked rather than blocking every run)."""
    seen: set[str] = set()
    try:
        with _quiet_deepspeed():
            DeepSpeedRuntimeConfig(_KeyRecorder({"train_micro_batch_size_per_gpu": 1}, seen))
    except Exception:
        logger.warning("Could not probe DeepSpeed's config parser; unknown ds_config keys are not checked.")
        return None
    return frozenset(seen | _KEYS_READ_OUTSIDE_PARSER)


@contextlib.contextmanager
def _quiet_deepspeed() -> Iterator[None]:
    """Silence DeepSpeed's info lines while its parser runs here ("world_size = 1" would mislead)."""
    level = deepspeed_logger.level
    deepspeed_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        deepspeed_logger.setLevel(level)


class _KeyRecorder(dict):
    """A dict that remembers each key looked up in it, whether by ``in``, ``.keys()``, ``.get`` or []."""

    def __init__(self, data: Mapping[str, Any], seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def __copy__(self) -> _KeyRecorder:
        return _KeyRecorder(self, self.seen)


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_top_level(data: Mapping[str, Any], path: str) -> None:
    for key, flags in _REFUSED_SECTION_FLAGS.items():
        if key in data:
            raise ConfigError(
                f"ds_config {path}: remove the '{key}' section ({json.dumps(data[key])[:80]}). This toolkit "
                "builds the optimizer and learning-rate schedule itself, so that Megatron's weight-decay "
                f"groups and schedule apply; set them with {flags} instead."
            )
    known = known_top_level_keys()
    if known is not None:
        unknown = [key for key in data if key not in known]
        if unknown:
            listed = ", ".join(f"'{key}'{_suggestion(key, known)}" for key in unknown)
            raise ConfigError(
                f"ds_config {path}: unknown top-level key {listed}. DeepSpeed would silently ignore it; "
                f"rename or remove it (keys: {DOCS})."
            )
    for key in _POSITIVE_INT_KEYS:
        value = data.get(key)
        if key in data and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"ds_config {path}: '{key}' is {value!r}; it must be a positive integer.")
    clipping = data.get("gradient_clipping", 0.0)
    if isinstance(clipping, bool) or not isinstance(clipping, (int, float)) or clipping < 0:
        raise ConfigError(f"ds_config {path}: 'gradient_clipping' is {clipping!r}; it must be a number >= 0.")


def _check_section(section: Any, key: str, model: type[pydantic.BaseModel], path: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(
            f"ds_config {path}: '{key}' is {section!r}; it must be an object (for example "
            f'"{key}": {{"enabled": true}} or, for ZeRO, {{"stage": 1}}). See {DOCS}.'
        )
    try:
        model(**section)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"ds_config {path}: {_describe(exc, key, model)}. See {DOCS}.") from None


def _describe(exc: pydantic.ValidationError, prefix: str, model: type[pydantic.BaseModel]) -> str:
    """pydantic's errors, each with the full dotted key path and, for an unknown key, the closest key."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in (prefix, *error["loc"]))
        if error["type"] == "extra_forbidden":
            hint = _suggestion(str(error["loc"][-1]), _field_names(model, error["loc"][:-1]))
            problems.append(f"unknown key '{loc}'{hint}")
        else:
            problems.append(f"'{loc}' is {error.get('input')!r}: {error['msg']}")
    return "; ".join(problems)


def _field_names(model: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted at ``loc`` inside ``model``, following nested models (for suggestions only)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        nested = (
            [t for t in (field.annotation, *typing.get_args(field.annotation)) if _is_model(t)]
            if field
            else []
        )
        if not nested:
            return []
        model = nested[0]
    names = list(model.model_fields)
    return names + [field.alias for field in model.model_fields.values() if field.alias]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
