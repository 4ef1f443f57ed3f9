"""``snapset bench accuracy``: float against value-set weights on MNIST-1D and digits.

Each row trains the same architecture ([`build`][snapset.demo.build]) with the same recipe over
several seeds and reports the mean and spread of the test accuracy, the time per epoch and the
packed model size. The comparison with other libraries (larq, brevitas) is a benchmark of the
repository, ``benchmarks/accuracy.py``, which adds its rows to these with ``markdown``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._data import Split, datasets
from ._machine import machine_line
from ._models import SET_LABELS, build
from ._requirements import refusal
from ._train import Recipe, one_thread, size_text, train

PAPER_FLOAT = {"logistic": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91, "human": 0.96}
"""The MNIST-1D paper's test accuracies (float, default split)."""

CONFIGS = [("float", "-")] + [
    (name, method) for name in ("sign", "binary", "ternary", "four") for method in ("ste", "flip")
]
"""(set, method) pairs of snapset's rows; ``"-"``: float, no method."""

Config = tuple[str, str] | tuple[str, str, dict[str, Any]]
"""A row to train: (set, method), or (set, method, options of ``constrain_``)."""

PLAIN_CONFIGS: list[Config] = [
    ("float", "-"),
    *(
        (name, method)
        for name in ("sign", "binary", "ternary", "four")
        for method in ("ste", "stochastic")
    ),
    *((name, "ste", {"dither": 0.25}) for name in ("sign", "ternary")),
]
"""The plain network's rows: every latent method with its defaults, and ``ste`` with the
``dither`` that stops its oscillation on the planted problem."""

PLAIN_RECIPE = Recipe(schedule="cosine")
"""How the plain network trains: Adam at ``lr`` 0.01 with a cosine decay, as a user would."""

TITLE = "# Accuracy: float against value-set weights"


@dataclass
class Row:
    """One line of the table: a library, a data set, a set and a method, over seeds.

    Examples:
        >>> row = Row("snapset", "digits", "Sign {-1, 1}", "ste", [0.9, 1.0], [0.5, 0.7], 2048)
        >>> row.cells()[4:]
        ['95.0% ± 7.1%', '90.0% / 100.0%', '0.60', '2.0 KiB']
    """

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
            return [self.library, self.dataset, self.weights, self.method] + ["-"] * 4
        size = "-" if self.packed_bytes is None else size_text(self.packed_bytes)
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


def accuracy_plan(seeds: int = 3, quick: bool = False) -> tuple[list[int], Recipe]:
    """The seeds and the recipe of an accuracy run; ``quick``: one seed and two epochs.

    Examples:
        >>> accuracy_plan(3)[0]
        [0, 1, 2]
        >>> seeds, recipe = accuracy_plan(3, quick=True)
        >>> seeds, recipe.epochs
        ([0], 2)
    """
    if seeds < 1:
        raise ValueError(f"Invalid seeds: {seeds} (must be >= 1)")
    return ([0], Recipe(epochs=2)) if quick else (list(range(seeds)), Recipe())


def snapset_rows(
    data: dict[str, Split],
    seeds: Sequence[int],
    recipe: Recipe,
    progress: Callable[[str], Any] | None = None,
    configs: Sequence[Config] = CONFIGS,
    plain: bool = False,
) -> list[Row]:
    """Train every (data set, set, method) of ``configs`` once per seed (``plain``: the plain
    MNIST-1D CNN, ``build(..., plain=True)``); what a recipe adds to training (an average,
    BatchNorm re-estimated) ends the method's cell.

    Examples:
        >>> from snapset.demo import digits
        >>> d = digits()
        >>> small = Split("digits", d.x_train[:256], d.y_train[:256], d.x_test, d.y_test)
        >>> rows = snapset_rows({"digits": small}, [0], Recipe(epochs=1))
        >>> [(r.weights, r.method) for r in rows][:3]
        [('float32', '-'), ('Sign {-1, 1}', 'ste'), ('Sign {-1, 1}', 'flip')]
    """
    rows = []
    suffix = recipe.after_training
    for dataset, split in data.items():
        for set_name, method, *given in configs:
            options = given[0] if given else {}
            label = ", ".join([method, *(f"{k} {v}" for k, v in options.items())]) + suffix
            row = Row("snapset", dataset, SET_LABELS[set_name], label)
            for seed in seeds:
                chosen = "ste" if method == "-" else method
                model = build(dataset, set_name, chosen, seed, plain, **options)
                run = train(model, split, recipe, seed=seed)
                row.accuracies.append(run.accuracy)
                row.seconds_per_epoch.append(run.seconds_per_epoch)
                row.packed_bytes = run.packed_bytes
                if progress is not None:
                    progress(f"{dataset} {row.weights} {label} seed {seed}: {run.accuracy:.1%}")
            rows.append(row)
    return rows


