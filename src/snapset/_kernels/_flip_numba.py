"""The numba-compiled step of the flip optimizer (imported on first use by ``_flip``).

No ``fastmath`` but ``contract`` here: each entry is rounded exactly as torch's elementwise ops
round it (fused multiply-adds where torch's vectorised CPU kernels use them; squares, not
square roots, as torch's float32 ``sqrt`` is not correctly rounded on every CPU), so this kernel
and the torch path of ``snapset.torch.Bop`` give the same bits (tested on every set and mode).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

# Which moved entries restart their momentum from 0 (the order of ``_spec.MOMENTUM_RESETS``).
INTERIOR, ALWAYS, NEVER = 0, 1, 2


@numba.njit(nogil=True, error_model="numpy", fastmath={"contract"})
def step(
    values: Any,
    momentum: Any,
    grad: Any,
    second: Any,
    gamma: Any,
    sigma: Any,
    correction: Any,
    threshold: Any,
    stride: Any,
    table: Any,
    midpoints: Any,
    reset: int,
    start: int,
    stop: int,
) -> int:
    """One flip-optimizer step on entries ``start:stop``; returns how many moved.

    ``m`` moves towards the gradient as ``torch.lerp`` rounds it (one fused multiply-add:
    ``contract`` lets LLVM fuse as torch's vectorised kernels do). Where ``second`` is empty an
    entry moves where ``|m| > threshold``; else ``v <- v (1 - sigma) + (sigma g) g`` (as torch's
    ``mul_`` then ``addcmul_``) and it moves where ``m * m > (v / correction) * threshold``
    (``threshold`` is then the square of the fraction). A move is one level against the sign
    of ``m``: ``value + stride`` clamped to the table's ends for evenly spaced sets
    (``stride > 0``, exact there, and a loop LLVM vectorises), else the next member of
    ``table``, found by comparisons with ``midpoints``. Every array is flat and of one float
    dtype, as are the scalars; ``values`` holds members of ``table``.
    """
    # Loops over views from 0 vectorise; loops from ``start`` measured ten times slower.
    values, momentum, grad = values[start:stop], momentum[start:stop], grad[start:stop]
    per_entry = second.shape[0] > 0
    if per_entry:
        second = second[start:stop]
    real = values.dtype.type
    zero = real(0.0)
    keep = real(1.0) - sigma
    low, high, k = table[0], table[-1], table.shape[0]
    small = gamma < 0.5
    moved = 0
    for e in range(values.shape[0]):
        g, m = grad[e], momentum[e]
        m = m + gamma * (g - m) if small else g - (g - m) * (1 - gamma)
        if per_entry:
            v = second[e] * keep
            v = v + (sigma * g) * g
            second[e] = v
            passed = m * m > (v / correction) * threshold
            up, down = passed & (m < zero), passed & (m > zero)
        else:
            up, down = m < -threshold, m > threshold
        value = values[e]
        if stride > zero:
            new = min(max(value + real(up) * stride - real(down) * stride, low), high)
        else:
            level = 0
            for j in range(k - 1):
                level += value > midpoints[j]
            new = table[min(max(level + int(up) - int(down), 0), k - 1)]
        changed = new != value
        values[e] = new
        moved += changed
        restart = changed and (reset == ALWAYS or (reset == INTERIOR and low < new < high))
        momentum[e] = zero if restart else m
    return moved


@numba.njit(nogil=True, error_model="numpy")
def recode(
    read: Any, boundaries: Any, previous: Any, codes: Any, histogram: Any, start: int, stop: int
) -> int:
    """For entries ``start:stop``: ``codes[e]``, how many ``boundaries`` ``read[e]`` reaches
    (``>=``); ``histogram[j]``, how many of those codes are ``j``; returns how many codes
    differ from ``previous``.

    One pass a boundary, each a plain loop that LLVM vectorises (a scatter into the histogram
    would not be): the histogram follows from how many entries reach each boundary.
    """
    # Loops over views from 0 vectorise; loops from ``start`` measured ten times slower.
    read, previous, codes = read[start:stop], previous[start:stop], codes[start:stop]
    codes[:] = 0
    below = codes.shape[0]
    for j in range(boundaries.shape[0]):
        boundary = boundaries[j]
        reached = 0
        for e in range(codes.shape[0]):
            at_least = np.uint8(read[e] >= boundary)
            codes[e] += at_least
            reached += at_least
        histogram[j] = below - reached
        below = reached
    histogram[boundaries.shape[0]] = below
    changed = 0
    for e in range(codes.shape[0]):
        changed += codes[e] != previous[e]
    return changed
