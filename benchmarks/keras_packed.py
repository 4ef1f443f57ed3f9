"""Packed inference for a Keras model, through the PyTorch front, against the Keras model itself.

Two Keras MLPs with sign kernels (``1024 -> H -> H -> 10``, ``--hidden`` H, default 4096) take
the route a Keras user takes: ``sk.save(model, path)``, ``st.load(twin, path)`` into the
equivalent plain ``nn.Sequential``, ``st.pack(twin)``. The packed outputs are checked against
Keras's ``model(x, training=False)`` (rtol 1e-4, atol 1e-4 of the largest output; the script
stops otherwise), then timed at batch 1 and 64 against Keras's call and ``predict`` and the
unpacked twin, every contender once a round, interleaved; also the sizes of the ``.keras`` file
and of ``sk.save``'s. ``INTRO``, the opening of the results file, says what each column holds.

The backend is KERAS_BACKEND's (torch if unset), measured twice, each time in a process of its
own: at the runtimes' default thread counts, then pinned to one core (``pin_to_one_core``).
Writes that backend's section of ``results/keras_packed.md`` and keeps the other backends':

    KERAS_BACKEND=tensorflow python benchmarks/keras_packed.py [--rounds 21] [--hidden 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "tensorflow", "jax")
INPUTS, CLASSES = 1024, 10
BATCHES = (1, 64)
MODELS = ("ReLU", "binary")
#: What each round times besides the packed model, by the key ``measure`` gives it.
BASELINES = ("keras call", "keras predict", "torch twin")
SECTION = "## Keras backend: "
INTRO = """# Packed inference from Keras, through the PyTorch front

A Keras model with sign kernels, saved with `sk.save`, loaded into its plain PyTorch twin
(`st.load`) and packed (`st.pack`), against the Keras model itself. Two MLPs, 1024 -> H -> H ->
10: **ReLU** (two `sk.Dense` with sign kernels and ReLU, a float `Dense` head; the packed layers
take float inputs) and **binary** (three `sk.Dense` with sign kernels, the second and third
with a sign input quantizer; the packed layers after the first run XNOR-popcount). The packed
outputs were checked against Keras's (rtol 1e-4, atol 1e-4 of the largest output) before
timing.

Times in ms, medians over rounds that call every contender once, interleaved; in brackets,
each time over the packed model's (how many times faster the packed model runs). *Keras call,
as trained*: `model(x, training=False)` before `sk.harden_`, which computes the sign weights
from their latents on every call (median of 3 calls, not interleaved). *Keras call*: the same
after `sk.harden_` (float32 weights holding -1 and +1), the float model to compare with.
*Keras predict*: `model.predict(x, batch_size=len(x))` on the hardened model, with its per-call
set-up. *torch float twin*: the loaded `nn.Sequential` before packing. Threads: the runtimes'
defaults (torch's count shown), then the process pinned to one core with torch and
TensorFlow set to one thread (JAX's count, an XLA flag, is left alone: it runs on the pinned
core). The packed
kernels run on one thread either way, BLAS (tiles at batch 64) on torch's threads.

Each section comes from its own run: `KERAS_BACKEND=<backend> python
benchmarks/keras_packed.py`.
"""


def pin_to_one_core(backend: str) -> None:
    """One core and one thread for every runtime in this process; before Keras starts."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def models(kind: str, hidden: int) -> tuple[Any, Any]:
    """The Keras model of ``kind`` and its plain PyTorch twin (same layers, in order)."""
    import keras
    from torch import nn

    import snapset
    import snapset.keras as sk

    keras.utils.set_random_seed(0)
    sign = snapset.Sign()
    if kind == "ReLU":
        layers = [
            sk.Dense(hidden, sign, activation="relu"),
            sk.Dense(hidden, sign, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
        twin = [nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()]
        twin.append(nn.Linear(hidden, CLASSES))
    else:
        # st.load gives the twin the input quantizers the file records.
        layers = [
            sk.Dense(hidden, sign),
            sk.Dense(hidden, sign, input_quantizer=sk.Quantize(sign)),
            sk.Dense(CLASSES, sign, input_quantizer=sk.Quantize(sign)),
        ]
        twin = [nn.Linear(INPUTS, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, CLASSES)]
    return keras.Sequential([keras.Input((INPUTS,)), *layers]), nn.Sequential(*twin)


def check_outputs(got: Any, expected: Any, what: str) -> None:
    """Packed outputs against Keras's to float tolerance, or stop with the deviation."""
    import numpy as np

    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(
        got, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=f"packed against {what}"
    )


def timed(fn: Callable[[int], object], batch: int) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def measure(kind: str, hidden: int, rounds: int) -> dict[str, Any]:
    """In a process set up for the backend and threads: file sizes, kernels and median ms."""
    import keras
    import numpy as np
    import torch
    from keras import ops

    import snapset.keras as sk
    import snapset.torch as st

    model, twin = models(kind, hidden)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, INPUTS)).astype("float32") for b in BATCHES}
    on_backend = {b: ops.convert_to_tensor(x) for b, x in inputs.items()}
    on_torch = {b: torch.from_numpy(x) for b, x in inputs.items()}

    def call(b: int) -> Any:
        return ops.convert_to_numpy(model(on_backend[b], training=False))

    # As trained, each call computes the sign weights from their latents: a few calls only.
    trained = {b: call(b) for b in BATCHES}
    as_trained = {b: 1000 * statistics.median(timed(call, b) for _ in range(3)) for b in BATCHES}
    with tempfile.TemporaryDirectory() as folder:
        keras_file, snapset_file = Path(folder, "model.keras"), Path(folder, "model.safetensors")
        model.save(keras_file)
        sk.save(model, snapset_file)
        sizes = {"keras": keras_file.stat().st_size, "snapset": snapset_file.stat().st_size}
        st.load(twin, snapset_file)
    sk.harden_(model)
    twin.eval().requires_grad_(False)
    packed = st.pack(twin)
    kernels = {}
    with torch.no_grad():
        for b in BATCHES:  # also compiles the kernels and warms the models up
            got = packed(on_torch[b]).numpy()
            kernels[b] = "/".join(
                m.last_kernel for m in packed.modules() if isinstance(m, st.PackedLinear)
            )
            check_outputs(got, trained[b], "the Keras model as trained")
            check_outputs(got, call(b), "the hardened Keras model")
    contenders: dict[str, Callable[[int], object]] = {
        "keras call": call,
        "keras predict": lambda b: model.predict(inputs[b], batch_size=b, verbose=0),
        "torch twin": lambda b: twin(on_torch[b]),
        "packed": lambda b: packed(on_torch[b]),
    }
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for run in contenders.values():
            for b in BATCHES:
                run(b)  # predict traces here, once per batch size
        for _ in range(rounds):
            for b in BATCHES:
                for name, run in contenders.items():
                    times.setdefault(f"{name}|{b}", []).append(timed(run, b))
    return {
        "sizes": sizes,
        "kernels": kernels,
        "as trained": as_trained,
        "threads": torch.get_num_threads(),
        "ms": {key: 1000 * statistics.median(value) for key, value in times.items()},
        "versions": machine(keras.backend.backend()),
    }


