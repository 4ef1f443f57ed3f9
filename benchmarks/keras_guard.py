"""What the Keras front's exactness guard costs: a flip layer's forward pass and train step with
the guard and without it, on each Keras backend.

The guard is what keeps a flip variable's values in its set on every path: the forward pass
reads an entry off the set as NaN (a comparison against the set's table and a select), Bop
leaves such entries alone, and each variable's ``FlipGuard`` constraint, which every Keras
optimizer applies after its update, refuses any optimizer but Bop (for Bop it is an identity,
which Keras assigns back). "Without" is the same model with the forward's check replaced by
the identity and the constraint removed (Bop's own check stays). Model: Dense 1024 -> 1024 flip
Sign, then a float Dense 1024 -> 10; batch 32; train step (Router: Bop for the flip kernel,
Adam for the rest) and forward, compiled where the backend compiles by default (TensorFlow,
JAX). Each backend runs in its own process, guarded
and unguarded copies interleaved round by round; each figure is the median over rounds.
Writes ``results/keras_guard.md``.

    python benchmarks/keras_guard.py [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
WIDTH, BATCH = 1024, 32


def measure(rounds: int) -> dict[str, float]:
    """In a process whose KERAS_BACKEND is set: median ms of each (kind, guarded) setting."""
    import keras
    import numpy as np
    from keras import ops

    import snapset
    import snapset.keras as sk

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        built = keras.Sequential(
            [
                keras.Input((WIDTH,)),
                sk.Dense(WIDTH, snapset.Sign(), "flip", use_bias=False),
                keras.layers.Dense(10),
            ]
        )
        built.compile(optimizer=sk.Router(flip=sk.Bop(1e-6, 1e-3), default="adam"), loss="mse")
        return built

    guarded, unguarded = model(), model()
    unguarded.layers[0].trainable_variables[0].constraint = None
    checked_hard = sk.Flip.hard
    x = np.random.default_rng(0).standard_normal((BATCH, WIDTH)).astype("float32")
    y = np.zeros((BATCH, 10), "float32")

    def run(which: keras.Model, kind: str) -> float:
        # The unguarded copy traces and runs with the identity in place of the check.
        sk.Flip.hard = (
            checked_hard if which is guarded else lambda self, w: ops.convert_to_tensor(w)
        )
        try:
            start = time.perf_counter()
            if kind == "train step":
                which.train_on_batch(x, y)
            else:
                ops.convert_to_numpy(which.predict_on_batch(x))
            return time.perf_counter() - start
        finally:
            sk.Flip.hard = checked_hard

    times: dict[str, list[float]] = {}
    for kind in ("forward", "train step"):
        for which in (guarded, unguarded):
            run(which, kind)  # trace and warm up
        for _ in range(rounds):
            for name, which in (("with", guarded), ("without", unguarded)):
                times.setdefault(f"{kind}|{name}", []).append(run(which, kind))
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 rounds, to check the script")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    if args.child:
        print(json.dumps(measure(rounds)))
        return
    from _machine import machine_line, write_result

    rows = []
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, __file__, "--child", backend, "--rounds", str(rounds)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        result = json.loads(output.stdout.strip().splitlines()[-1])
        cells = []
        for kind in ("forward", "train step"):
            with_, without = result[f"{kind}|with"], result[f"{kind}|without"]
            cells.append(f"{without:.2f}, {with_:.2f} ({with_ / without:.2f}x)")
        rows.append(f"| {backend} | {' | '.join(cells)} |")
        print(rows[-1])
    text = "\n".join(
        [
            "# What the Keras exactness guard costs",
            "",
            machine_line("keras", "tensorflow", "jax"),
            "",
            f"Dense {WIDTH} -> {WIDTH} flip Sign + float Dense {WIDTH} -> 10, batch {BATCH}; "
            "forward (predict_on_batch) and train step (train_on_batch, Router: Bop + Adam), "
            "compiled where the backend compiles by default (TensorFlow, JAX). "
            f"Median of {rounds} interleaved rounds; ratio = with / without.",
            "",
            "| backend | forward: without ms, with ms (ratio) | train step: without ms, with ms "
            "(ratio) |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )
    write_result("keras_guard.md", text)


if __name__ == "__main__":
    main()
