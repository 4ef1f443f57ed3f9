"""``snapset bench accuracy``: float against value-set weights on MNIST-1D and digits.

Each row trains the same architecture (:func:`~snapset.torch._experiments.build`) with the same
recipe over several seeds and reports the mean and spread of the test accuracy, the time per
epoch and the packed model size. Peer libraries (larq, brevitas) run from runner scripts in a
``peers`` folder of a checkout (``benchmarks/peers``), each in a process of its own, on the same
data (handed over as an ``.npz`` file), the same architecture and the same recipe.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._machine import cpu_name
from . import _experiments as ex
from ._diagnostics import _size

PAPER_FLOAT = {"logistic": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91, "human": 0.96}
"""The MNIST-1D paper's test accuracies (float, default split)."""

CONFIGS = [("float", "-")] + [
    (name, method) for name in ("sign", "binary", "ternary", "four") for method in ("ste", "flip")
]
"""(set, method) pairs of snapset's rows; ``"-"``: float, no method."""


@dataclass
class Row:
    """One line of the table: a library, a data set, a set and a method, over seeds."""

    library: str
    dataset: str
    weights: str
    method: str
    accuracies: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    packed_bytes: int | None = None
    note: str = ""

    @property
    def mean(self) -> float:
        """Mean test accuracy over the seeds."""
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        """Standard deviation of the test accuracy over the seeds (0 for one seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def cells(self) -> list[str]:
        """The row's markdown cells."""
        if not self.accuracies:
            return [self.library, self.dataset, self.weights, self.method] + ["-"] * 5
        size = "-" if self.packed_bytes is None else _size(self.packed_bytes)
        return [
            self.library,
            self.dataset,
            self.weights,
            self.method,
            f"{self.mean:.1%} ± {self.spread:.1%}",
            " / ".join(f"{a:.1%}" for a in self.accuracies),
            f"{statistics.median(self.seconds_per_epoch):.2f}",
            size,
        ]


