"""What every peer runner shares: its arguments, the data file and the JSON rows it prints.

Runners are executed by ``benchmarks/accuracy.py``, each in a process of its own:
``<runner> --data splits.npz --seeds 0 1 2 --recipe '{...}'``. They print one JSON object per
row, or ``{"unavailable": "why"}``.
"""

import argparse
import json

import numpy as np


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help=".npz written by benchmarks/accuracy.py")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--recipe", required=True, help="snapset's Recipe as JSON")
    parser.add_argument("--only", nargs=3, metavar=("DATA", "WEIGHTS", "METHOD"),
                        help="run this one row (the timing runs)")  # fmt: skip
    parser.add_argument("--plain", action="store_true",
                        help="the plain MNIST-1D CNN: no [x, -x] input, no centring")  # fmt: skip
    args = parser.parse_args()
    args.recipe = json.loads(args.recipe)
    return args


def wanted(args: argparse.Namespace, dataset: str, weights: str, method: str) -> bool:
    """Whether ``--only`` (if given) names this row."""
    return args.only is None or list(args.only) == [dataset, weights, method]


def splits(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{dataset: {"x_train": ..., "y_train": ..., "x_test": ..., "y_test": ...}}``."""
    arrays = np.load(path)
    data: dict[str, dict[str, np.ndarray]] = {}
    for key in arrays.files:
        dataset, part = key.split("/")
        data.setdefault(dataset, {})[part] = arrays[key]
    return data


def emit(library, dataset, weights, method, accuracies, seconds_per_epoch, note=""):
    print(
        json.dumps(
            {
                "library": library,
                "dataset": dataset,
                "weights": weights,
                "method": method,
                "accuracies": accuracies,
                "seconds_per_epoch": seconds_per_epoch,
                "packed_bytes": None,
                "note": note,
            }
        ),
        flush=True,
    )
