"""The numba-compiled kernels behind snapset.gf2 (imported on first use; single-threaded).

Each is a plain loop nest over ``uint64`` words that LLVM vectorises for the machine it runs on.
They are defined without numba's cache: ``snapset._kernels._loader`` turns it on when it loads
them (only the first process in an environment then pays the compile time), or runs them
uncached when there is no writable cache directory or the cache files are damaged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

from .._kernels._numba import popcount

KernelT = TypeVar("KernelT", bound=Callable[..., Any])

# matmul's look-ups per pass over a row, and word columns per pass: four 256-row tables of
# 16 words are 128 KiB (L2).
TABLES = 4
_CHUNK = 16


def _compiled(kernel: KernelT) -> KernelT:
    """numba's ``njit`` with the options every kernel here uses (the cache comes later)."""
    return cast(KernelT, numba.njit(nogil=True, error_model="numpy")(kernel))


@_compiled
def matmul(selectors: Any, b: Any, out: Any) -> None:
    """``out ^= a @ b`` by the four-Russians method (M4RM).

    ``selectors`` is ``a`` packed eight entries a byte, ``(m, groups)`` with ``groups`` a
    multiple of ``TABLES``; ``b`` is ``(8 groups, words)``. For each group of eight rows of
    ``b`` a table holds their 256 XOR combinations, and every row of ``out`` adds the one its
    byte selects. ``TABLES`` groups go at once (one pass over ``out`` for four look-ups), and
    columns ``_CHUNK`` words at a time so that the tables stay in cache.
    """
    m, groups = selectors.shape
    words = b.shape[1]
    tables = np.zeros((TABLES, 256, _CHUNK), dtype=np.uint64)
    for c0 in range(0, words, _CHUNK):
        width = min(_CHUNK, words - c0)
        for g0 in range(0, groups, TABLES):
            for q in range(TABLES):
                size = 1
                for i in range(8):
                    row = 8 * (g0 + q) + i
                    for t in range(size):
                        for c in range(width):
                            tables[q, size + t, c] = tables[q, t, c] ^ b[row, c0 + c]
                    size *= 2
            for r in range(m):
                s0 = selectors[r, g0]
                s1 = selectors[r, g0 + 1]
                s2 = selectors[r, g0 + 2]
                s3 = selectors[r, g0 + 3]
                for c in range(width):
                    out[r, c0 + c] ^= (tables[0, s0, c] ^ tables[1, s1, c]) ^ (
                        tables[2, s2, c] ^ tables[3, s3, c]
                    )


@_compiled
def eliminate(words: Any, ncols: int, reduced: bool, pivot_cols: Any) -> int:
    """Gauss(-Jordan) elimination over GF(2), in place, sixteen columns at a time (M4RI).

    Looks for pivots in the columns ``< ncols`` (later columns, a right-hand side, are carried
    along). Rows are swapped so that the ``r`` pivot rows come first, in the order of their
    pivot columns, which go to ``pivot_cols[:r]``; returns ``r``. ``reduced`` clears each pivot
    column from every other row (reduced row echelon form); otherwise only from the rows below.

    For each panel of sixteen columns: find up to sixteen pivot rows (reducing candidates on
    the panel's bits only) and reduce them against each other; tabulate the 256 XOR
    combinations of those whose pivot lies in the panel's low byte, and of those in its high
    byte; then clear the panel from every other row with two look-ups and one pass of XORs
    over the row's words.
    """
    m, nwords = words.shape
    r = 0
    low = np.zeros((256, nwords), dtype=np.uint64)
    high = np.zeros((256, nwords), dtype=np.uint64)
    low_index = np.zeros(256, dtype=np.int64)
    high_index = np.zeros(256, dtype=np.int64)
    cols = np.zeros(16, dtype=np.int64)
    start = 0
    while start < ncols and r < m:
        w = start // 64
        shift = np.uint64(start % 64)
        width = min(16, ncols - start)
        mask = np.uint64((1 << width) - 1)
        k = 0
        for bit in range(width):
            found = -1
            for i in range(r + k, m):
                s = (words[i, w] >> shift) & mask
                for j in range(k):
                    if (s >> np.uint64(cols[j])) & np.uint64(1):
                        s ^= (words[r + j, w] >> shift) & mask
                if (s >> np.uint64(bit)) & np.uint64(1):
                    found = i
                    break
            if found < 0:
                continue
            p = r + k
            if found != p:
                # Rows from r on are zero left of this panel: swapping words w.. swaps rows.
                for c in range(w, nwords):
                    words[p, c], words[found, c] = words[found, c], words[p, c]
            for j in range(k):
                if (words[p, w] >> (shift + np.uint64(cols[j]))) & np.uint64(1):
                    for c in range(w, nwords):
                        words[p, c] ^= words[r + j, c]
            for j in range(k):
                if (words[r + j, w] >> (shift + np.uint64(bit))) & np.uint64(1):
                    for c in range(w, nwords):
                        words[r + j, c] ^= words[p, c]
            cols[k] = bit
            k += 1
        if k:
            # Pivots 0 .. split - 1 lie in the low byte, split .. k - 1 in the high one.
            split = 0
            while split < k and cols[split] < 8:
                split += 1
            _tabulate(words, r, cols, 0, split, 0, w, low, low_index)
            _tabulate(words, r + split, cols, split, k, 8, w, high, high_index)
            for i in range(0 if reduced else r + k, m):
                if r <= i < r + k:
                    continue
                s = (words[i, w] >> shift) & mask
                a = low_index[s & np.uint64(255)]
                # The high byte as it is once the low pivots are added.
                s_high = (((s ^ (low[a, w] >> shift)) & mask) >> np.uint64(8)) & np.uint64(255)
                b = high_index[s_high]
                if a or b:
                    for c in range(w, nwords):
                        words[i, c] ^= low[a, c] ^ high[b, c]
            for j in range(k):
                pivot_cols[r + j] = start + cols[j]
            r += k
        start += 16
    return r