def machine(backend: str) -> str:
    from _machine import machine_line

    return machine_line("keras", *(() if backend == "torch" else (backend,)), "numba")


def child(args: argparse.Namespace) -> None:
    if args.child == "one":
        pin_to_one_core(os.environ["KERAS_BACKEND"])
    result = {kind: measure(kind, args.hidden, args.rounds) for kind in MODELS}
    print(json.dumps(result))


def run_children(backend: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    results = {}
    for threads in ("default", "one"):
        command = [sys.executable, __file__, "--child", threads]
        command += ["--rounds", str(args.rounds), "--hidden", str(args.hidden)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {threads}-threads run on {backend} failed:\n{done.stderr}")
        results[threads] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def speed_rows(results: dict[str, dict[str, Any]], kind: str) -> list[list[str]]:
    rows = []
    for threads, result in results.items():
        measured = result[kind]
        for b in BATCHES:
            packed = measured["ms"][f"packed|{b}"]
            times = [measured["as trained"][str(b)]]
            times += [measured["ms"][f"{name}|{b}"] for name in BASELINES]
            threads_cell = str(measured["threads"]) if threads == "default" else "1 (one core)"
            cells = [threads_cell, str(b), *(f"{ms:.2f} ({ms / packed:.1f}x)" for ms in times)]
            rows.append([*cells, f"{packed:.2f}"])
    return rows


def section(backend: str, results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    default = results["default"]
    header = ["threads", "batch", "Keras call, as trained", "Keras call", "Keras predict"]
    header += ["torch float twin", "packed"]
    lines = [SECTION + backend, "", default[MODELS[0]]["versions"] + "."]
    lines += ["", f"H = {args.hidden}; medians of {args.rounds} rounds."]
    for kind in MODELS:
        result = default[kind]
        keras_size, snapset_size = result["sizes"]["keras"], result["sizes"]["snapset"]
        kernels = "; ".join(f"batch {b}: {result['kernels'][str(b)]}" for b in BATCHES)
        lines += [
            "",
            f"**{kind}**: files: `.keras` {keras_size:,} bytes, `sk.save` {snapset_size:,} "
            f"bytes ({keras_size / snapset_size:.1f}x smaller); packed layers' kernels: "
            f"{kernels}.",
            "",
            *table(header, speed_rows(results, kind)),
        ]
    return "\n".join(lines) + "\n"


def merged(backend: str, text: str, path: Path) -> str:
    """The results file with ``backend``'s section replaced, the others kept, in BACKENDS'
    order."""
    sections = {}
    if path.exists():
        for part in re.split(f"^(?={SECTION})", path.read_text(), flags=re.M)[1:]:
            sections[part[len(SECTION) :].split("\n", 1)[0]] = part.rstrip() + "\n"
    sections[backend] = text
    return "\n".join([INTRO, *(sections[name] for name in BACKENDS if name in sections)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--child", choices=("default", "one"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if args.child:
        child(args)
        return
    from _machine import write_result

    backend = os.environ["KERAS_BACKEND"]
    text = section(backend, run_children(backend, args), args)
    print(text)
    path = Path(__file__).parent / "results" / "keras_packed.md"
    write_result(path.name, merged(backend, text, path))


if __name__ == "__main__":
    main()
