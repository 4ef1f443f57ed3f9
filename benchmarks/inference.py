"""Packed inference (``snapset.torch.pack``) against float32 ``nn.Linear`` on the same weights.

A 4096x4096 layer with sign, ternary, scaled ternary (``w = alpha * v``, one scale per output
channel, and one per 256 inputs as GGUF's TQ2_0) and four-value weights; batch 1 and 64; float
inputs, and +-1 inputs (the XNOR-popcount path). Every contender runs in this process,
interleaved round by round; each figure is the median over rounds and each ratio is float32
time / packed time on the same weights and inputs. Both sides run on one thread
(``torch.set_num_threads(1)``; the kernels are single-threaded), since the benchmark machine's
cores are shared. Also measures the packed layer's memory, the kernels' numba compile time
(fresh cache, in a subprocess), the crossover between the table-lookup and the decoded-tile
kernels that sets ``snapset.torch.export.LUT_MAX_ROWS``, and a binary MLP end to end (sign
weights and sign activations, BatchNorm folded into sign thresholds, every layer on XNOR)
against its float twin, at torch's default thread count and at one thread.
Writes ``results/inference.md``.

    python benchmarks/inference.py [--rounds 21] [--size 4096]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numba
import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import cpu_name, write_result
from snapset.torch import Quantize, quantize_inputs_

#: Each row's weights: the set and the scale (None: the set's own values).
SETS: dict[str, tuple[snapset.ValueSet, str | int | None]] = {
    "sign {-1, +1}": (snapset.Sign(), None),
    "ternary {-1, 0, +1}": (snapset.Ternary(), None),
    "ternary, scale per channel": (snapset.Ternary(), "channel"),
    "ternary, scale per 256 inputs": (snapset.Ternary(), 256),
    "four values [1, -1, 0.5, -0.5]": (snapset.ValueSet([1, -1, 0.5, -0.5]), None),
}
GOALS = {
    ("sign {-1, +1}", "float", 1): ">= 4x",
    ("ternary {-1, 0, +1}", "float", 1): ">= 3x",
    ("sign {-1, +1}", "+-1", 1): ">= 15x",
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def layers(size: int) -> dict[str, tuple[nn.Linear, st.PackedLinear]]:
    out = {}
    for name, (values, scale) in SETS.items():
        torch.manual_seed(0)
        layer = st.constrain(nn.Linear(size, size), "weight", values, scale=scale)
        hardened = st.harden_(layer).eval().requires_grad_(False)
        out[name] = (hardened, st.PackedLinear.from_linear(hardened, values))
    return out


def speed(size: int, rounds: int, block: int) -> tuple[list[list[str]], dict[str, float]]:
    """Median times per case; each round runs float32 then packed, ``block`` calls each.

    With ``block=1`` every packed call follows a float32 call, whose 64 MiB weight pushes the
    packed codes and the Python call path out of the caches ("cold"); with a larger block the
    first call of each block is discarded and the others time a layer called again and again,
    as in a loop over batches ("warm").
    """
    pairs = layers(size)
    cases = []
    for name, (float_layer, packed) in pairs.items():
        for batch in (1, 64):
            cases.append((name, "float", batch, torch.randn(batch, size), float_layer, packed))
        if name.startswith("sign"):
            for batch in (1, 64):
                signs = torch.randint(0, 2, (batch, size)).float() * 2 - 1
                cases.append((name, "+-1", batch, signs, float_layer, packed))
    times: dict[int, tuple[list[float], list[float]]] = {i: ([], []) for i in range(len(cases))}
    kept = slice(0, 1) if block == 1 else slice(1, block)
    with torch.no_grad():
        for _, _, _, x, float_layer, packed in cases:  # warm-up (and compilation)
            torch.testing.assert_close(packed(x), float_layer(x), rtol=1e-4, atol=1e-3)
            for _ in range(3):
                float_layer(x), packed(x)
        for _ in range(rounds):
            for i, (_, _, _, x, float_layer, packed) in enumerate(cases):
                for layer, into in ((float_layer, times[i][0]), (packed, times[i][1])):
                    into.extend([timed(lambda: layer(x)) for _ in range(block)][kept])  # noqa: B023
    rows = []
    for i, (name, inputs, batch, _, _, _) in enumerate(cases):
        base, ours = (statistics.median(t) for t in times[i])
        goal = GOALS.get((name, inputs, batch), "no slower (>= 1x)" if batch == 64 else "")
        rows.append(
            [name, inputs, str(batch), f"{base * 1e3:.3f}", f"{ours * 1e3:.3f}",
             f"{base / ours:.2f}x", goal]
        )  # fmt: skip
    memory = {name: packed.weight_bytes for name, (_, packed) in pairs.items()}
    return rows, memory


def scale_cost(rows: list[list[str]]) -> list[list[str]]:
    """Packed time of each scaled ternary row over the unscaled ternary row's, by batch."""
    packed_ms = {(row[0], row[2]): float(row[4]) for row in rows if row[1] == "float"}
    return [
        [name, batch, f"{ms / packed_ms[('ternary {-1, 0, +1}', batch)]:.2f}x"]
        for (name, batch), ms in packed_ms.items()
        if name.startswith("ternary, scale")
    ]