@_compiled
def _tabulate(
    words: Any, first: int, cols: Any, lo: int, hi: int, offset: int, w: int, table: Any, index: Any
) -> None:
    """``table[v]``: the XOR of pivot rows ``first + j`` (``j < hi - lo``) whose bit ``j`` is
    set in ``v``; ``index[s]``: the ``v`` that a byte ``s`` of the panel (``offset`` bits in)
    calls for, one bit per pivot column ``cols[lo:hi]`` set in it."""
    for s in range(256):
        v = 0
        for j in range(hi - lo):
            v |= ((s >> (cols[lo + j] - offset)) & 1) << j
        index[s] = v
    size = 1
    for j in range(hi - lo):
        for t in range(size):
            for c in range(w, words.shape[1]):
                table[size + t, c] = table[t, c] ^ words[first + j, c]
        size *= 2


@_compiled
def lightest(pivots: Any, residuals: Any, p: int, weights: Any, picks: Any) -> None:
    """Lee-Brickell's step: for each residual, the lightest of it XOR up to ``p`` pivot rows.

    ``weights[o]`` gets the least weight found for residual ``o`` and ``picks[o]`` the pivot
    rows used (-1 for none), but only where that beats the weight already in ``weights[o]``.
    """
    r, nwords = pivots.shape
    partial = np.zeros(nwords, dtype=np.uint64)
    for o in range(residuals.shape[0]):
        s = residuals[o]
        best = weights[o]
        weight = 0
        for c in range(nwords):
            weight += popcount(s[c])
        if weight < best:
            best = weight
            picks[o, 0] = -1
            picks[o, 1] = -1
        if p >= 1:
            for i in range(r):
                weight = 0
                for c in range(nwords):
                    partial[c] = s[c] ^ pivots[i, c]
                    weight += popcount(partial[c])
                if weight < best:
                    best = weight
                    picks[o, 0] = i
                    picks[o, 1] = -1
                if p >= 2:
                    for j in range(i + 1, r):
                        weight = 0
                        for c in range(nwords):
                            weight += popcount(partial[c] ^ pivots[j, c])
                        if weight < best:
                            best = weight
                            picks[o, 0] = i
                            picks[o, 1] = j
        weights[o] = best


@_compiled
def and_parity(x: Any, w: Any, out: Any) -> None:
    """``out[i, j] = parity(popcount(x[i] & w[j]))``: the GF(2) product of packed rows."""
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            acc = np.uint64(0)
            for c in range(x.shape[1]):
                acc ^= x[i, c] & w[j, c]
            out[i, j] = popcount(acc) & 1
