"""Forward + backward time of a constrained 1024x1024 Linear against nn.Linear and brevitas.

Every contender runs in the same process, interleaved round by round so that the machine's
noise hits all alike; each figure is the median over rounds, and each ratio is against
float32 ``nn.Linear`` at the same batch size, mode and thread count (torch's default and one).
Goals (issue 18): eager at most 1.3x at batch 256 and 2x at batch 32; compiled at most 1.1x
and no slower than brevitas' binary QuantLinear. The floor row is a float32 weight written
afresh each forward in one pass (what any projected weight costs at least); the
"torch's operations" row runs snapset with ``SNAPSET_KERNELS=numpy``, without the compiled
projection. Writes ``results/overhead.md``.

The last sections measure what keeping the values exact costs on the hot path (the optimizer
guard, the flip check) and what a scale costs against the same set unscaled (goal: at most
1.1x), at the default number of threads and at one; ``--exactness`` and ``--scales`` run one
alone and replace only that section of the results file.

    python benchmarks/overhead.py [--rounds 30] [--quick] [--exactness] [--scales]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

import snapset
import snapset.torch as st
from _machine import machine_line, replace_section, write_result

SIZE = 1024
BATCHES = (1, 32, 256)


FLOOR = "floor: float32 weight copied each forward"
TORCH_OPERATIONS = "snapset ste Sign, torch's operations"


class Copied(nn.Module):
    """A parametrization that writes the weight afresh, one pass forward and none backward."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.clone()


def copied() -> nn.Module:
    layer = nn.Linear(SIZE, SIZE)
    parametrize.register_parametrization(layer, "weight", Copied())
    return layer


def contenders(compiled: bool) -> dict[str, Callable[[], nn.Module]]:
    def constrained(values: snapset.ValueSet) -> Callable[[], nn.Module]:
        return lambda: st.constrain(nn.Linear(SIZE, SIZE), "weight", values)

    makers: dict[str, Callable[[], nn.Module]] = {
        "float32 nn.Linear": lambda: nn.Linear(SIZE, SIZE),
        FLOOR: copied,
        "snapset ste Sign": constrained(snapset.Sign()),
        "snapset ste Ternary": constrained(snapset.Ternary()),
        "snapset ste [1, -1, 0.5, -0.5]": constrained(snapset.ValueSet([1, -1, 0.5, -0.5])),
    }
    if not compiled:  # compiled, inductor fuses torch's operations and no kernel runs
        makers[TORCH_OPERATIONS] = constrained(snapset.Sign())
    try:
        from brevitas.nn import QuantLinear
        from brevitas.quant import SignedBinaryWeightPerTensorConst

        makers["brevitas binary QuantLinear"] = lambda: QuantLinear(
            SIZE, SIZE, bias=True, weight_quant=SignedBinaryWeightPerTensorConst
        )
    except ImportError as error:
        print(f"brevitas not installed ({error}); install the 'bench' extra to compare")
    return makers


def step_time(layer: nn.Module, x: torch.Tensor, torch_operations: bool = False) -> float:
    with kernels_off() if torch_operations else contextlib.nullcontext():
        start = time.perf_counter()
        layer(x).sum().backward()
        return time.perf_counter() - start


@contextlib.contextmanager
def kernels_off() -> Iterator[None]:
    """snapset's torch operations instead of its compiled kernels (read on every call)."""
    os.environ["SNAPSET_KERNELS"] = "numpy"
    try:
        yield
    finally:
        del os.environ["SNAPSET_KERNELS"]


def measure(rounds: int, compiled: bool, input_grad: bool) -> dict[tuple[str, int], float]:
    torch.manual_seed(0)
    layers = {name: make() for name, make in contenders(compiled).items()}
    if compiled:
        # Fresh caches, and room for every contender at every batch size: past dynamo's
        # recompile limit a layer would silently run eager.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 64
        layers = {name: torch.compile(layer) for name, layer in layers.items()}
    return interleaved(layers, rounds, input_grad)


