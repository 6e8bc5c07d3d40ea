"""The planner's predictions for the runs ``bench/plan_check.py`` measured, side by side, and the bounds
issue #19 holds them to (peak memory within 10%, tokens/s within 20%, the first-ranked layout within 10% of
the fastest measured one). ``tests/planning/test_stored_measurements.py`` applies the same bounds to the
stored measurements, so a change to the model code or the planner that breaks them fails a test."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from megatron.config.arguments import parse_args
from megatron.config.build import build_config
from megatron.config.schema import Config
from megatron.planning.cost import predict_step
from megatron.planning.from_config import layout_of, precision_of
from megatron.planning.gpus import cluster_of
from megatron.planning.memory import predict_memory

MEMORY_BOUND = 0.10
SPEED_BOUND = 0.20
RANKING_BOUND = 0.10
# The device the measurements were taken on, by torch.cuda.get_device_name(), as the planner names it.
GPU_NAMES = {"NVIDIA H200": "H200", "NVIDIA H100 80GB HBM3": "H100"}


def rebuilt_config(record: dict) -> Config:
    """The measured run's validated config, from its stored flags and ds_config (paths are placeholders:
    ``build_config`` does not read the files)."""
    ds_path = Path(tempfile.mkdtemp()) / "ds_config.json"
    ds_path.write_text(json.dumps(record["ds_config"]))
    paths = ["--data-path", "unused", "--deepspeed", "--deepspeed_config", str(ds_path)]
    return build_config(parse_args(record["flags"] + paths), 1, record["tokenizer_vocab_size"])


@dataclass(frozen=True)
class Comparison:
    name: str
    group: str
    oom: bool
    predicted_bytes: float
    measured_bytes: float
    predicted_fits: bool
    predicted_tokens_per_second: float
    measured_tokens_per_second: float | None

    @property
    def memory_error(self) -> float:
        return self.predicted_bytes / self.measured_bytes - 1

    @property
    def speed_error(self) -> float | None:
        if not self.measured_tokens_per_second:
            return None
        return self.predicted_tokens_per_second / self.measured_tokens_per_second - 1


def compare(record: dict) -> Comparison:
    """Predicted against measured for one stored run: the planner's device total against the allocator's
    reserved peak (what has to fit), its tokens/s against the median of the loop's steady log lines."""
    config = rebuilt_config(record)
    layout, precision = layout_of(config), precision_of(config)
    cluster = cluster_of(GPU_NAMES[record["device"]], num_gpus=1)
    dropout = max(config.model.hidden_dropout, config.model.attention_dropout) > 0
    memory = predict_memory(config.model, layout, precision, config.moe, dropout=dropout)
    step = predict_step(config.model, layout, cluster, precision, config.moe)
    measured = record["measured"]
    return Comparison(
        name=record["case"]["name"],
        group=record["case"]["group"],
        oom=measured["oom"],
        predicted_bytes=memory.total,
        measured_bytes=measured["peak_reserved_bytes"],
        predicted_fits=memory.total <= cluster.gpu.memory_bytes,
        predicted_tokens_per_second=step.tokens_per_second,
        measured_tokens_per_second=measured["tokens_per_second"],
    )


def ranking_regret(comparisons: list[Comparison]) -> tuple[Comparison, Comparison, float]:
    """(the planner's first choice among the measured ranking layouts that it considers feasible, the
    fastest of them as measured, how much slower the first choice measured than the fastest)."""
    feasible = [c for c in comparisons if c.group == "ranking" and c.predicted_fits and not c.oom]
    chosen = max(feasible, key=lambda c: c.predicted_tokens_per_second)
    fastest = max(feasible, key=lambda c: c.measured_tokens_per_second)
    return chosen, fastest, 1 - chosen.measured_tokens_per_second / fastest.measured_tokens_per_second


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}"


def comparison_table(records: list[dict]) -> str:
    """A markdown table of every stored run (for bench/RESULTS.md) and the ranking's verdict."""
    comparisons = [compare(record) for record in records]
    lines = [
        "| case | predicted GiB | measured GiB | error | predicted tok/s | measured tok/s | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        measured = "out of memory" if c.oom else _gib(c.measured_bytes)
        memory_error = "" if c.oom else f"{100 * c.memory_error:+.1f}%"
        fits = "" if c.predicted_fits else " (predicted not to fit)"
        speed = f"{c.measured_tokens_per_second:,.0f}" if c.measured_tokens_per_second else "-"
        speed_error = f"{100 * c.speed_error:+.1f}%" if c.speed_error is not None else ""
        lines.append(
            f"| {c.name} | {_gib(c.predicted_bytes)}{fits} | {measured} | {memory_error} | "
            f"{c.predicted_tokens_per_second:,.0f} | {speed} | {speed_error} |"
        )
    if any(c.group == "ranking" for c in comparisons):
        chosen, fastest, regret = ranking_regret(comparisons)
        lines.append(
            f"\nRanking: the planner's first choice {chosen.name} measured "
            f"{chosen.measured_tokens_per_second:,.0f} tok/s, the fastest {fastest.name} "
            f"{fastest.measured_tokens_per_second:,.0f} tok/s: {100 * regret:.1f}% slower."
        )
    return "\n".join(lines)


def print_comparison(records: list[dict]) -> None:
    print(comparison_table(records))
