"""Forward + backward time of a constrained 1024x1024 Linear against nn.Linear and brevitas.

Every contender runs in the same process, interleaved round by round so that the machine's
noise hits all alike; each figure is the median over rounds, and each ratio is against
float32 ``nn.Linear`` at the same batch size and mode. Writes ``results/overhead.md``.

    python benchmarks/overhead.py [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result

SIZE = 1024
BATCHES = (1, 32, 256)


def contenders() -> dict[str, Callable[[], nn.Module]]:
    def constrained(values: snapset.ValueSet) -> Callable[[], nn.Module]:
        return lambda: st.constrain(nn.Linear(SIZE, SIZE), "weight", values)

    makers: dict[str, Callable[[], nn.Module]] = {
        "float32 nn.Linear": lambda: nn.Linear(SIZE, SIZE),
        "snapset ste Sign": constrained(snapset.Sign()),
        "snapset ste Ternary": constrained(snapset.Ternary()),
        "snapset ste [1, -1, 0.5, -0.5]": constrained(snapset.ValueSet([1, -1, 0.5, -0.5])),
    }
    try:
        from brevitas.nn import QuantLinear
        from brevitas.quant import SignedBinaryWeightPerTensorConst

        makers["brevitas binary QuantLinear"] = lambda: QuantLinear(
            SIZE, SIZE, bias=True, weight_quant=SignedBinaryWeightPerTensorConst
        )
    except ImportError as error:
        print(f"brevitas not installed ({error}); install the 'bench' extra to compare")
    return makers


def step_time(layer: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    layer(x).sum().backward()
    return time.perf_counter() - start


def measure(rounds: int, compiled: bool, input_grad: bool) -> dict[tuple[str, int], float]:
    torch.manual_seed(0)
    layers = {name: make() for name, make in contenders().items()}
    if compiled:
        # Fresh caches, and room for every contender at every batch size: past dynamo's
        # recompile limit a layer would silently run eager.
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = 64
        layers = {name: torch.compile(layer) for name, layer in layers.items()}
    times: dict[tuple[str, int], list[float]] = {}
    for batch in BATCHES:
        x = torch.randn(batch, SIZE, requires_grad=input_grad)
        for layer in layers.values():
            for _ in range(5):  # warm-up (and compilation)
                step_time(layer, x)
        for _ in range(rounds):
            for name, layer in layers.items():
                layer.zero_grad(set_to_none=True)
                times.setdefault((name, batch), []).append(step_time(layer, x))
    return {key: statistics.median(values) for key, values in times.items()}


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
    args = parser.parse_args()
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
    for compiled, input_grad in settings:
        mode = "torch.compile" if compiled else "eager"
        layer = "hidden layer (input needs grad)" if input_grad else "first layer (no input grad)"
        title = f"{mode}, {layer}"
        report.append(table(measure(args.rounds, compiled, input_grad), title))
        print(report[-1], flush=True)
    if not args.quick:
        write_result("overhead.md", "\n".join(report))


if __name__ == "__main__":
    main()
