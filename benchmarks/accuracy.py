"""Accuracy on real data: float against value-set weights, snapset against larq and brevitas.

MNIST-1D (generated offline) and scikit-learn's digits; the same architectures in float and
with every weight in Sign, Binary {0, 1}, Ternary and [1, -1, 0.5, -0.5], trained with ``ste``
and with ``flip`` (Bop), 3 seeds (snapset's rows: ``snapset.demo``, as ``snapset bench
accuracy`` trains them); larq (in its own virtual environment, created from PyPI on first use)
and brevitas on the same data, architecture and recipe, from the runners in ``peers/``; the
MNIST-1D Sign CNN's time per epoch, interleaved across the libraries; the issue's goals.
Writes results/accuracy.md (``--quick``, a smoke run of one seed and two epochs, only prints).

    .venv/bin/python benchmarks/accuracy.py [--quick] [--seeds 3]

Each runner ``peers/<name>_run.py`` runs in a process of its own, with the Python that
``peers/<name>_python.py`` prints (a script that creates the peer's environment if needed) or
else this one: ``<runner> --data splits.npz --seeds 0 1 2 --recipe '{...}' [--only DATA
WEIGHTS METHOD]``. It prints one JSON object per row, or ``{"unavailable": "why"}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import write_result
from snapset import demo

PEERS = Path(__file__).resolve().parent / "peers"
TITLE = "# Accuracy: float against value-set weights, snapset against larq and brevitas"

TIMED = [
    ("snapset", "ste"),
    ("snapset", "flip"),
    ("brevitas", "ste"),
    ("larq", "ste"),
    ("larq", "flip"),
]
"""The MNIST-1D Sign CNN runs whose epoch times are compared, interleaved."""

GOALS = [
    ("MNIST-1D", "Sign {-1, 1}", 0.95),
    ("MNIST-1D", "Ternary {-1, 0, 1}", 0.97),
    ("MNIST-1D", "[1, -1, 0.5, -0.5]", 0.97),
    ("MNIST-1D", "Binary {0, 1}", 0.95),
    ("digits", "Sign {-1, 1}", 0.96),
]
"""The issue's accuracy goals: (data set, weights, least mean test accuracy)."""


def save_splits(data: dict[str, demo.Split], path: Path) -> Path:
    """Write the splits to one ``.npz`` (``<dataset>/x_train`` ...) for the peer runners."""
    arrays = {
        f"{name}/{part}": getattr(split, part).numpy()
        for name, split in data.items()
        for part in ("x_train", "y_train", "x_test", "y_test")
    }
    np.savez(path, **arrays)
    return path


def peer_rows(
    data_file: Path, seeds: list[int], recipe: demo.Recipe, plain: bool = False
) -> list[demo.Row]:
    """Every runner's rows, over all data sets, sets and methods it runs (``plain``: on the
    plain MNIST-1D CNN)."""
    rows: list[demo.Row] = []
    for runner in sorted(PEERS.glob("*_run.py")):
        print(f"peer {runner.name.removesuffix('_run.py')}: running {runner}", flush=True)
        rows += run_peer(runner, data_file, seeds, recipe, plain=plain)
    return rows


def run_peer(
    runner: Path,
    data_file: Path,
    seeds: list[int],
    recipe: demo.Recipe,
    only: tuple[str, str, str] | None = None,
    plain: bool = False,
) -> list[demo.Row]:
    """One runner's rows (``only``: the one row it names), or a row whose note says why none."""
    name = runner.name.removesuffix("_run.py")
    python, why = peer_python(name)
    if python is None:
        return [demo.Row(name, "-", "-", "-", note=f"not run: {why}")]
    command = [python, str(runner), "--data", str(data_file), "--seeds", *map(str, seeds)]
    command += ["--recipe", json.dumps(dataclasses.asdict(recipe))]
    if only is not None:
        command += ["--only", *only]
    if plain:
        command.append("--plain")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [demo.Row(name, "-", "-", "-", note=f"failed (exit {done.returncode}): {tail}")]
    rows = []
    for line in lines:
        record = json.loads(line)
        if "unavailable" in record:
            rows.append(demo.Row(name, "-", "-", "-", note=f"not run: {record['unavailable']}"))
        else:
            rows.append(demo.Row(**record))
    return rows


