"""bench/profile_gaps.py: GPU busy time and the host operations behind each idle stretch, from a trace."""

from __future__ import annotations

import json

import torch

from bench.profile_gaps import profile_steps, summarize_trace


def _event(category: str, name: str, start: float, duration: float) -> dict:
    return {"ph": "X", "cat": category, "name": name, "ts": start, "dur": duration}


def test_idle_time_is_charged_to_the_host_operations_open_then(tmp_path):
    # Two steps of 1 ms: kernels 0-400 and 600-1000 us; the 200 us gap falls in "optimizer > launch" in the
    # first step and in "guard check" in the second; a 3 us gap is below the threshold.
    events = [
        _event("kernel", "gemm", 0, 400),
        _event("kernel", "adam", 600, 400),
        _event("kernel", "gemm", 1000, 397),
        _event("kernel", "gemm", 1400, 200),
        _event("kernel", "adam", 1800, 200),
        _event("cpu_op", "optimizer", 350, 400),
        _event("cuda_runtime", "launch", 450, 100),
        _event("user_annotation", "launch", 450, 100),
        _event("cpu_op", "guard check", 1550, 300),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    report = summarize_trace(trace, steps=2)
    lines = report.splitlines()
    assert lines[0].startswith("GPU busy 0.80 ms per step, first to last kernel 1.00 ms per step")
    assert lines[1:] == ["    0.100 ms/step  optimizer > launch", "    0.100 ms/step  guard check"]


def test_profile_steps_runs_the_step_and_reports_without_a_gpu():
    calls = []
    report = profile_steps(lambda: calls.append(torch.ones(4).sum()), steps=3)
    assert len(calls) == 3
    assert "aten::sum" in report  # the operations table
    assert "no GPU activity in the trace" in report
