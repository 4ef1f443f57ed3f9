"""What the larq scripts share: larq and TensorFlow on one thread, and torch's OneCycleLR as a
Keras 2 schedule. Runs in larq's own environment (no torch there)."""

from __future__ import annotations

import json
import time
from typing import Any


def import_larq() -> tuple[Any, Any] | None:
    """``(larq, tensorflow)`` set to one thread, or None after printing why they do not
    import (the caller's JSON protocol: an ``unavailable`` record)."""
    try:
        import larq as lq
        import tensorflow as tf
    except ImportError as error:
        print(json.dumps({"unavailable": f"larq does not import: {error}"}), flush=True)
        return None
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return lq, tf


def one_cycle(tf: Any) -> type:
    """torch's OneCycleLR (cosine, pct_start 0.3, div 25, final div 1e4) as a Keras schedule."""

    class OneCycle(tf.keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
        def __init__(self, peak: float, total: int) -> None:
            self.peak, self.total = peak, total

        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            start, low = self.peak / 25, self.peak / 25 / 1e4
            up = 0.3 * self.total - 1
            down = self.total - 1 - up

            def cosine(a: Any, b: Any, t: Any) -> Any:
                return b + (a - b) / 2 * (1 + tf.cos(3.141592653589793 * t))

            return tf.where(
                step <= up,
                cosine(start, self.peak, step / up),
                cosine(self.peak, low, tf.minimum((step - up) / down, 1.0)),
            )

    return OneCycle


def fit_and_score(
    model: Any, arrays: dict[str, Any], x_train: Any, x_test: Any, recipe: dict[str, Any]
) -> tuple[float, float]:
    """Train a compiled model for the recipe's epochs, one ``fit`` per epoch to time it;
    return its test accuracy and the median seconds of an epoch."""
    times = []
    for _ in range(recipe["epochs"]):
        start = time.perf_counter()
        model.fit(x_train, arrays["y_train"], batch_size=recipe["batch"], epochs=1,
                  shuffle=True, verbose=0)  # fmt: skip
        times.append(time.perf_counter() - start)
    _, accuracy = model.evaluate(x_test, arrays["y_test"], verbose=0)
    return float(accuracy), sorted(times)[len(times) // 2]
