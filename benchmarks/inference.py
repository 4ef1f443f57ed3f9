"""Packed inference (``snapset.torch.pack``) against float32 ``nn.Linear`` on the same weights.

A 4096x4096 layer with sign, ternary, scaled ternary (``w = alpha * v``, one scale per output
channel, and one per 256 inputs as GGUF's TQ2_0) and four-value weights: batch 1 and 64 with
float inputs; batch 1 and 64 with +-1 inputs (the XNOR-popcount path); batch 64 and 256 with
BitNet b1.58's 8-bit activations (a per-token absmax int8 input quantizer: the product runs on
``torch._int_mm``). Every contender runs in this process, interleaved round by round, at
torch's default thread count and at one thread (the packed kernels split their outputs between
``torch.get_num_threads()`` threads); each figure is the median over rounds, each ratio float32
time / packed time on the same weights and inputs. Beside each batch-1 row, the byte floor: the
time to read the layer's packed bytes once (a pass that XORs them together, the faster of one
thread and all of them), measured in the same rounds. Also measures the packed layer's
memory, the kernels' numba compile time (fresh cache, in a subprocess), lookups against
decoded tiles by batch (``lookup_max_rows``), and a binary MLP end to end (sign weights and
sign activations, BatchNorm folded into sign thresholds, every layer on XNOR) against its
float twin.
Writes ``results/inference.md``.

    python benchmarks/inference.py [--rounds 11] [--size 4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numba
import numpy as np
import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result
from snapset._kernels._threads import run_shares, spans
from snapset.torch import Quantize, quantize_inputs_

#: Each row's weights: the set and the scale (None: the set's own values).
SETS: dict[str, tuple[snapset.ValueSet, str | int | None]] = {
    "sign {-1, +1}": (snapset.Sign(), None),
    "ternary {-1, 0, +1}": (snapset.Ternary(), None),
    "ternary, scale per channel": (snapset.Ternary(), "channel"),
    "ternary, scale per 256 inputs": (snapset.Ternary(), 256),
    "four values [1, -1, 0.5, -0.5]": (snapset.ValueSet([1, -1, 0.5, -0.5]), None),
}
#: The issue's goals: speed-up over float32 by (weights, inputs, batch), and for batch 1 with
#: float inputs, packed time within 3x of the byte floor.
SPEED_GOALS = {
    ("sign {-1, +1}", "float", 1): 10.0,
    ("ternary {-1, 0, +1}", "float", 1): 8.0,
    ("four values [1, -1, 0.5, -0.5]", "float", 1): 6.0,
}
FLOOR_GOAL = 3.0
BATCH_GOAL = 1.2  # float inputs, batch 64: every set
INT8_GOAL = 4.0  # 8-bit activations, batch 64 and 256
MLP_GOAL = 30.0  # the binary MLP at batch 1
INT8 = snapset.ValueSet(range(-128, 128))


@numba.njit(nogil=True)
def _xor_columns(codes: np.ndarray, start: int, stop: int) -> int:
    """XOR of codes[:, start:stop], one row after the other: every byte read once."""
    folded = np.zeros(stop - start, dtype=np.uint8)
    for j in range(codes.shape[0]):
        row = codes[j, start:stop]
        for o in range(stop - start):
            folded[o] ^= row[o]
    return int(folded.sum())


def byte_floor(packed: st.PackedLinear) -> Callable[[], object]:
    """A pass over the layer's packed codes: on one thread and split between torch's threads
    (as the kernels split their outputs), whichever is faster; returns its time. Handing
    shares to other threads costs tens of microseconds, so on 2 MiB the single pass can be
    the faster."""
    codes = packed.matrix.codes

    def read() -> float:
        threads = torch.get_num_threads()
        shares = spans(codes.shape[1], threads, 64)
        one = timed(lambda: _xor_columns(codes, 0, codes.shape[1]))
        split = timed(
            lambda: run_shares(
                lambda start, stop: _xor_columns(codes, start, stop), shares, threads
            )
        )
        return min(one, split)

    return read


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Case:
    """One row: a float32 layer and its packed copy on the same input (and the byte floor)."""

    name: str
    inputs: str
    batch: int
    x: torch.Tensor
    float_layer: nn.Module
    packed: nn.Module
    floor: Callable[[], object] | None = None
    kernel: str = ""  # the kernel the packed layer ran on this row's input
    times: tuple[list[float], list[float], list[float]] = field(
        default_factory=lambda: ([], [], [])
    )

    def goals(self) -> tuple[str, str]:
        """The speed-up goal and the floor goal of this row ("" where none)."""
        if self.inputs == "int8":
            return f">= {INT8_GOAL:g}x", ""
        if self.inputs == "float" and self.batch == 64:
            return f">= {BATCH_GOAL:g}x", ""
        goal = SPEED_GOALS.get((self.name, self.inputs, self.batch))
        return ("", "") if goal is None else (f">= {goal:g}x", f"<= {FLOOR_GOAL:g}x")


def hardened(size: int, values: snapset.ValueSet, scale: str | int | None) -> nn.Linear:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(size, size), "weight", values, scale=scale)
    return st.harden_(layer).eval().requires_grad_(False)


def cases(size: int) -> list[Case]:
    """Float inputs at batch 1 and 64 for every set, +-1 inputs for sign weights, and 8-bit
    activations at batch 64 and 256 for every set."""
    rows = []
    for name, (values, scale) in SETS.items():
        layer = hardened(size, values, scale)
        packed = st.PackedLinear.from_linear(layer, values)
        floor = byte_floor(packed)
        for batch in (1, 64):
            x = torch.randn(batch, size)
            rows.append(Case(name, "float", batch, x, layer, packed, floor if batch == 1 else None))
        if values == snapset.Sign():
            for batch in (1, 64):
                signs = torch.randint(0, 2, (batch, size)).float() * 2 - 1
                rows.append(Case(name, "+-1", batch, signs, layer, packed))
        quantized = quantize_inputs_(
            hardened(size, values, scale), Quantize(INT8, scale="token"), modules=(nn.Linear,)
        )
        eight_bit = st.pack(quantized)
        for batch in (64, 256):
            rows.append(Case(name, "int8", batch, torch.randn(batch, size), layer, eight_bit))
    return rows


def measure(rows: list[Case], rounds: int, block: int) -> None:
    """Each round runs, per row, float32, the packed layer, float32 again and the floor,
    ``block`` calls each: with ``block=1`` the packed layer and the floor find their bytes
    pushed out of the caches by the float32 layer's 64 MiB weight ("cold"); with a larger
    block the first call of each is discarded and the others time a layer called again and
    again, as in a loop over batches ("warm")."""
    kept = slice(0, 1) if block == 1 else slice(1, block)
    with torch.no_grad():
        for row in rows:  # warm-up (and compilation), and the outputs checked
            if row.inputs != "int8":  # the 8-bit rows compute on quantized inputs
                torch.testing.assert_close(
                    row.packed(row.x), row.float_layer(row.x), rtol=1e-4, atol=1e-3
                )
            for _ in range(3):
                row.float_layer(row.x), row.packed(row.x)
            row.kernel = row.packed.last_kernel
            expected = "int8" if row.inputs == "int8" else ("xnor" if row.inputs == "+-1" else "")
            assert not expected or row.kernel == expected, row.kernel
        for _ in range(rounds):
            for row in rows:
                steps = [(row.float_layer, row.times[0]), (row.packed, row.times[1])]
                if row.floor is not None:
                    steps += [(row.float_layer, row.times[0]), (row.floor, row.times[2])]
                for fn, into in steps:
                    if fn is row.floor:  # it times itself: the faster of its two passes
                        into.extend([cast(float, fn()) for _ in range(block)][kept])
                        continue
                    x = row.x
                    into.extend([timed(lambda fn=fn, x=x: fn(x)) for _ in range(block)][kept])


def speed_rows(rows: list[Case]) -> list[list[str]]:
    table_rows = []
    for row in rows:
        base, ours = (statistics.median(t) for t in row.times[:2])
        speed_goal, floor_goal = row.goals()
        floor = statistics.median(row.times[2]) if row.times[2] else None
        table_rows.append(
            [row.name, row.inputs, str(row.batch), f"{base * 1e3:.3f}", f"{ours * 1e3:.3f}",
             f"{base / ours:.2f}x", speed_goal,
             "" if floor is None else f"{floor * 1e3:.3f}",
             "" if floor is None else f"{ours / floor:.2f}x", floor_goal, row.kernel]
        )  # fmt: skip
    return table_rows


def scale_cost(rows: list[list[str]]) -> list[list[str]]:
    """Packed time of each scaled ternary row over the unscaled ternary row's, by batch."""
    packed_ms = {(row[0], row[2]): float(row[4]) for row in rows if row[1] == "float"}
    return [
        [name, batch, f"{ms / packed_ms[('ternary {-1, 0, +1}', batch)]:.2f}x"]
        for (name, batch), ms in packed_ms.items()
        if name.startswith("ternary, scale")
    ]