def markdown(
    rows: Sequence[Row],
    seeds: Sequence[int],
    recipe: Recipe,
    seconds: float,
    *,
    title: str = TITLE,
    sections: Sequence[str] = (),
    recipe_section: str | None = None,
) -> str:
    """The results file: the table of the rows that ran, ``sections`` (markdown blocks), the
    paper's float table, the recipe (``recipe_section`` where the rows trained otherwise than
    the tricks networks of ``build``) and the machine (``machine_line``, so call it where the
    rows ran: on one thread).

    Examples:
        >>> row = Row("snapset", "digits", "Sign {-1, 1}", "ste", [0.9], [0.5], 2048)
        >>> text = markdown([row], [0], Recipe(), 60.0, sections=["## More", "", "text"])
        >>> text.splitlines()[0], text.count("| snapset | digits | Sign {-1, 1} | ste |")
        ('# Accuracy: float against value-set weights', 1)
        >>> text.index("## More") < text.index("## Recipe")
        True
    """
    lines = [
        title,
        "",
        f"{machine_line()}; {len(seeds)} seed(s) {list(seeds)}; whole run {seconds / 60:.1f} min.",
        "",
        "Test accuracy: mean ± standard deviation over the seeds; per seed: in seed order."
        " s/epoch: median wall time of one training epoch. packed: the model's size with"
        " set-valued weights packed at ceil(log2(k)) bits and everything else in float32"
        " (`snapset.torch.summary`).",
        "",
        *table(rows),
    ]
    for section in sections:
        lines += ["", section]
    lines += [
        "",
        "## The MNIST-1D paper's float baselines (default split)",
        "",
        "| " + " | ".join(PAPER_FLOAT) + " |",
        "|" + "|".join(["---:"] * len(PAPER_FLOAT)) + "|",
        "| " + " | ".join(f"{v:.0%}" for v in PAPER_FLOAT.values()) + " |",
        "",
    ]
    if recipe_section is not None:
        return "\n".join([*lines, recipe_section.rstrip("\n")]) + "\n"
    lines += [
        "## Recipe (the same for every library)",
        "",
        f"- {recipe.epochs} epochs, batch {recipe.batch}, cross-entropy; Adam with a one-cycle"
        f" learning rate peaking at {recipe.lr} for float and latent weights. Flip weights:"
        f" snapset's Bop2ndOrder (threshold {recipe.threshold}, gamma {recipe.gamma}, sigma"
        f" {recipe.sigma}), larq's Bop (threshold {recipe.bop_threshold}, gamma"
        f" {recipe.bop_gamma}), each rate decaying linearly to {recipe.gamma_floor:g} of it.",
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


def table(rows: Sequence[Row]) -> list[str]:
    """The markdown table of the rows that ran, one line each.

    Examples:
        >>> table([Row("snapset", "digits", "Sign {-1, 1}", "ste", [0.9], [0.5], 2048)])[2]
        '| snapset | digits | Sign {-1, 1} | ste | 90.0% ± 0.0% | 90.0% | 0.50 | 2.0 KiB |'
    """
    header = ["library", "data", "weights", "method", "test accuracy", "per seed", "s/epoch"]
    header.append("packed")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 4) + "|"]
    return lines + ["| " + " | ".join(row.cells()) + " |" for row in rows if row.accuracies]


def run_accuracy(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "snapset-accuracy.md",
    echo: Callable[[str], Any] = print,
) -> int:
    """Train snapset's rows of the accuracy table, print it and write it to ``out``.

    Returns 0; before any training, 1 when a package it needs is missing (it names
    ``pip install 'snapset[demo]'``) and 2 for an ``out`` that cannot be written.
    ``quick``: one seed and two epochs, a smoke run.

    Examples:
        >>> import tempfile
        >>> run_accuracy(out=tempfile.mkdtemp())  # doctest: +ELLIPSIS
        snapset bench accuracy writes a markdown file; ... is a folder: pass another --out
        2
    """
    path = Path(out)
    status, why = refusal("bench accuracy", path)
    if status:
        echo(why)
        return status
    seed_list, recipe = accuracy_plan(seeds, quick)
    with one_thread():
        started = time.perf_counter()
        rows = snapset_rows(datasets(), seed_list, recipe, progress=echo)
        text = markdown(rows, seed_list, recipe, time.perf_counter() - started)
    echo(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    echo(f"wrote {path}")
    return 0
