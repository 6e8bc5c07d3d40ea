"""The planner's text: the ranked table of feasible layouts, the step-time parts of the best one, and why
the others were rejected, grouped by rule."""

from __future__ import annotations

import textwrap
from collections import defaultdict

from megatron.planning.gpus import GIB
from megatron.planning.layout import Layout
from megatron.planning.search import Candidate, Rejection, SearchResult, smallest_shortfall

_MEMORY_PARTS = (
    "parameters",
    "gradients",
    "optimizer_states",
    "activations",
    "logits",
    "temporary",
    "fragmentation",
)
_WIDTH = 110
_HEADER = (
    f"{'#':>3} {'T':>2} {'P':>2} {'D':>3} {'U':>2} {'ZeRO':>4} {'mbs':>3} {'GA':>4} {'recompute':<9} "
    f"{'offload':<9} {'GiB/GPU':>7} {'param':>6} {'grad':>5} {'optim':>5} {'activ':>5} {'logit':>5} "
    f"{'temp':>5} {'frag':>5} {'step s':>7} {'tokens/s':>9} {'MFU':>5}"
)


def offload_name(layout: Layout) -> str:
    if layout.offload_parameters:
        return "opt+param"
    return "optimizer" if layout.offload_optimizer else "-"


def describe(layout: Layout) -> str:
    """One layout on one line, in the planner's terms."""
    return (
        f"T={layout.tensor_parallel} P={layout.pipeline_parallel} D={layout.data_parallel} "
        f"U={layout.ulysses} ZeRO={layout.zero_stage} micro={layout.micro_batch_size} "
        f"GA={layout.gradient_accumulation_steps} recompute={layout.recompute} offload={offload_name(layout)}"
    )


def table(candidates: list[Candidate], top: int) -> str:
    lines = [_HEADER]
    for rank, candidate in enumerate(candidates[:top], start=1):
        layout, memory, step = candidate.layout, candidate.memory, candidate.step
        parts = " ".join(
            f"{getattr(memory, name) / GIB:{6 if name == 'parameters' else 5}.1f}" for name in _MEMORY_PARTS
        )
        lines.append(
            f"{rank:>3} {layout.tensor_parallel:>2} {layout.pipeline_parallel:>2} {layout.data_parallel:>3} "
            f"{layout.ulysses:>2} {layout.zero_stage:>4} {layout.micro_batch_size:>3} "
            f"{layout.gradient_accumulation_steps:>4} {layout.recompute:<9} {offload_name(layout):<9} "
            f"{memory.total / GIB:>7.1f} {parts} {step.total:>7.2f} {step.tokens_per_s:>9,.0f} "
            f"{step.mfu:>5.1%}"
        )
    return "\n".join(lines)


def step_parts(candidate: Candidate) -> str:
    """Where the best layout's step goes, so the user sees what a different layout would have to beat."""
    step = candidate.step
    parts = {
        "compute": step.compute,
        "memory-bound kernels and launches": step.memory_bound,
        "tensor-parallel": step.tensor_parallel,
        "ulysses": step.ulysses,
        "expert all-to-all": step.expert_all_to_all,
        "pipeline p2p": step.pipeline_p2p,
        "bubble": step.bubble,
        "data-parallel/ZeRO": step.data_parallel,
        "optimizer": step.optimizer,
        "offload": step.offload,
    }
    shown = ", ".join(f"{name} {seconds:.3f}" for name, seconds in parts.items() if seconds > 0)
    return f"step of #1, {step.total:.2f} s: {shown}"


def rejections(rejected: list[Rejection]) -> str:
    """One line per rule: how many layouts it rejected and one of them with the toolkit's message (its
    first sentence) or, for memory, the one closest to fitting."""
    groups: dict[str, list[Rejection]] = defaultdict(list)
    for rejection in rejected:
        groups[rejection.rule].append(rejection)
    lines = [f"rejected: {len(rejected)} layouts"]
    for rule, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        over = [r for r in members if r.shortfall is not None]
        example = min(over, key=lambda r: r.shortfall) if over else members[0]
        detail = textwrap.fill(
            example.detail.split(". ", 1)[0], _WIDTH, initial_indent=" " * 11, subsequent_indent=" " * 11
        )
        closest = "closest" if over else "e.g."
        lines += [f"  {len(members):>5}  {rule}", f"         {closest} {describe(example.layout)}:", detail]
    return "\n".join(lines)


def render(result: SearchResult, top: int = 10) -> str:
    """The whole report: the table (or why nothing fits), then the rejections."""
    out = []
    if result.feasible:
        out.append(f"feasible: {len(result.feasible)} layouts, ranked by predicted tokens/s (top {top})")
        out.append(table(result.feasible, top))
        out.append(step_parts(result.feasible[0]))
    else:
        out.append(no_fit(result))
    out.append(rejections(result.rejected))
    return "\n\n".join(out)


def no_fit(result: SearchResult) -> str:
    closest = smallest_shortfall(result)
    if closest is None:
        return "no layout fits: every layout breaks a rule (below)."
    return (
        f"no layout fits: the closest, {describe(closest.layout)}, {closest.detail} "
        f"(short by {closest.shortfall / GIB:.1f} GiB). Add GPUs, use GPUs with more memory, or shrink the "
        "model or its sequence."
    )