def crossover(size: int, rounds: int) -> list[list[str]]:
    """Table lookups against decoded tiles + BLAS, by batch, for three sets: each figure forces
    its kernel with the layer's ``lookup_max_rows``."""
    rows = []
    for name in ("sign {-1, +1}", "ternary {-1, 0, +1}", "four values [1, -1, 0.5, -0.5]"):
        values, scale = SETS[name]
        packed = st.PackedLinear.from_linear(hardened(size, values, scale), values)
        default = packed.lookup_max_rows
        for batch in (8, 64, 256):
            x = torch.randn(batch, size)
            result = []
            for limit, kernel in ((batch, "lookup"), (0, "tiles")):
                packed.lookup_max_rows = limit
                packed(x)
                assert packed.last_kernel == kernel, f"{packed.last_kernel} ran, not {kernel}"
                result.append(statistics.median(timed(lambda: packed(x)) for _ in range(rounds)))  # noqa: B023
            packed.lookup_max_rows = default
            packed(x)
            rows.append(
                [name, str(batch), f"{result[0] * 1e3:.2f}", f"{result[1] * 1e3:.2f}",
                 packed.last_kernel]
            )  # fmt: skip
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
    and at one thread: cold (twin and packed alternate call by call) and warm (blocks of 20
    calls, the first of each not timed)."""
    twin, packed = binary_mlp(size)
    assert isinstance(packed[0], st.SignChain), "pack did not fold the stack into a SignChain"
    sign_layers = [m for m in packed.modules() if isinstance(m, st.PackedLinear)]
    rows = []
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        for batch in (1, 64):
            x = torch.randn(batch, size)
            with torch.no_grad():
                assert torch.equal(packed(x), twin(x)), "packed outputs differ from the twin's"
                assert all(m.last_kernel == "xnor" for m in sign_layers)
                for mode, block in (("cold", 1), ("warm", 20)):
                    kept = slice(0, 1) if block == 1 else slice(1, block)
                    times: tuple[list[float], list[float]] = ([], [])
                    for _ in range(rounds if block == 1 else max(3, rounds // 3)):
                        for model, into in ((twin, times[0]), (packed, times[1])):
                            calls = [timed(lambda: model(x)) for _ in range(block)]  # noqa: B023
                            into.extend(calls[kept])
                    base, ours = (statistics.median(t) for t in times)
                    rows.append(
                        [str(threads), str(batch), mode, f"{base * 1e3:.3f}",
                         f"{ours * 1e3:.3f}", f"{base / ours:.2f}x",
                         f">= {MLP_GOAL:g}x" if batch == 1 else ""]
                    )  # fmt: skip
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


SPEED_HEADER = [
    "weights", "inputs", "batch", "float32 ms", "packed ms", "speed-up", "goal", "floor ms",
    "packed / floor", "goal", "kernel",
]  # fmt: skip

PUBLISHED = """Published figures of the runtimes this work is compared with (whole models, token
generation, against llama.cpp, on other machines; not measured here):

