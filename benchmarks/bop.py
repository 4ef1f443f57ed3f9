"""Bop's step time against Adam, and the cost of flip-ratio bookkeeping.

1. One optimizer step on the same 10M parameters: ``snapset.torch.Bop`` (flip-constrained, for
   three value sets) against ``torch.optim.Adam(foreach=True)`` (float). Goal: no slower.
2. A training step of a 1024x1024 layer at batch 256 (forward, backward, optimizer step), with
   and without ``FlipTracker.update()`` after it, for a flip layer (Bop) and a latent one (STE,
   Adam). Goal: bookkeeping under 5% of the step.

Baselines run in the same process, interleaved with the candidates, median of several repeats.
Prints a markdown table and writes it, with date, CPU and versions, to results/bop.md.

    .venv/bin/python benchmarks/bop.py
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import cpu_name, write_result

N = 10_000_000
REPEATS = 15


def interleaved(cases: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of each case, timed in turns so that load changes hit all alike."""
    for run in cases.values():
        run()  # warm up: allocations, lazy state
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def optimizer_steps() -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    float_param = nn.Parameter(torch.randn(N))
    float_param.grad = torch.randn(N) * 1e-3
    adam = torch.optim.Adam([float_param], lr=1e-3, foreach=True)
    cases: dict[str, Callable[[], object]] = {"Adam(foreach=True)": adam.step}
    layers = []  # Bop finds a parameter's set through its module: keep the modules alive
    for label, values in [
        ("{0, 1}", snapset.Binary()),
        ("{-1, 0, 1}", snapset.Ternary()),
        ("{-1, -0.5, 0.5, 1}", snapset.ValueSet([1, -1, 0.5, -0.5])),
    ]:
        layer = st.Multiplier(N, values, method="flip")
        layers.append(layer)
        stored = layer.parametrizations.weight.original
        stored.grad = torch.randn(N) * 1e-3
        for mode in ("abs", "rel"):
            bop = st.Bop([stored], threshold=1e-3, gamma=1e-2, threshold_mode=mode)
            cases[f"Bop {label}, {mode}"] = bop.step
    medians = interleaved(cases)
    base = medians.pop("Adam(foreach=True)")
    return [("Adam(foreach=True), float", base, 1.0)] + [
        (name, seconds, seconds / base) for name, seconds in medians.items()
    ]


def bookkeeping_row(method: str) -> tuple[str, float, float, float]:
    """A training step of a Sign-valued 1024x1024 layer, and FlipTracker.update() beside it."""
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    st.constrain(layer, "weight", snapset.Sign(), method=method)
    groups = st.param_groups(layer)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(groups.latent + groups.other)]
    if groups.flip:
        optimizers.append(st.Bop(groups.flip, threshold=1e-6, gamma=1e-3))
    x, target = torch.randn(256, 1024), torch.randn(256, 1024)
    tracker = st.FlipTracker(layer)

    def train_step() -> None:
        for opt in optimizers:
            opt.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        for opt in optimizers:
            opt.step()

    def tracked_step() -> None:
        train_step()
        tracker.update()

    medians = interleaved(
        {"plain": train_step, "tracked": tracked_step, "update": tracker.update}, 31
    )
    name = f"{method} (Sign), {'Bop' if method == 'flip' else 'Adam'}"
    return name, medians["plain"], medians["update"], medians["update"] / medians["plain"]


def bookkeeping() -> list[tuple[str, float, float, float]]:
    return [bookkeeping_row(method) for method in ("flip", "ste")]


def main() -> None:
    steps = optimizer_steps()
    books = bookkeeping()
    lines = [
        "# Bop benchmark",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- CPU: {cpu_name()}, {torch.get_num_threads()} torch threads",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"snapset {snapset.__version__}",
        f"- median of {REPEATS} (optimizer) and 31 (bookkeeping) interleaved repeats",
        "",
        f"## One optimizer step on {N:,} parameters (goal: Bop no slower than Adam)",
        "",
        "| optimizer | step (ms) | ratio to Adam |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {seconds * 1e3:.1f} | {ratio:.2f} |" for name, seconds, ratio in steps),
        "",
        "## Flip-ratio bookkeeping, 1024x1024 layer at batch 256 (goal: under 5% of a step)",
        "",
        "| layer | training step (ms) | FlipTracker.update (ms) | overhead |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {step * 1e3:.2f} | {update * 1e3:.3f} | {share:.1%} |"
            for name, step, update, share in books
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_result("bop.md", text)


if __name__ == "__main__":
    main()
