"""A whole training step under ``torch.compile`` against the same step in eager mode.

The step is forward, backward, the optimizers' steps (Bop for flip parameters, Adam for the
rest) and ``zero_grad``, compiled as one function. For each model and batch size an eager and
a compiled copy (same seed) run in the same process, interleaved round by round; each figure is
the median over rounds, the speed-up is eager time / compiled time, and dynamo's caches are
reset between settings. A float model with Adam gives the reference speed-up. Writes
``results/compile_step.md``.

    python benchmarks/compile_step.py [--rounds 20] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result

WIDTH = 1024
BATCHES = (32, 256)
FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])

# name -> the (method, value set) of each of the three Linear weights (None: float)
MODELS: dict[str, tuple[tuple[str, snapset.ValueSet] | None, ...]] = {
    "float32 (Adam)": (None, None, None),
    "ste [1, -1, 0.5, -0.5] (Adam)": (("ste", FOUR),) * 3,
    "stochastic Ternary (Adam)": (("stochastic", snapset.Ternary()),) * 3,
    "flip Sign (Bop + Adam for biases)": (("flip", snapset.Sign()),) * 3,
    "mixed: ste, flip {0, 1}, float": (("ste", FOUR), ("flip", snapset.Binary()), None),
}

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_step(kind: str) -> Step:
    """A fresh model and its optimizers, closed over by one step function."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(WIDTH // 2, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU()
    )
    model.append(nn.Linear(WIDTH, 10))
    for layer, spec in zip(model[::2], MODELS[kind], strict=True):
        if spec is not None:
            st.constrain(layer, "weight", spec[1], spec[0])
    groups = st.param_groups(model)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.Adam(groups.latent + groups.other, lr=1e-3)
    ]
    if groups.flip:
        optimizers.append(st.Bop(groups.flip, threshold=1e-6, gamma=1e-3))

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        return loss.detach()

    return step


def measure(kind: str, batch: int, rounds: int) -> tuple[float, float]:
    """Median seconds of the eager and the compiled step."""
    torch._dynamo.reset()
    steps = {"eager": training_step(kind), "compiled": torch.compile(training_step(kind))}
    x, y = torch.randn(batch, WIDTH // 2), torch.randint(0, 10, (batch,))
    for step in steps.values():
        for _ in range(3):  # warm-up (and compilation)
            step(x, y)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x, y)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["eager"]), statistics.median(times["compiled"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="batch 32 only, 3 rounds")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        # On a shared machine, fewer threads than cores keeps OpenMP from stalling on busy ones.
        torch.set_num_threads(args.threads)
    batches = BATCHES[:1] if args.quick else BATCHES
    rounds = 3 if args.quick else args.rounds
    # torch.compile's own imports warn about deprecated torch APIs; not ours to fix.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    lines = [
        "# A whole training step compiled with torch.compile, against eager mode",
        "",
        machine_line(),
        "",
        f"MLP {WIDTH // 2}-{WIDTH}-{WIDTH}-10; one step = forward, backward, optimizer steps, "
        f"zero_grad. Median of {rounds} interleaved rounds; speed-up = eager / compiled.",
        "",
        "| model | "
        + " | ".join(f"batch {b}: eager ms, compiled ms (speed-up)" for b in batches)
        + " |",
        "|---|" + "---|" * len(batches),
    ]
    for kind in MODELS:
        cells = []
        for batch in batches:
            eager, compiled = measure(kind, batch, rounds)
            cells.append(f"{eager * 1e3:.2f}, {compiled * 1e3:.2f} ({eager / compiled:.2f}x)")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.quick:
        write_result("compile_step.md", report)


if __name__ == "__main__":
    main()
