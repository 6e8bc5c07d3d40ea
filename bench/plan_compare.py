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
from megatron.planning.from_config import layout_of, memory_of, precision_of
from megatron.planning.gpus import GIB, Cluster, gpu_spec
from megatron.planning.layout import Layout
from megatron.planning.search import PlanRequest, SearchResult, search
from megatron.planning.write import without_layout_flags

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
    paths = ["--data-path", "unused", "--vocab-file", "unused", "--merge-file", "unused"]
    paths += ["--deepspeed", "--deepspeed_config", str(ds_path)]
    return build_config(parse_args(record["flags"] + paths), 1, record["tokenizer_vocab_size"])


@dataclass(frozen=True)
class Comparison:
    name: str
    group: str
    oom: bool
    predicted_allocated: float
    predicted_reserved: float
    measured_allocated: float
    measured_reserved: float
    predicted_fits: bool
    predicted_tokens_per_second: float
    measured_tokens_per_second: float | None

    @property
    def memory_error(self) -> float:
        """Against the allocator's peak of live tensors (torch.cuda.max_memory_allocated)."""
        return self.predicted_allocated / self.measured_allocated - 1

    @property
    def reserved_error(self) -> float:
        """Of the allocator's reserved peak, which adds its fragmentation (reported, not bounded)."""
        return self.predicted_reserved / self.measured_reserved - 1

    @property
    def speed_error(self) -> float | None:
        if not self.measured_tokens_per_second:
            return None
        return self.predicted_tokens_per_second / self.measured_tokens_per_second - 1


def compare(record: dict) -> Comparison:
    """Predicted against measured for one stored run: the planner's device total against the allocator's
    reserved peak (what has to fit), its tokens/s against the median of the loop's steady log lines."""
    config = rebuilt_config(record)
    cluster = Cluster(num_gpus=1, gpus_per_node=1, gpu=gpu_spec(GPU_NAMES[record["device"]]))
    memory = memory_of(config)
    step = predict_step(config.model, layout_of(config), cluster, precision_of(config))
    measured = record["measured"]
    return Comparison(
        name=record["case"]["name"],
        group=record["case"]["group"],
        oom=measured["oom"],
        predicted_allocated=memory.allocated,
        predicted_reserved=memory.total,
        measured_allocated=measured["peak_allocated_bytes"],
        measured_reserved=measured["peak_reserved_bytes"],
        predicted_fits=memory.total <= cluster.gpu.memory_gib * GIB,
        predicted_tokens_per_second=step.tokens_per_s,
        measured_tokens_per_second=measured["tokens_per_second"],
    )


def ranking_groups(records: list[dict]) -> list[str]:
    """The groups of runs that each measure several layouts of one model, batch and GPU."""
    return sorted({r["case"]["group"] for r in records if r["case"]["group"].startswith("ranking")})


def record_search(record: dict, host_memory_gib: float | None = None) -> SearchResult:
    """The planner's search for the record's model and batch on its GPU (one, as measured), over every
    layout it considers, not only the measured one. The node's host memory is ``host_memory_gib``, else
    the measuring machine's where the record has it, else the planner's default."""
    host_bytes = record["measured"].get("host_memory_bytes")
    if host_memory_gib is None and host_bytes:
        host_memory_gib = host_bytes / GIB
    host = {} if host_memory_gib is None else {"host_memory_gib": host_memory_gib}
    cluster = Cluster(num_gpus=1, gpus_per_node=1, gpu=gpu_spec(GPU_NAMES[record["device"]]), **host)
    argv = tuple(without_layout_flags(record["flags"]))
    return search(PlanRequest(argv, record["tokenizer_vocab_size"], cluster))


def planner_search(records: list[dict], group: str) -> SearchResult:
    """The search for a ranking group's model, batch and GPU (see :func:`record_search`)."""
    return record_search(next(r for r in records if r["case"]["group"] == group))


def planner_first_choice(records: list[dict], group: str) -> Layout:
    return planner_search(records, group).feasible[0].layout


def ranking_regret(records: list[dict], group: str) -> tuple[str, str, float]:
    """(the measured case that is the planner's first choice, the fastest measured case of the group, how
    much slower the first choice measured than the fastest). KeyError: the first choice was not measured."""
    chosen = planner_first_choice(records, group)
    measured = {
        r["case"]["name"]: r["measured"]["tokens_per_second"]
        for r in records
        if r["case"]["group"] == group and not r["measured"]["oom"]
    }
    by_layout = {
        layout_of(rebuilt_config(r)): r["case"]["name"] for r in records if r["case"]["name"] in measured
    }
    if chosen not in by_layout:
        raise KeyError(f"the planner's first choice {chosen} was not measured: add it to bench/plan_check.py")
    name, fastest = by_layout[chosen], max(measured, key=measured.get)
    return name, fastest, 1 - measured[name] / measured[fastest]


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}"


def comparison_table(records: list[dict]) -> str:
    """A markdown table of every stored run (for bench/RESULTS.md) and the ranking's verdict."""
    comparisons = [compare(record) for record in records]
    lines = [
        "| case | allocated GiB, predicted / measured | reserved GiB, predicted / measured "
        "| tok/s, predicted / measured |",
        "|---|---|---|---|",
    ]
    for c in comparisons:
        fits = "" if c.predicted_fits else ", predicted not to fit"
        if c.oom:
            memory = f"{_gib(c.predicted_allocated)} / out of memory{fits}"
            reserved = f"{_gib(c.predicted_reserved)} / -"
            speed = f"{c.predicted_tokens_per_second:,.0f} / -"
        else:
            memory = (
                f"{_gib(c.predicted_allocated)} / {_gib(c.measured_allocated)} ({100 * c.memory_error:+.1f}%)"
            )
            reserved = (
                f"{_gib(c.predicted_reserved)} / {_gib(c.measured_reserved)} ({100 * c.reserved_error:+.1f}%)"
            )
            speed = (
                f"{c.predicted_tokens_per_second:,.0f} / {c.measured_tokens_per_second:,.0f} "
                f"({100 * c.speed_error:+.1f}%)"
            )
        lines.append(f"| {c.name} | {memory}{fits if not c.oom else ''} | {reserved} | {speed} |")
    for group in ranking_groups(records):
        chosen, fastest, regret = ranking_regret(records, group)
        lines.append(
            f"\n{group}: the planner's first choice is {chosen}, the fastest measured {fastest}; "
            f"the first choice measured {100 * regret:.1f}% slower."
        )
    return "\n".join(lines)


def print_comparison(records: list[dict]) -> None:
    print(comparison_table(records))
