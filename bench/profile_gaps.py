"""Where a training step leaves the GPU idle: the GPU's busy time and, for each idle stretch, what the host
was running then, from a ``torch.profiler`` trace with CPU and CUDA activities.

A step whose GPU work is shorter than its wall time is bound by the host (launches, Python, syncs). The
kernel table says what the GPU does; this says what the GPU waits on, by the host operations open at the
middle of each idle stretch (outermost first), summed over the profiled steps.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATEGORIES = {"cpu_op", "user_annotation", "python_function"}


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _host_stack_at(moment: float, host_events: list[dict], depth: int) -> str:
    """The names of the host operations open at ``moment``, outermost first (the first ``depth``)."""
    open_events = [e for e in host_events if e["ts"] <= moment <= e["ts"] + e["dur"]]
    open_events.sort(key=lambda e: (e["ts"], -e["dur"]))
    return " > ".join(e["name"][:60] for e in open_events[:depth]) or "(no host operation)"


def summarize_trace(trace_path: str | Path, steps: int, min_gap_us: float = 5.0, depth: int = 3) -> str:
    """A text report of ``steps`` profiled steps: GPU busy and idle time per step and the host operations
    behind the idle time, largest first."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    gpu = _merged([(e["ts"], e["ts"] + e["dur"]) for e in complete if e.get("cat") in GPU_CATEGORIES])
    if not gpu:
        return "no GPU activity in the trace"
    host = [e for e in complete if e.get("cat") in HOST_CATEGORIES]
    busy = sum(end - start for start, end in gpu)
    span = gpu[-1][1] - gpu[0][0]
    idle_by_stack: dict[str, float] = defaultdict(float)
    for (_, previous_end), (next_start, _) in zip(gpu, gpu[1:]):
        gap = next_start - previous_end
        if gap >= min_gap_us:
            idle_by_stack[_host_stack_at((previous_end + next_start) / 2, host, depth)] += gap
    lines = [
        f"GPU busy {busy / steps / 1000:.2f} ms per step, first to last kernel {span / steps / 1000:.2f} ms "
        f"per step; idle stretches of {min_gap_us:g} us or more, by the host operations open then:"
    ]
    for stack, idle in sorted(idle_by_stack.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"  {idle / steps / 1000:7.3f} ms/step  {stack}")
    return "\n".join(lines)


def profile_steps(step: Callable[[], object], steps: int) -> str:
    """Run ``step`` ``steps`` times under torch.profiler (CPU and CUDA); returns the top GPU operations and
    :func:`summarize_trace` of the trace, which stays in a temporary folder for a trace viewer."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    trace = Path(tempfile.mkdtemp()) / "trace.json"
    profiler.export_chrome_trace(str(trace))
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    return f"{table}\n{summarize_trace(trace, steps)}\n(trace: {trace})"
