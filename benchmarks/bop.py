"""Bop's step time against Adam, and the cost of flip-ratio bookkeeping.

1. One optimizer step on the same 10M parameters: ``snapset.torch.Bop`` (``abs`` and ``rel``
   thresholds) and ``snapset.torch.Bop2ndOrder``, flip-constrained, for four value sets, against
   ``torch.optim.Adam(foreach=True)`` (float). Goal: at most 1.2x Adam for every set. Each Bop
   runs twice: with its compiled one-pass step (numba, the default on the CPU) and with torch's
   operations alone (what runs without numba, on GPUs and under ``torch.compile``).
2. A training step of a 1024x1024 layer at batch 256 (forward, backward, optimizer step), with
   ``FlipTracker.update()`` beside it, for flip layers (Bop) and latent ones (STE, Adam), Sign
   and Ternary. Goal: bookkeeping at most 2% of the step.

Both parts run at torch's default thread count and at one thread (the compiled step splits a
parameter between torch's threads, the tracker's sweep runs on one). Baselines run in the same
process, interleaved with the candidates, median of several repeats. Prints markdown tables
and writes them, with date, CPU and versions, to results/bop.md.

    .venv/bin/python benchmarks/bop.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result

N = 10_000_000
REPEATS = 9
TRACKER_REPEATS = 31
SETS = [
    ("{0, 1}", snapset.Binary()),
    ("{-1, 0, 1}", snapset.Ternary()),
    ("{-1, -0.5, 0.5, 1}", snapset.ValueSet([1, -1, 0.5, -0.5])),
    ("{0, 1, ..., 7}", snapset.ValueSet(range(8))),
]


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each case, timed in turns so that load changes hit all alike."""
    for run in cases.values():
        run()  # warm up: allocations, lazy state, compiled kernels
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@contextmanager
def torch_operations() -> Iterator[None]:
    """Bop without its compiled step: what runs where numba is missing."""
    os.environ["SNAPSET_KERNELS"] = "numpy"
    try:
        yield
    finally:
        del os.environ["SNAPSET_KERNELS"]


def without_kernels(step: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with torch_operations():
            step()

    return run


def optimizer_steps() -> list[tuple[str, str, float, float, float]]:
    """(set, optimizer, Adam ms, compiled ratio, torch-operations ratio) for every case."""
    torch.manual_seed(0)
    float_param = nn.Parameter(torch.randn(N))
    float_param.grad = torch.randn(N) * 1e-3
    adam = torch.optim.Adam([float_param], lr=1e-3, foreach=True)
    cases: dict[str, Callable[[], object]] = {"adam": adam.step}
    layers = []  # Bop finds a parameter's set through its module: keep the modules alive
    for label, values in SETS:
        layer = st.Multiplier(N, values, method="flip")
        layers.append(layer)
        stored = layer.parametrizations.weight.original
        stored.grad = torch.randn(N) * 1e-3
        optimizers = {
            "Bop, abs": st.Bop([stored], threshold=1e-3, gamma=1e-2),
            "Bop, rel": st.Bop([stored], threshold=0.5, gamma=1e-2, threshold_mode="rel"),
            "Bop2ndOrder": st.Bop2ndOrder([stored]),
        }
        for name, optimizer in optimizers.items():
            cases[f"{label}|{name}|compiled"] = optimizer.step
            cases[f"{label}|{name}|torch"] = without_kernels(optimizer.step)
    medians = interleaved(cases, REPEATS)
    base = medians["adam"]
    rows = []
    for key, seconds in medians.items():
        if key.endswith("|compiled"):
            label, name, _ = key.split("|")
            torch_seconds = medians[f"{label}|{name}|torch"]
            rows.append((label, name, base * 1e3, seconds / base, torch_seconds / base))
    return rows


def bookkeeping_row(values: snapset.ValueSet, method: str) -> tuple[float, float, float, float]:
    """A training step of a 1024x1024 layer, FlipTracker.update() beside it, and the floor of
    any tracker that reads the stored tensor: one pass over it (``sum``)."""
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    st.constrain(layer, "weight", values, method=method)
    groups = st.param_groups(layer)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(groups.latent + groups.other)]
    if groups.flip:
        optimizers.append(st.Bop2ndOrder(groups.flip))
    x, target = torch.randn(256, 1024), torch.randn(256, 1024)
    tracker = st.FlipTracker(layer)
    with torch_operations():  # a tracker made without numba keeps torch's codes
        torch_tracker = st.FlipTracker(layer)

    def train_step() -> None:
        for opt in optimizers:
            opt.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        for opt in optimizers:
            opt.step()

    stored = layer.parametrizations.weight.original.detach()
    # Each one timed right after a training step, as in a training loop.
    after_step = {
        "update": tracker.update,
        "torch update": without_kernels(torch_tracker.update),
        "floor": stored.sum,
    }
    times: dict[str, list[float]] = {name: [] for name in ["step", *after_step]}
    for repeat in range(TRACKER_REPEATS + 1):
        for name, run in after_step.items():
            start = time.perf_counter()
            train_step()
            middle = time.perf_counter()
            run()
            if repeat:  # the first round warms up
                times["step"].append(middle - start)
                times[name].append(time.perf_counter() - middle)
    step = statistics.median(times["step"])
    shares = (statistics.median(times[key]) / step for key in after_step)
    return (step * 1e3, *shares)


def tables() -> list[str]:
    steps = optimizer_steps()
    lines = [
        f"### {torch.get_num_threads()} torch thread(s)",
        "",
        f"One optimizer step on {N:,} parameters; ratio = step time / Adam(foreach=True)'s on "
        f"float32 (goal: at most 1.2x). Adam: {steps[0][2]:.1f} ms.",
        "",
        "| set | optimizer | compiled step | torch operations |",
        "| --- | --- | ---: | ---: |",
        *(f"| {s} | {name} | {ratio:.2f}x | {slow:.2f}x |" for s, name, _, ratio, slow in steps),
        "",
        "`FlipTracker.update()` after a training step of a 1024x1024 layer at batch 256 "
        "(flip: Bop2ndOrder; latent: Adam); share of the step (goal: at most 2%). floor: one "
        "read of the stored tensor (`sum`), what any tracker that looks at the values pays, "
        "timed after the same steps.",
        "",
        "| set | method | step (ms) | update, compiled | update, torch operations | floor |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, values in SETS[:2]:
        for method in ("flip", "ste"):
            step, *shares = bookkeeping_row(values, method)
            cells = " | ".join(f"{share:.1%}" for share in shares)
            lines.append(f"| {label} | {method} | {step:.2f} | {cells} |")
    return [*lines, ""]


def main() -> None:
    lines = [
        "# Bop benchmark",
        "",
        f"{machine_line('numba')}; median of {REPEATS} (optimizer) and {TRACKER_REPEATS} "
        "(bookkeeping) interleaved repeats.",
        "",
        "The compiled step (numba, one pass over the entries, split between torch's threads) is "
        "what runs on the CPU with `snapset[kernels]`; the torch operations run without numba, "
        "on GPUs and under `torch.compile`. Both give the same bits.",
        "",
    ]
    default = torch.get_num_threads()
    lines += tables()
    if default != 1:
        torch.set_num_threads(1)
        try:
            lines += tables()
        finally:
            torch.set_num_threads(default)
    text = "\n".join(lines)
    print(text)
    write_result("bop.md", text)


if __name__ == "__main__":
    main()
