"""The numba-compiled step of the flip optimizer (imported on first use by ``_flip``).

No ``fastmath`` here: each entry is rounded exactly as torch's elementwise ops round it (a fused
multiply-add, written out, where torch's vectorised CPU kernels use one, and nowhere else;
squares, not square roots, as torch's float32 ``sqrt`` is not correctly rounded on every CPU),
so this kernel and the torch path of ``snapset.torch.Bop`` give the same bits (tested on every
set and mode, and on a training run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from ._numba import popcount


def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """LLVM's fused multiply-add, ``a * b + c`` rounded once, for three floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    signature = a(a, b, c)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.fma(*args)

    return signature, codegen


fma: Callable[[Any, Any, Any], Any] = cast(Any, intrinsic(_fma))


# Which moved entries restart their momentum from 0 (the order of ``_spec.MOMENTUM_RESETS``).
INTERIOR, ALWAYS, NEVER = 0, 1, 2


@numba.njit(nogil=True, error_model="numpy")
def step(
    values: Any,
    momentum: Any,
    grad: Any,
    second: Any,
    gamma: Any,
    sigma: Any,
    keep: Any,
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

    ``m`` moves towards the gradient as ``torch.lerp`` rounds it on the CPU (one fused
    multiply-add, as torch's vectorised kernels compute it). Where ``second`` is empty an
    entry moves where ``|m| > threshold``; else ``v <- v keep + (sigma g) g`` (as torch's
    ``mul_(1 - sigma)`` then ``addcmul_``: ``keep`` is ``1 - sigma`` rounded once, from
    float64) and it moves where ``m * m > (v / correction) * threshold`` (``threshold`` is then
    the square of the fraction). A move is one level against the sign
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
    zero, one = real(0.0), real(1.0)
    low, high, k = table[0], table[-1], table.shape[0]
    small = gamma < 0.5
    moved = 0
    for e in range(values.shape[0]):
        g, m = grad[e], momentum[e]
        m = fma(gamma, g - m, m) if small else fma(gamma - one, g - m, g)
        if per_entry:
            v = fma(sigma * g, g, second[e] * keep)
            second[e] = v
            passed = m * m > (v / correction) * threshold
        else:
            passed = abs(m) > threshold
        up, down = passed & (m < zero), passed & (m > zero)
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
    read: Any,
    boundaries: Any,
    previous: Any,
    planes: Any,
    went_up: Any,
    went_down: Any,
    histogram: Any,
    start: int,
    stop: int,
) -> tuple[int, int]:
    """The codes of ``read[8 * start : 8 * stop]`` as thermometer bit planes, their histogram,
    how many differ from ``previous``'s and how many of those oscillated (``went_up`` and
    ``went_down`` updated).

    Bit ``i`` of ``planes[j, b]`` says whether ``read[8 b + i] >= boundaries[j]``; an entry's
    code is how many boundaries it reaches, the number of its bits set. So ``histogram[j]``
    follows from how many entries reach each boundary, and, the codes being thermometer codes,
    a code went up where one of its planes went from 0 to 1 and down where one went from 1 to
    0. ``went_up`` and ``went_down`` hold, a bit an entry, whether its last change went up or
    down (``snapset._oscillation``): it oscillates where it goes against them. An
    eighth of a byte a plane and entry to write and read again, and loops that LLVM vectorises
    (no scatter into the histogram).
    """
    n = read.shape[0]
    full = min(stop, n // 8)  # bytes whose eight entries all exist
    below = min(n, 8 * stop) - 8 * start
    ups = np.zeros(stop - start, np.uint8)
    downs = np.zeros(stop - start, np.uint8)
    for j in range(boundaries.shape[0]):
        boundary = boundaries[j]
        # Rows, then views from 0: loops over them vectorise (2-D indexing and loops from
        # ``start`` measured several times slower).
        plane, old = planes[j][start:stop], previous[j][start:stop]
        block = read[8 * start : 8 * full]
        for b in range(full - start):
            byte = np.uint8(0)
            for i in range(8):
                byte |= np.uint8(block[8 * b + i] >= boundary) << np.uint8(i)
            plane[b] = byte
        if full < stop:  # the last, partial byte
            byte = np.uint8(0)
            for e in range(8 * full, n):
                byte |= np.uint8(read[e] >= boundary) << np.uint8(e - 8 * full)
            plane[full - start] = byte
        reached = 0
        for b in range(stop - start):
            reached += popcount(plane[b])
            differ = plane[b] ^ old[b]
            ups[b] |= differ & plane[b]
            downs[b] |= differ & old[b]
        histogram[j] = below - reached
        below = reached
    histogram[boundaries.shape[0]] = below
    went_up, went_down = went_up[start:stop], went_down[start:stop]
    for b in range(stop - start):  # then ups: who moved, downs: who oscillated
        up, down = ups[b], downs[b]
        ups[b] = up | down
        downs[b] = (up & went_down[b]) | (down & went_up[b])
        went_up[b] = (went_up[b] & ~down) | up
        went_down[b] = (went_down[b] & ~up) | down
    changed = oscillated = 0
    for b in range(stop - start):  # popcounts of array bytes: a loop LLVM vectorises
        changed += popcount(ups[b])
        oscillated += popcount(downs[b])
    return changed, oscillated