def crossover(size: int, rounds: int) -> list[list[str]]:
    """Table lookups against decoded tiles + BLAS, by batch, for sign weights."""
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(size, size), "weight", snapset.Sign())
    packed = st.PackedLinear.from_linear(st.harden_(layer), snapset.Sign())
    rows = []
    for batch in (1, 2, 4, 8, 16):
        x = torch.randn(batch, size)
        result = []
        for limit, kernel in ((batch, "lookup"), (0, "tiles")):
            packed.lookup_max_rows = limit
            packed(x)
            assert packed.last_kernel == kernel, f"{packed.last_kernel} ran, not {kernel}"
            result.append(statistics.median(timed(lambda: packed(x)) for _ in range(rounds)))  # noqa: B023
        rows.append([str(batch), f"{result[0] * 1e3:.3f}", f"{result[1] * 1e3:.3f}"])
    return rows


def binary_mlp(size: int) -> tuple[nn.Module, nn.Module]:
    """A binary MLP, hardened in eval mode (its float twin), and its packed copy: three
    ``size x size`` layers and a 10-way head, all with sign weights and a sign input quantizer,
    each hidden layer followed by a BatchNorm (statistics from random data, shifts of both
    signs), which ``pack`` folds with the next sign into thresholds."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.Linear(size, size), nn.BatchNorm1d(size, momentum=None)]
    model = nn.Sequential(*layers, nn.Linear(size, 10))
    model = quantize_inputs_(st.constrain_(model, snapset.Sign()), Quantize(snapset.Sign()))
    with torch.no_grad():
        model.train()(torch.randn(256, size))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.bias.normal_()
    twin = st.harden_(model.eval()).requires_grad_(False)
    return twin, st.pack(twin)


def end_to_end(size: int, rounds: int, default_threads: int) -> list[list[str]]:
    """The binary MLP against its float twin, batch 1 and 64, at torch's default thread count
    and at one thread; float twin and packed alternate call by call."""
    twin, packed = binary_mlp(size)
    sign_layers = [m for m in packed if isinstance(m, st.PackedLinear)]
    rows = []
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        for batch in (1, 64):
            x = torch.randn(batch, size)
            with torch.no_grad():
                assert torch.equal(packed(x), twin(x)), "packed outputs differ from the twin's"
                assert all(m.last_kernel == "xnor" for m in sign_layers)
                times: tuple[list[float], list[float]] = ([], [])
                for _ in range(rounds):
                    for model, into in ((twin, times[0]), (packed, times[1])):
                        into.append(timed(lambda: model(x)))  # noqa: B023
            base, ours = (statistics.median(t) for t in times)
            rows.append(
                [str(threads), str(batch), f"{base * 1e3:.3f}", f"{ours * 1e3:.3f}",
                 f"{base / ours:.2f}x"]
            )  # fmt: skip
    torch.set_num_threads(1)
    return rows


COMPILE = """
import time, torch, snapset, snapset.torch as st
layer = st.harden_(st.constrain(torch.nn.Linear(64, 8), "weight", snapset.Sign()))
packed = st.PackedLinear.from_linear(layer, snapset.Sign())
start = time.perf_counter()
packed(torch.randn(1, 64)); packed(torch.randn(9, 64)); packed(torch.ones(1, 64))
print(time.perf_counter() - start)
"""


def compile_seconds() -> tuple[float, float]:
    """First-call time of the kernels with an empty numba cache, then with the cache filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}  # takes precedence over __pycache__
        run = [sys.executable, "-c", COMPILE]
        first, second = (
            float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
            for _ in range(2)
        )
    return first, second


