"""Compiled kernels of flip training over numpy views of CPU tensors.

- ``flip_move``: one flip-optimizer step. ``snapset.torch.Bop`` calls it for CPU tensors of
  float32 and float64; it decides and writes what Bop's torch operations would, bit for bit, in
  one read of the momentum and the values instead of a dozen passes (each entry's level found
  by comparisons, not by a lookup).
- ``recode``: the codes, flips and histogram that ``snapset.torch.FlipTracker`` records, in one
  sweep a boundary instead of a pass per comparison, count and histogram.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._spec import MOMENTUM_RESETS
from ._loader import KernelLoader

__all__ = ["flip_move", "recode"]

Floats = npt.NDArray[np.floating[Any]]


def flip_move(
    values: Floats,
    momentum: Floats,
    second: Floats | None,
    correction: float,
    threshold: float,
    table: Floats,
    midpoints: Floats,
    momentum_reset: str,
) -> int | None:
    """Move the flat ``values`` in place as ``snapset.torch.Bop`` does; return how many moved.

    ``second`` (or None) holds each entry's second moment ``v``: an entry then moves where
    ``m * m > (v / correction) * threshold**2``; else where ``|m| > threshold``. Returns
    None, having changed nothing, where numba is not there (the caller then computes the same
    with its own operations).
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return None
    dtype = values.dtype.type
    return int(
        kernels.move(
            values,
            momentum,
            second if second is not None else values[:0],
            dtype(correction),
            dtype(threshold * threshold if second is not None else threshold),
            table.astype(dtype, copy=False),
            midpoints.astype(dtype, copy=False),
            MOMENTUM_RESETS.index(momentum_reset),
        )
    )


def recode(
    read: Floats,
    boundaries: Floats,
    previous: npt.NDArray[np.uint8],
    codes: npt.NDArray[np.uint8],
    histogram: npt.NDArray[np.int64],
) -> int | None:
    """Fill ``codes`` (how many sorted ``boundaries`` each entry of the flat ``read``
    reaches) and ``histogram`` (entries per code) in one compiled sweep; return how many codes
    differ from ``previous``. None, having changed nothing, where numba is not there.

    Examples:
        >>> import numpy as np
        >>> codes, histogram = np.empty(4, np.uint8), np.empty(3, np.int64)
        >>> read = np.array([-1.0, 0.0, 1.0, 1.0], np.float32)
        >>> previous = np.array([0, 1, 1, 2], np.uint8)
        >>> changed = recode(read, np.array([-0.5, 0.5], np.float32), previous, codes, histogram)
        >>> changed, codes.tolist(), histogram.tolist()  # with numba installed
        (1, [0, 1, 2, 2], [1, 1, 2])
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return None
    return int(
        kernels.recode(read, boundaries.astype(read.dtype, copy=False), previous, codes, histogram)
    )


def _warm_up(kernels: ModuleType) -> None:
    """Compile for float32 and float64: the step with per-tensor and per-entry thresholds,
    and the codes of the flip tracker."""
    for dtype in (np.float32, np.float64):
        values, momentum = np.zeros(1, dtype), np.ones(1, dtype)
        table, midpoints = np.array([-1, 0, 1], dtype), np.array([-0.5, 0.5], dtype)
        for second in (values[:0], np.ones(1, dtype)):
            kernels.move(values, momentum, second, dtype(1), dtype(0.5), table, midpoints, 0)
        codes = np.zeros(1, np.uint8)
        kernels.recode(values, midpoints, codes, codes.copy(), np.zeros(3, np.int64))


_KERNELS = KernelLoader("snapset's flip-optimizer step", "snapset._kernels._flip_numba", _warm_up)
