"""The numba-compiled step of the flip optimizer (imported on first use by ``_flip``).

No ``fastmath`` here: each entry's test is rounded exactly as torch's elementwise ops round it
(squares, not square roots: torch's float32 ``sqrt`` is not correctly rounded on every CPU), so
this kernel and the torch path of ``snapset.torch.Bop`` decide alike, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numba

# Which moved entries restart their momentum from 0 (the order of ``_spec.MOMENTUM_RESETS``).
INTERIOR, ALWAYS, NEVER = 0, 1, 2


@numba.njit(nogil=True, error_model="numpy")
def move(
    values: Any,
    momentum: Any,
    second: Any,
    correction: Any,
    threshold: Any,
    table: Any,
    midpoints: Any,
    reset: int,
) -> int:
    """Move each entry of ``values`` one level against the sign of its momentum ``m`` where
    ``m`` passes its threshold; reset momenta; return how many entries moved.

    Where ``second`` is empty, ``m`` passes when ``|m| > threshold``; else when
    ``m * m > (second / correction) * threshold`` (``threshold`` is then the square of the
    fraction). Every array is flat and of one float dtype, as are ``correction`` and
    ``threshold``; ``values`` holds members of ``table``.
    """
    k = table.shape[0]
    per_entry = second.shape[0] > 0
    moved = 0
    for e in range(values.shape[0]):
        m = momentum[e]
        if per_entry:
            if not m * m > (second[e] / correction) * threshold:
                continue
            step = -1 if m > 0 else 1
        elif m > threshold:
            step = -1
        elif m < -threshold:
            step = 1
        else:
            continue
        value = values[e]
        level = 0
        while level < k - 1 and value > midpoints[level]:
            level += 1
        to = level + step
        if to < 0 or to >= k:
            continue  # at an end of the set: it stays
        values[e] = table[to]
        moved += 1
        if reset == ALWAYS or (reset == INTERIOR and 0 < to < k - 1):
            momentum[e] = 0.0
    return moved


@numba.njit(nogil=True, error_model="numpy")
def recode(read: Any, boundaries: Any, previous: Any, codes: Any, histogram: Any) -> int:
    """``codes[e]``: how many ``boundaries`` ``read[e]`` reaches (``>=``); ``histogram[j]``:
    how many codes are ``j``; returns how many codes differ from ``previous``.

    One pass a boundary, each a plain loop that LLVM vectorises (a scatter into the histogram
    would not be): the histogram follows from how many entries reach each boundary.
    """
    n = read.shape[0]
    codes[:] = 0
    below = n
    for j in range(boundaries.shape[0]):
        boundary = boundaries[j]
        reached = 0
        for e in range(n):
            at_least = read[e] >= boundary
            codes[e] += at_least
            reached += at_least
        histogram[j] = below - reached
        below = reached
    histogram[boundaries.shape[0]] = below
    changed = 0
    for e in range(n):
        changed += codes[e] != previous[e]
    return changed