| runtime | what | figure |
|---|---|---|
| bitnet.cpp (Microsoft) | BitNet b1.58 models, 125M to 100B, against llama.cpp | 2.37x to 6.17x on x86 CPUs, 1.37x to 5.07x on ARM |
| T-MAC (Microsoft, EuroSys 2025) | lookup-table kernels, low-bit Llama and BitNet, against llama.cpp | up to 4x throughput; BitNet b1.58 3B at 30 tokens/s on one M2-Ultra core, 71 on eight |

Theirs are whole models (attention, norms, sampling and memory traffic of many layers) against
an already quantized runtime; ours are one layer against float32 torch, so the ratios are not
comparable one for one. What does carry over: both use table lookups in SIMD registers for
batch 1 (bitnet.cpp's TL1/TL2 and T-MAC on int8 tables with byte shuffles; snapset on float32
tables with `VPERMI2PS`, so that float activations stay float), and 8-bit activations on
integer units for larger batches."""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    compile_first, compile_cached = compile_seconds()
    sections = []
    machine = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        machine[threads] = machine_line("numba")
        cold, warm = cases(args.size), cases(args.size)
        measure(cold, args.rounds, block=1)
        measure(warm, max(3, args.rounds // 3), block=5)
        cold_rows, warm_rows = speed_rows(cold), speed_rows(warm)
        costs = [
            [*c, w[2]] for c, w in zip(scale_cost(cold_rows), scale_cost(warm_rows), strict=True)
        ]
        sections.append(
            f"""### {threads} thread{"s" if threads > 1 else ""} (both sides)

