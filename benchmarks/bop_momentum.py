"""What Bop should do with the momentum after a move, and absolute against relative thresholds.

Two planted problems, learned by Bop alone:

* binary: a 64x32 {0, 1} matrix from 2048 noisy samples (y = x W^T + noise, noise std 1),
  mini-batches of 64;
* multiplier: 256 entries over [1, -1, 0.5, -0.5] (y = x * w + noise, noise std 1), fresh
  batches of 64.

For each momentum reset rule ("interior", the default; "never", the paper's rule taken
literally; "always") and threshold mode ("abs", "rel"), over a small threshold grid and 3
seeds: entries still wrong after the run, the first step at which every entry was right, and
the moves made over the last 100 steps (a solved problem should sit still). Then each mode's
best threshold is rerun with the loss multiplied by 1000 (a different loss scale).
Writes results/bop_momentum.md.

    .venv/bin/python benchmarks/bop_momentum.py
"""

from __future__ import annotations

import datetime
import statistics

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import write_result

STEPS = 400
SEEDS = (0, 1, 2)
GAMMA = 0.05
THRESHOLDS = {"abs": (1e-3, 3e-3, 1e-2), "rel": (0.1, 0.3, 1.0)}


def run(
    problem: str, mode: str, reset: str, threshold: float, seed: int, scale: float = 1.0
) -> tuple[int, int | None, int]:
    data = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer: nn.Module
    if problem == "binary":
        planted = torch.randint(0, 2, (64, 32), generator=data).float()
        xs = torch.randn(2048, 32, generator=data)
        ys = xs @ planted.T + torch.randn(2048, 64, generator=data)
        layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), "flip")
    else:
        values = torch.tensor([1, -1, 0.5, -0.5])
        planted = values[torch.randint(0, 4, (256,), generator=data)]
        layer = st.Multiplier(256, values.tolist(), method="flip")
    opt = st.Bop(
        layer.parameters(),
        threshold=threshold,
        gamma=GAMMA,
        threshold_mode=mode,
        momentum_reset=reset,
    )
    solved_at, late_moves = None, 0
    for step in range(STEPS):
        if problem == "binary":
            batch = torch.randint(0, 2048, (64,), generator=data)
            x, y = xs[batch], ys[batch]
        else:
            x = torch.randn(64, 256, generator=data)
            y = x * planted + torch.randn(64, 256, generator=data)
        before = layer.weight.detach().clone()
        opt.zero_grad()
        (scale * nn.functional.mse_loss(layer(x), y)).backward()
        opt.step()
        if step >= STEPS - 100:
            late_moves += int((layer.weight != before).sum())
        wrong = int((layer.weight != planted).sum())
        if wrong == 0 and solved_at is None:
            solved_at = step + 1
    return wrong, solved_at, late_moves


def summarise(results: list[tuple[int, int | None, int]]) -> tuple[float, str, float]:
    wrong = statistics.mean(r[0] for r in results)
    solved = [r[1] for r in results if r[1] is not None]
    solved_text = (
        f"{statistics.median(solved):.0f} ({len(solved)}/{len(results)})" if solved else "never"
    )
    return wrong, solved_text, statistics.mean(r[2] for r in results)


def main() -> None:
    lines = [
        "# Bop: momentum after a move, absolute against relative thresholds",
        "",
        f"- date: {datetime.date.today().isoformat()}, torch {torch.__version__}",
        f"- {STEPS} steps, gamma {GAMMA}, seeds {SEEDS}; 'wrong': entries wrong at the end "
        "(mean over seeds); 'solved at': median first step with every entry right (seeds that "
        "got there); 'late moves': moves over the last 100 steps (mean).",
        "",
    ]
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for problem in ("binary", "multiplier"):
        lines += [
            f"## {problem}",
            "",
            "| reset | mode | threshold | wrong | solved at | late moves |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for reset in ("interior", "never", "always"):
            for mode, thresholds in THRESHOLDS.items():
                for threshold in thresholds:
                    results = [run(problem, mode, reset, threshold, seed) for seed in SEEDS]
                    wrong, solved, late = summarise(results)
                    cells = [reset, mode, f"{threshold:g}", f"{wrong:.1f}", solved, f"{late:.1f}"]
                    lines.append("| " + " | ".join(cells) + " |")
                    key = (problem, mode)
                    if reset == "interior" and (key not in best or wrong < best[key][0]):
                        best[key] = (wrong, threshold)
                    print(lines[-1], flush=True)
        lines.append("")
    lines += [
        "## The same runs with the loss multiplied by 1000 (reset 'interior', best threshold)",
        "",
        "| problem | mode | threshold | wrong at scale 1 | wrong at scale 1000 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for (problem, mode), (wrong, threshold) in best.items():
        scaled = [run(problem, mode, "interior", threshold, s, scale=1000.0) for s in SEEDS]
        lines.append(
            f"| {problem} | {mode} | {threshold:g} | {wrong:.1f} | {summarise(scaled)[0]:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join([*lines, ""])
    print(text)
    write_result("bop_momentum.md", text)


if __name__ == "__main__":
    main()