def peer_python(name: str) -> tuple[str | None, str]:
    """The Python that runs ``name``'s runner, or None and why it could not be set up."""
    setup = PEERS / f"{name}_python.py"
    if not setup.exists():
        return sys.executable, ""
    done = subprocess.run([sys.executable, str(setup)], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not Path(path).exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"its environment could not be set up: {tail}"
    return path, ""


def timing_rows(split: demo.Split, data_file: Path, repeats: int) -> list[tuple[str, str, float]]:
    """Median seconds per epoch of the MNIST-1D Sign CNN for each of :data:`TIMED`.

    Runs of 3 epochs take turns, ``repeats`` times, so that the load of a shared machine hits
    every library alike; each case's figure is the median over its repeats of the median epoch.
    """
    recipe = demo.Recipe(epochs=3)
    only = ("MNIST-1D", "Sign {-1, 1}")
    times: dict[tuple[str, str], list[float]] = {case: [] for case in TIMED}
    for repeat in range(repeats):
        for library, method in TIMED:
            if library == "snapset":
                model = demo.build("MNIST-1D", "sign", method, seed=repeat)
                times[library, method].append(demo.train(model, split, recipe).seconds_per_epoch)
                continue
            runner = PEERS / f"{library}_run.py"
            if runner.exists():
                rows = run_peer(runner, data_file, [repeat], recipe, (*only, method))
                times[library, method] += [t for row in rows for t in row.seconds_per_epoch]
        print(f"timing: repeat {repeat + 1} of {repeats} done", flush=True)
    return [
        (library, method, statistics.median(times[library, method]))
        for library, method in TIMED
        if times[library, method]
    ]


def not_run(rows: list[demo.Row]) -> str:
    """The peers that gave no row, and why."""
    notes = [f"- {row.library}: {row.note}" for row in rows if not row.accuracies]
    return "\n".join(["Peers that did not run:", "", *notes]) if notes else ""


def timing_section(timings: list[tuple[str, str, float]]) -> str:
    """The interleaved epoch times, against larq's ``ste`` run."""
    baseline = {(library, method): t for library, method, t in timings}.get(("larq", "ste"))
    lines = [
        "## Time per epoch, interleaved (MNIST-1D CNN, Sign weights)",
        "",
        "Runs of 3 epochs of each library take turns; the figure is the median over the turns"
        " of each run's median epoch, so that the shared machine's load hits all alike.",
        "",
        "| library | method | s/epoch | vs larq ste |",
        "|---|---|---:|---:|",
    ]
    for library, method, t in timings:
        ratio = f"{t / baseline:.2f}x" if baseline else "-"
        lines.append(f"| {library} | {method} | {t:.3f} | {ratio} |")
    return "\n".join(lines)


def goals_section(rows: list[demo.Row]) -> str:
    """Each goal of :data:`GOALS` against snapset's best row for it."""
    lines = ["## Goals", "", "| goal | best snapset row | result |", "|---|---|---|"]
    for dataset, weights, least in GOALS:
        mine = [r for r in rows if r.library == "snapset" and r.dataset == dataset
                and r.weights == weights and r.accuracies]  # fmt: skip
        if not mine:
            continue
        best = max(mine, key=lambda r: r.mean)
        verdict = "met" if best.mean >= least else "MISSED"
        lines.append(
            f"| {dataset} {weights} >= {least:.0%} | {best.method}: {best.mean:.1%} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    args = parser.parse_args()
    seeds, recipe = demo.accuracy_plan(args.seeds, args.quick)
    with demo.one_thread():  # small models: one thread is as fast, and fair to every peer
        started = time.perf_counter()
        data = demo.datasets()
        rows = demo.snapset_rows(data, seeds, recipe, progress=print)
        with tempfile.TemporaryDirectory() as folder:
            data_file = save_splits(data, Path(folder) / "splits.npz")
            rows += peer_rows(data_file, seeds, recipe)
            timings = timing_rows(data["MNIST-1D"], data_file, repeats=1 if args.quick else 5)
        sections = [not_run(rows), timing_section(timings), goals_section(rows)]
        text = demo.markdown(
            rows,
            seeds,
            recipe,
            time.perf_counter() - started,
            title=TITLE,
            sections=[section for section in sections if section],
        )
    print(text)
    if args.quick:  # a smoke run is no result: the committed table stays
        print("quick run: results/accuracy.md left as it is")
    else:
        write_result("accuracy.md", text)


if __name__ == "__main__":
    main()