**Cold**: float32 and packed alternate call by call, so each packed call (and each floor pass)
finds its codes and the Python call path pushed out of the caches by the float32 layer's
64 MiB weight:

{table(SPEED_HEADER, cold_rows)}

**Warm**: blocks of 5 calls (the first of each not timed): each layer called again and again,
as in a loop over batches:

{table(SPEED_HEADER, warm_rows)}

Cost of the scales: packed time of scaled ternary over unscaled ternary, cold and warm:

{table(["weights", "batch", "cold", "warm"], costs)}
"""
        )
        if threads == default_threads:  # the bytes each layer holds, from the first run
            memory = {row.name: row.packed.weight_bytes for row in cold if row.inputs == "float"}
            int8_memory = {row.name: row.packed.int8_bytes for row in cold if row.inputs == "int8"}
    torch.set_num_threads(default_threads)
    cross = crossover(args.size, max(3, args.rounds // 3))
    binary = end_to_end(args.size, args.rounds, default_threads)
    torch.set_num_threads(default_threads)
    float_bytes = 4 * args.size * args.size
    memory_rows = [
        [name, f"{nbytes:,}", f"{float_bytes / nbytes:.1f}x", f"{int8_memory[name]:,}"]
        for name, nbytes in memory.items()
    ]
    newline = "\n"
    text = f"""# Packed inference against float32 nn.Linear ({args.size}x{args.size})

{newline.join(f"- {line}" for line in machine.values())}

Kernels: {kernels()}; {st.export.kernel_backend(explain=True).split(",")[0]}, with AVX-512
register permutes: {_permutes()}. Medians over interleaved rounds ({args.rounds} cold);
ratio = float32 time / packed time, same weights and inputs. Inputs "+-1" are all -1 or +1
(the XNOR-popcount path); "int8" rows quantize each input row to int8 (absmax per token, as
BitNet b1.58) inside the packed layer, which multiplies on `torch._int_mm`, against float32 on
the float inputs. "floor" is one pass over the layer's packed bytes, the faster of one thread and
all of them (measured in the same rounds); the goals are the issue's (batch 1 within
{FLOOR_GOAL:g}x of the floor).

{newline.join(sections)}
Memory of the packed weight (codes and scales; bias aside) against float32's
{float_bytes:,} bytes, and the int8 `W.T` that a layer with 8-bit activations holds besides
(decoded once, for `torch._int_mm`):

{table(["weights", "packed bytes", "float32 / packed", "int8 weight bytes"], memory_rows)}

Lookups against decoded tiles + BLAS by batch, at {default_threads} threads (ms; each forced
with the layer's `lookup_max_rows`), and the kernel the layer's default picks:

{table(["weights", "batch", "lookups ms", "tiles + BLAS ms", "default"], cross)}

A binary MLP end to end: three {args.size}x{args.size} layers and a 10-way head, sign weights,
a sign input quantizer before every layer (the first included), a BatchNorm after each hidden
layer. Its float twin is the same model hardened, in float32; `pack` folds each BatchNorm and
the sign after it into thresholds, and the stack into one `SignChain`: every layer runs
XNOR-popcount on the bits the one before wrote, no float tensor in between. Outputs are
identical (checked before timing). Medians over {args.rounds} rounds; "cold": twin and packed
alternate call by call (the twin's 200 MiB of weights push the packed codes out of every
cache), "warm": blocks of 20 calls, the first of each not timed (on this machine a packed call
after the twin's takes several calls to reach its steady speed).

{table(["threads", "batch", "calls", "float twin ms", "packed ms", "speed-up", "goal"], binary)}

numba compile time of the kernels, first call in a fresh process: {compile_first:.2f} s with an
empty cache, {compile_cached:.2f} s with numba's on-disk cache filled.

{PUBLISHED}
"""
    print(text)
    write_result("inference.md", text)


def _permutes() -> str:
    from snapset._kernels._simd import PERMUTES

    return "yes" if PERMUTES else "no (gathers from whole tables)"


if __name__ == "__main__":
    main()