def kernels() -> str:
    """The packed kernels in use, with numba's version when they are numba's."""
    backend = st.export.kernel_backend()
    return f"numba {numba.__version__}" if backend == "numba" else backend


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    compile_first, compile_cached = compile_seconds()
    cold, memory = speed(args.size, args.rounds, block=1)
    warm, _ = speed(args.size, max(3, args.rounds // 3), block=5)
    cross = crossover(args.size, max(5, args.rounds // 3))
    binary = end_to_end(args.size, args.rounds, default_threads)
    costs = [[*c, w[2]] for c, w in zip(scale_cost(cold), scale_cost(warm), strict=True)]
    float_bytes = 4 * args.size * args.size
    memory_rows = [
        [name, f"{nbytes:,}", f"{float_bytes:,}", f"{float_bytes / nbytes:.1f}x"]
        for name, nbytes in memory.items()
    ]
    header = ["weights", "inputs", "batch", "float32 ms", "packed ms", "speed-up", "goal"]
    text = f"""# Packed inference against float32 nn.Linear ({args.size}x{args.size})

Date: {datetime.date.today()}; CPU: {cpu_name()}; threads: 1 (both sides); kernels:
{kernels()}; torch {torch.__version__}; Python
{platform.python_version()}. Medians over interleaved rounds ({args.rounds} cold); ratio =
float32 time / packed time, same weights and inputs. Inputs "+-1" are all -1 or +1 (the
XNOR-popcount path).

**Cold**: float32 and packed alternate call by call, so each packed call finds its codes and
the Python call path pushed out of the caches by the float32 layer's 64 MiB weight:

{table(header, cold)}

**Warm**: float32 and packed alternate in blocks of 5 calls ({max(3, args.rounds // 3)} rounds;
the first call of each block is not timed): each layer called again and again, as in a loop
over batches:

{table(header, warm)}

Cost of the scales in the packed layer: packed time of scaled ternary over unscaled ternary
(each span's sum times its scale; per channel one product an output, per 256 inputs one an
output and group; the batch path decodes `alpha * v`), cold and warm:

{table(["weights", "batch", "cold", "warm"], costs)}

Memory of the packed weight (codes and scales; bias aside) against float32; the physical
limit for one bit a weight is 32x. The batch path decodes into one workspace per thread,
shared by all packed layers, not part of any layer.

{table(["weights", "packed bytes", "float32 bytes", "ratio"], memory_rows)}

Kernel choice for float inputs, sign weights (ms): table lookups cost one pass a row, decoded
tiles + BLAS amortise the decoding over the rows. Each figure forces its kernel with the
layer's `lookup_max_rows` (`batch`: lookups, `0`: tiles); the default is
`snapset.torch.export.LUT_MAX_ROWS = {st.export.LUT_MAX_ROWS}`.

{table(["batch", "lookups ms", "tiles + BLAS ms"], cross)}

A binary MLP end to end: three {args.size}x{args.size} layers and a 10-way head, sign weights,
a sign input quantizer before every layer (the first included), a BatchNorm after each hidden
layer. Its float twin is the same model hardened, in float32; `pack` folds each BatchNorm and
the sign after it into thresholds, so every packed layer takes -1/+1 inputs and runs
XNOR-popcount. Outputs are identical (checked before timing). Medians over {args.rounds}
rounds, twin and packed alternating call by call; the packed kernels run on one thread
whatever torch's thread count ({default_threads} by default here).

{table(["torch threads", "batch", "float twin ms", "packed ms", "speed-up"], binary)}

numba compile time of the kernels, first call in a fresh process: {compile_first:.2f} s with an
empty cache, {compile_cached:.2f} s with numba's on-disk cache filled.
"""
    print(text)
    write_result("inference.md", text)


if __name__ == "__main__":
    main()