def interleaved(
    layers: dict[str, nn.Module], rounds: int, input_grad: bool
) -> dict[tuple[str, int], float]:
    """Median seconds of forward + backward of each layer at each batch size, the layers
    taking turns round by round so that the machine's noise hits all alike."""
    times: dict[tuple[str, int], list[float]] = {}
    for batch in BATCHES:
        x = torch.randn(batch, SIZE, requires_grad=input_grad)
        for name, layer in layers.items():
            for _ in range(5):  # warm-up (and compilation)
                step_time(layer, x, name == TORCH_OPERATIONS)
        for _ in range(rounds):
            for name, layer in layers.items():
                layer.zero_grad(set_to_none=True)
                seconds = step_time(layer, x, name == TORCH_OPERATIONS)
                times.setdefault((name, batch), []).append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def guard_cost(rounds: int) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, optimizer step) at batch 256,
    with snapset's optimizer guard and with the same step's hooks bypassed."""
    torch.manual_seed(0)
    x = torch.randn(256, SIZE)
    layer = st.constrain(nn.Linear(SIZE, SIZE), "weight", snapset.Ternary())
    adam = torch.optim.Adam(layer.parameters(), lr=1e-3)
    bare_step = type(adam).step.__wrapped__  # torch's step without the step hooks
    flip = st.constrain(nn.Linear(SIZE, SIZE), "weight", snapset.Sign(), "flip")
    bop = st.Bop(st.param_groups(flip).flip, threshold=1e-6, gamma=1e-3)
    stored = flip.parametrizations.weight.original
    constraint = flip.parametrizations.weight[0]

    def train(module: nn.Module, step: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            module.zero_grad(set_to_none=True)
            module(x).sum().backward()
            step()

        return run

    def recheck() -> None:
        constraint._trusted = None  # what any write but snapset's costs: one pass
        constraint.check(stored)

    cases: dict[str, Callable[[], None]] = {
        "ste Ternary + Adam, guard on": train(layer, adam.step),
        "ste Ternary + Adam, no guard": train(layer, lambda: bare_step(adam)),
        "the guard alone (before each Adam step)": lambda: st.optim.refuse_flip_parameters(
            adam, (), {}
        ),
        "flip Sign + Bop (check and record)": train(flip, bop.step),
        "flip check, unchanged key (O(1))": lambda: constraint.check(stored),
        "flip check after another write (O(n))": recheck,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in cases.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


EXACTNESS = "## What keeping the values exact costs"
SCALES = "## What a scale costs"

#: Scaled ternary layers against the same layer unscaled: (scale, scale_mode) by row name.
SCALED = {
    "Ternary x tensor (learned)": ("tensor", None),
    "Ternary x channel (learned)": ("channel", None),
    "Ternary x group 256 (learned)": (256, None),
    "Ternary x tensor (absmean, BitNet)": ("tensor", "absmean"),
    "Ternary x channel (absmax)": ("channel", "absmax"),
}


def scale_cost(rounds: int, input_grad: bool) -> dict[tuple[str, int], float]:
    """Median seconds of forward + backward of scaled and unscaled ternary layers (eager)."""
    torch.manual_seed(0)
    layers = {
        "Ternary (unscaled)": st.constrain(nn.Linear(SIZE, SIZE), "weight", snapset.Ternary())
    }
    for name, (scale, mode) in SCALED.items():
        layers[name] = st.constrain(
            nn.Linear(SIZE, SIZE), "weight", snapset.Ternary(), scale=scale, scale_mode=mode
        )
    return interleaved(layers, rounds, input_grad)


def scales_report(rounds: int) -> str:
    default = torch.get_num_threads()
    lines = [
        f"{SCALES} (1024x1024 Linear, eager, forward + backward)",
        "",
        machine_line(),
        "",
        f"Median of {rounds} interleaved rounds; each ratio is against the unscaled ternary",
        "layer at the same batch, thread count and input-gradient setting (goal: at most 1.1x).",
        "",
    ]
    for threads in dict.fromkeys((default, 1)):
        torch.set_num_threads(threads)
        for input_grad in (True, False):
            results = scale_cost(rounds, input_grad)
            layer = "hidden layer" if input_grad else "first layer"
            lines += [
                f"### {threads} thread{'s' if threads > 1 else ''}, {layer}",
                "",
                "| layer | " + " | ".join(f"batch {b}: ms (x unscaled)" for b in BATCHES) + " |",
                "|---|" + "---|" * len(BATCHES),
            ]
            for name in ["Ternary (unscaled)", *SCALED]:
                cells = []
                for batch in BATCHES:
                    ratio = results[(name, batch)] / results[("Ternary (unscaled)", batch)]
                    cells.append(f"{results[(name, batch)] * 1e3:.3f} ({ratio:.2f}x)")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    torch.set_num_threads(default)
    return "\n".join(lines)


def exactness_report(rounds: int) -> str:
    default = torch.get_num_threads()
    columns = {}
    for threads in (default, 1):
        torch.set_num_threads(threads)
        columns[threads] = guard_cost(rounds)
    torch.set_num_threads(default)
    lines = [
        f"{EXACTNESS} (1024x1024 Linear, batch 256, eager)",
        "",
        machine_line(),
        "",
        f"Median of {rounds} interleaved rounds. A training step is forward, backward and the",
        "optimizer's step; 'no guard' calls the same Adam step with torch's step hooks bypassed.",
        "",
        "| case | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}: ms" for t in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in columns[default]:
        cells = [f"{columns[t][name] * 1e3:.4f}" for t in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, ratio in [
        ("Guard on / no guard, whole steps (noise included)", "ste Ternary + Adam, guard on"),
        ("The guard alone / a step without it", "the guard alone (before each Adam step)"),
    ]:
        cells = []
        for t, column in columns.items():
            share = column[ratio] / column["ste Ternary + Adam, no guard"]
            if ratio.startswith("the guard alone"):
                share += 1.0
            cells.append(f"{share:.4f}x at {t} thread{'s' if t > 1 else ''}")
        lines += ["", f"{label}: " + ", ".join(cells) + "."]
    return "\n".join(lines) + "\n"


def table(results: dict[tuple[str, int], float], title: str) -> str:
    names = list(dict.fromkeys(name for name, _ in results))
    lines = [
        f"### {title}",
        "",
        "| layer | " + " | ".join(f"batch {b}: ms (x float)" for b in BATCHES) + " |",
        "|---|" + "---|" * len(BATCHES),
    ]
    for name in names:
        cells = []
        for batch in BATCHES:
            ms = results[(name, batch)] * 1e3
            ratio = results[(name, batch)] / results[("float32 nn.Linear", batch)]
            cells.append(f"{ms:.3f} ({ratio:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="eager, hidden layer, 5 rounds")
    parser.add_argument("--compiled-only", action="store_true", help="skip the eager settings")
    parser.add_argument("--exactness", action="store_true", help="the cost of the checks only")
    parser.add_argument("--scales", action="store_true", help="the cost of scales only")
    args = parser.parse_args()
    if args.exactness or args.scales:
        heading, report = (
            (EXACTNESS, exactness_report) if args.exactness else (SCALES, scales_report)
        )
        section = report(args.rounds)
        print(section)
        replace_section("overhead.md", heading, section)
        return
    settings = [(False, True), (False, False), (True, True), (True, False)]
    if args.quick:
        settings, args.rounds = settings[:1], 5
    if args.compiled_only:
        settings = settings[2:]
    report = [
        "# Overhead of a constrained 1024x1024 Linear (forward + backward)",
        "",
        machine_line("brevitas"),
        "",
        f"Median of {args.rounds} interleaved rounds; ratio against float32 nn.Linear.",
        "A hidden layer's input needs a gradient; a first layer's does not.",
        "",
    ]
    default = torch.get_num_threads()
    for compiled, input_grad in settings:
        for threads in dict.fromkeys((default, 1)):
            torch.set_num_threads(threads)
            mode = "torch.compile" if compiled else "eager"
            layer = (
                "hidden layer (input needs grad)" if input_grad else "first layer (no input grad)"
            )
            title = f"{mode}, {layer}, {threads} thread{'s' if threads > 1 else ''}"
            report.append(table(measure(args.rounds, compiled, input_grad), title))
            print(report[-1], flush=True)
    torch.set_num_threads(default)
    if not args.quick:
        report += [exactness_report(args.rounds), scales_report(args.rounds)]
        write_result("overhead.md", "\n".join(report))


if __name__ == "__main__":
    main()