def snapset_rows(
    data: dict[str, ex.Split],
    seeds: list[int],
    recipe: ex.Recipe,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Train every (data set, set, method) of :data:`CONFIGS` once per seed.

    Example:
        >>> d = ex.digits()
        >>> small = ex.Split("digits", d.x_train[:256], d.y_train[:256], d.x_test, d.y_test)
        >>> rows = snapset_rows({"digits": small}, [0], ex.Recipe(epochs=1))
        >>> [(r.weights, r.method) for r in rows][:3]
        [('float32', '-'), ('Sign {-1, 1}', 'ste'), ('Sign {-1, 1}', 'flip')]
    """
    rows = []
    for dataset, split in data.items():
        for set_name, method in CONFIGS:
            row = Row("snapset", dataset, ex.SET_LABELS[set_name], method)
            for seed in seeds:
                model = ex.build(dataset, set_name, "ste" if method == "-" else method, seed)
                run = ex.train(model, split, recipe, seed=seed)
                row.accuracies.append(run.accuracy)
                row.seconds_per_epoch.append(run.seconds_per_epoch)
                row.packed_bytes = run.packed_bytes
                if progress is not None:
                    progress(f"{dataset} {row.weights} {method} seed {seed}: {run.accuracy:.1%}")
            rows.append(row)
    return rows


def save_splits(data: dict[str, ex.Split], path: Path) -> Path:
    """Write the splits to one ``.npz`` (``<dataset>/x_train`` ...) for the peer runners."""
    arrays = {
        f"{name}/{part}": getattr(split, part).numpy()
        for name, split in data.items()
        for part in ("x_train", "y_train", "x_test", "y_test")
    }
    np.savez(path, **arrays)
    return path


def peer_rows(
    peers: Path, data_file: Path, seeds: list[int], recipe: ex.Recipe, echo: Callable[[str], Any]
) -> list[Row]:
    """Run every ``<peers>/*_run.py``; each prints JSON rows or ``{"unavailable": why}``.

    A runner picks its own interpreter: ``<peers>/<name>_python.py`` (a script that prints a
    Python path, creating an environment if needed) when it exists, else this one.
    """
    rows: list[Row] = []
    for runner in sorted(peers.glob("*_run.py")):
        name = runner.name.removesuffix("_run.py")
        echo(f"peer {name}: running {runner}")
        rows += _run_peer(peers, runner, data_file, seeds, recipe)
    return rows


def _run_peer(
    peers: Path,
    runner: Path,
    data_file: Path,
    seeds: list[int],
    recipe: ex.Recipe,
    only: tuple[str, str, str] | None = None,
) -> list[Row]:
    name = runner.name.removesuffix("_run.py")
    python, why = _peer_python(peers, name)
    if python is None:
        return [Row(name, "-", "-", "-", note=f"not run: {why}")]
    command = [python, str(runner), "--data", str(data_file), "--seeds", *map(str, seeds)]
    command += ["--recipe", json.dumps(recipe.__dict__)]
    if only is not None:
        command += ["--only", *only]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Row(name, "-", "-", "-", note=f"failed (exit {done.returncode}): {tail}")]
    rows = []
    for line in lines:
        record = json.loads(line)
        if "unavailable" in record:
            rows.append(Row(name, "-", "-", "-", note=f"not run: {record['unavailable']}"))
        else:
            rows.append(Row(**record))
    return rows


TIMED = [
    ("snapset", "ste"),
    ("snapset", "flip"),
    ("brevitas", "ste"),
    ("larq", "ste"),
    ("larq", "flip"),
]
"""The MNIST-1D Sign CNN runs whose epoch times are compared, interleaved."""


def timing_rows(
    split: ex.Split,
    peers: Path | None,
    data_file: Path | None,
    repeats: int,
    echo: Callable[[str], Any],
) -> list[tuple[str, str, float]]:
    """Median seconds per epoch of the MNIST-1D Sign CNN for each of :data:`TIMED`.

    Runs of 3 epochs take turns, ``repeats`` times, so that the load of a shared machine hits
    every library alike; each case's figure is the median over its repeats of the median epoch.
    """
    recipe = ex.Recipe(epochs=3)
    only = ("MNIST-1D", "Sign {-1, 1}")
    times: dict[tuple[str, str], list[float]] = {case: [] for case in TIMED}
    for repeat in range(repeats):
        for library, method in TIMED:
            if library == "snapset":
                model = ex.build("MNIST-1D", "sign", method, seed=repeat)
                times[library, method].append(ex.train(model, split, recipe).seconds_per_epoch)
                continue
            if peers is None or data_file is None or not (peers / f"{library}_run.py").exists():
                continue
            runner = peers / f"{library}_run.py"
            rows = _run_peer(peers, runner, data_file, [repeat], recipe, (*only, method))
            times[library, method] += [t for row in rows for t in row.seconds_per_epoch]
        echo(f"timing: repeat {repeat + 1} of {repeats} done")
    return [
        (library, method, statistics.median(times[library, method]))
        for library, method in TIMED
        if times[library, method]
    ]


def _peer_python(peers: Path, name: str) -> tuple[str | None, str]:
    setup = peers / f"{name}_python.py"
    if not setup.exists():
        return sys.executable, ""
    done = subprocess.run([sys.executable, str(setup)], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not Path(path).exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"its environment could not be set up: {tail}"
    return path, ""


GOALS = [
    ("MNIST-1D", "Sign {-1, 1}", 0.95),
    ("MNIST-1D", "Ternary {-1, 0, 1}", 0.97),
    ("MNIST-1D", "[1, -1, 0.5, -0.5]", 0.97),
    ("MNIST-1D", "Binary {0, 1}", 0.95),
    ("digits", "Sign {-1, 1}", 0.96),
]
"""The issue's accuracy goals: (data set, weights, least mean test accuracy)."""


def markdown(
    rows: list[Row],
    timings: list[tuple[str, str, float]],
    seeds: list[int],
    recipe: ex.Recipe,
    seconds: float,
) -> str:
    """The results file: the table, the timings, the goals, the paper's float table, the
    recipe and the machine."""
    header = ["library", "data", "weights", "method", "test accuracy", "per seed", "s/epoch"]
    header.append("packed")
    lines = [
        "# Accuracy: float against value-set weights, snapset against larq and brevitas",
        "",
        f"{datetime.date.today().isoformat()}, {cpu_name()}, Python {platform.python_version()},"
        f" torch {torch.__version__}, {torch.get_num_threads()} thread(s);"
        f" {len(seeds)} seed(s) {seeds}; whole run {seconds / 60:.1f} min.",
        "",
        "Test accuracy: mean ± standard deviation over the seeds; per seed: in seed order."
        " s/epoch: median wall time of one training epoch. packed: the model's size with"
        " set-valued weights packed at ceil(log2(k)) bits and everything else in float32"
        " (`snapset.torch.summary`).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * 4) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows if row.accuracies]
    notes = [row for row in rows if not row.accuracies]
    if notes:
        lines += ["", "Peers that did not run:", ""]
        lines += [f"- {row.library}: {row.note}" for row in notes]
    baseline = {(lib, method): t for lib, method, t in timings}.get(("larq", "ste"))
    lines += [
        "",
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
    lines += ["", "## Goals", "", "| goal | best snapset row | result |", "|---|---|---|"]
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
    lines += [
        "",
        "## The MNIST-1D paper's float baselines (default split)",
        "",
        "| " + " | ".join(PAPER_FLOAT) + " |",
        "|" + "|".join(["---:"] * len(PAPER_FLOAT)) + "|",
        "| " + " | ".join(f"{v:.0%}" for v in PAPER_FLOAT.values()) + " |",
        "",
        "## Recipe (the same for every library)",
        "",
        f"- {recipe.epochs} epochs, batch {recipe.batch}, cross-entropy; Adam with a one-cycle"
        f" learning rate peaking at {recipe.lr} for float and latent weights; Bop (threshold"
        f" {recipe.threshold}, gamma {recipe.gamma} decaying linearly to"
        f" {recipe.gamma_floor:g} of it) for flip weights.",
        "- MNIST-1D CNN: input [x, -x], three Conv1d (64 channels, kernel 5, stride 1/2/2, no"
        " bias), each followed by BatchNorm, ReLU and a parameter-free centring over channels,"
        " then a linear layer to 10 classes and BatchNorm. digits MLP: input [x, -x], two"
        " linear layers of 256 with the same BatchNorm/ReLU/centring, a linear head and"
        " BatchNorm. Every conv and linear weight is in the set (first and last layers"
        " included); BatchNorm stays float. No data augmentation.",
        "- Data: MNIST-1D generated offline by `mnist1d` (4000/1000, seed 42); scikit-learn's"
        " 8x8 digits, stratified 1437/360 split (random_state 0), pixels / 16.",
    ]
    return "\n".join(lines) + "\n"


def accuracy_command(
    seeds: int = 3,
    quick: bool = False,
    out: Path = Path("benchmarks/results/accuracy.md"),
    peers: Path | None = Path("benchmarks/peers"),
    echo: Callable[[str], Any] = print,
) -> int:
    """Run the accuracy benchmark, print the table and write it to ``out``; return 0.

    ``quick``: one seed and two epochs, a smoke run of the whole pipeline.
    """
    if seeds < 1:
        raise ValueError(f"Invalid seeds: {seeds} (must be >= 1)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is as fast, and fair to every peer
    try:
        started = time.perf_counter()
        seed_list = [0] if quick else list(range(seeds))
        recipe = ex.Recipe(epochs=2) if quick else ex.Recipe()
        data = {"MNIST-1D": ex.mnist1d(), "digits": ex.digits()}
        rows = snapset_rows(data, seed_list, recipe, progress=echo)
        repeats = 1 if quick else 5
        if peers is not None and peers.is_dir():
            with tempfile.TemporaryDirectory() as folder:
                data_file = save_splits(data, Path(folder) / "splits.npz")
                rows += peer_rows(peers, data_file, seed_list, recipe, echo)
                timings = timing_rows(data["MNIST-1D"], peers, data_file, repeats, echo)
        else:
            echo(f"no peer runners at {peers}: larq and brevitas rows left out")
            timings = timing_rows(data["MNIST-1D"], None, None, repeats, echo)
        text = markdown(rows, timings, seed_list, recipe, time.perf_counter() - started)
        echo(text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        echo(f"wrote {out}")
        return 0
    finally:
        torch.set_num_threads(threads)
