"""One setting for every problem: the second-moment Bop's defaults, untuned, across problems.

``snapset.torch.Bop2ndOrder()`` with its defaults (``snapset._spec.BOP2_DEFAULTS``) against the
first-moment ``Bop`` (larq's defaults, and the relative threshold) on:

- planted problems learned by the optimizer alone, with no schedule (3 seeds):
  the docs' examples (full batch: a {0, 1} 8x16 matrix from 512 samples with noise 0.1, and a
  64-entry multiplier over [1, -1, 0.5, -0.5]), and ``bop_momentum.py``'s noisy ones
  (mini-batches of 64: a {0, 1} 64x32 matrix and a 256-entry four-value multiplier, noise std 1);
  each also with the loss multiplied by 1024;
- the demo's networks (``snapset.demo``: MNIST-1D CNN, digits MLP; Sign, Binary, Ternary),
  20 epochs, Adam one-cycle for the float weights, flip rates decaying linearly to 1% (3 seeds),
  beside the same network trained with ``ste``.

Writes results/bop_defaults.md.

    .venv/bin/python benchmarks/bop_defaults.py
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result
from snapset import demo
from snapset._spec import BOP2_DEFAULTS

SEEDS = (0, 1, 2)
OptimizerFactory = Callable[[list[nn.Parameter]], st.Bop]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "Bop2ndOrder()": lambda params: st.Bop2ndOrder(params),
    "Bop2ndOrder(), rates decaying to 1%": lambda params: st.Bop2ndOrder(params),
    "Bop() (larq's defaults)": lambda params: st.Bop(params),
    "Bop(threshold_mode='rel', threshold=1.0, gamma=0.05)": lambda params: st.Bop(
        params, 1.0, 0.05, threshold_mode="rel"
    ),
}
DECAYING = "Bop2ndOrder(), rates decaying to 1%"


def planted(problem: str, seed: int) -> tuple[nn.Module, torch.Tensor, Callable[[], tuple]]:
    """A flip layer, the planted values it should find, and a batch source."""
    data = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    four = torch.tensor([1, -1, 0.5, -0.5])
    layer: nn.Module
    if problem.endswith("matrix"):
        full = problem.startswith("full")
        rows, cols, n, noise = (8, 16, 512, 0.1) if full else (64, 32, 2048, 1.0)
        target = torch.randint(0, 2, (rows, cols), generator=data).float()
        xs = torch.randn(n, cols, generator=data)
        ys = xs @ target.T + noise * torch.randn(n, rows, generator=data)
        layer = st.constrain(nn.Linear(cols, rows, bias=False), "weight", snapset.Binary(), "flip")
        if full:
            return layer, target, lambda: (xs, ys)

        def matrix_batch() -> tuple:
            batch = torch.randint(0, n, (64,), generator=data)
            return xs[batch], ys[batch]

        return layer, target, matrix_batch
    size = 64 if problem.startswith("full") else 256
    target = four[torch.randint(0, 4, (size,), generator=data)]
    layer = st.Multiplier(size, four.tolist(), method="flip")
    if problem.startswith("full"):
        x = torch.randn(512, size, generator=data)
        return layer, target, lambda: (x, x * target)

    def multiplier_batch() -> tuple:
        x = torch.randn(64, size, generator=data)
        return x, x * target + torch.randn(64, size, generator=data)

    return layer, target, multiplier_batch


PROBLEMS = {
    "full batch {0, 1} matrix (docs)": ("full matrix", 300),
    "full batch four-value multiplier (docs)": ("full multiplier", 300),
    "noisy {0, 1} matrix (bop_momentum)": ("noisy matrix", 400),
    "noisy four-value multiplier (bop_momentum)": ("noisy multiplier", 400),
}


def solve(
    problem: str, steps: int, name: str, seed: int, scale: float = 1.0
) -> tuple[int, int | None, int, torch.Tensor]:
    """Entries wrong at the end, first step all right, moves over the last 100 steps, values."""
    layer, target, batch = planted(problem, seed)
    optimizer = OPTIMIZERS[name](list(layer.parameters()))
    factor = (lambda t: max(1 - t / steps, 0.01)) if name == DECAYING else (lambda t: 1.0)
    settle = st.optim.HyperparameterSchedule(optimizer, ["gamma", "sigma"], factor)
    solved_at, late_moves = None, 0
    for step in range(steps):
        x, y = batch()
        before = layer.weight.detach().clone()
        optimizer.zero_grad()
        (scale * nn.functional.mse_loss(layer(x), y)).backward()
        optimizer.step()
        settle.step()
        if step >= steps - 100:
            late_moves += int((layer.weight != before).sum())
        wrong = int((layer.weight != target).sum())
        if wrong == 0 and solved_at is None:
            solved_at = step + 1
    return wrong, solved_at, late_moves, layer.weight.detach().clone()


def planted_section() -> list[str]:
    lines = [
        "## Planted problems, the optimizer alone",
        "",
        "No schedule, but in the decaying row: gamma and sigma decay linearly to 1% of their "
        "start over the run. wrong: entries wrong at the end (mean over seeds); solved at: "
        "median first step with "
        "every entry right (seeds that got there); late moves: moves over the last 100 steps "
        "(mean); x1024: the same runs with the loss multiplied by 1024 (same: every value "
        "identical to the unscaled run's).",
        "",
        "| problem | optimizer | wrong | solved at | late moves | x1024 |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for label, (problem, steps) in PROBLEMS.items():
        for name in OPTIMIZERS:
            runs = [solve(problem, steps, name, seed) for seed in SEEDS]
            scaled = [solve(problem, steps, name, seed, 1024.0) for seed in SEEDS]
            solved = [run[1] for run in runs if run[1] is not None]
            solved_text = "never"
            if solved:
                solved_text = f"{statistics.median(solved):.0f} ({len(solved)}/{len(runs)})"
            same = all(torch.equal(a[3], b[3]) for a, b in zip(runs, scaled, strict=True))
            scaled_wrong = statistics.mean(run[0] for run in scaled)
            cells = [
                label,
                f"`{name}`",
                f"{statistics.mean(run[0] for run in runs):.1f}",
                solved_text,
                f"{statistics.mean(run[2] for run in runs):.1f}",
                "same" if same else f"{scaled_wrong:.1f} wrong",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return [*lines, ""]


def network_section() -> list[str]:
    recipe = demo.Recipe()
    first_moment = dataclasses.replace(recipe, flip_optimizer="Bop")
    lines = [
        "## The demo's networks",
        "",
        f"{recipe.epochs} epochs, batch {recipe.batch}; test accuracy, mean ± spread over seeds "
        f"{list(SEEDS)}. Bop2ndOrder: its defaults (threshold {recipe.threshold}, gamma "
        f"{recipe.gamma}, sigma {recipe.sigma}), both rates decaying linearly to "
        f"{recipe.gamma_floor:g} of their start. Bop: the first moment, threshold "
        f"{recipe.bop_threshold}, gamma {recipe.bop_gamma} decaying alike (the demo's tuned "
        f"setting until Bop2ndOrder). ste: Adam one-cycle at lr {recipe.lr}. gap: Bop2ndOrder "
        "against ste.",
        "",
        "| data | weights | ste | Bop | Bop2ndOrder | gap |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    data = demo.datasets()
    for dataset, split in data.items():
        for set_name in ("sign", "binary", "ternary"):
            scores = {}
            for column, method, column_recipe in (
                ("ste", "ste", recipe),
                ("Bop", "flip", first_moment),
                ("Bop2ndOrder", "flip", recipe),
            ):
                accuracies = []
                for seed in SEEDS:
                    model = demo.build(dataset, set_name, method, seed)
                    run = demo.train(model, split, column_recipe, seed=seed)
                    accuracies.append(run.accuracy)
                scores[column] = accuracies
            ste, flip = (statistics.mean(scores[c]) for c in ("ste", "Bop2ndOrder"))
            cells = [
                dataset,
                demo.SET_LABELS[set_name],
                *(
                    f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"
                    for values in scores.values()
                ),
                f"{100 * (flip - ste):+.1f} pt",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return [*lines, ""]


def main() -> None:
    with demo.one_thread():
        lines = [
            "# The second-moment Bop's defaults on every problem",
            "",
            f"{machine_line()}. Defaults: {dict(BOP2_DEFAULTS)}.",
            "",
            *planted_section(),
            *network_section(),
        ]
    text = "\n".join(lines)
    print(text)
    write_result("bop_defaults.md", text)


if __name__ == "__main__":
    main()
