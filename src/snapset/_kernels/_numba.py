"""The numba-compiled kernels behind ``snapset._kernels`` (imported on first use).

Each is a plain loop nest that LLVM vectorises for the machine it runs on (``fastmath`` lets it
reorder the float sums, so results agree with float32 BLAS to rounding, not bit for bit).
They are defined without numba's cache: ``snapset._kernels._loader`` turns it on when it loads
them (only the first process in an environment then pays the compile time), or runs them
uncached when there is no writable cache directory or the cache files are damaged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

KernelT = TypeVar("KernelT", bound=Callable[..., Any])


def _compiled(kernel: KernelT) -> KernelT:
    """numba's ``njit`` with the options every kernel here uses (the cache comes later)."""
    return cast(KernelT, numba.njit(nogil=True, fastmath=True, error_model="numpy")(kernel))


def _ctpop(typingctx: Any, word: Any) -> Any:
    """LLVM's ctpop on an unsigned integer of any width: a byte here (VPOPCNTB once
    vectorised), a 64-bit word in ``snapset.gf2``'s kernels (POPCNT)."""
    if word not in types.unsigned_domain:
        return None
    signature = word(word)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return signature, codegen


popcount: Callable[[Any], int] = cast(Any, intrinsic(_ctpop))


@_compiled
def build_tables(x: Any, values: Any, k: int, g: int, tables: Any) -> None:
    """``tables[j, b] = sum_i x[g j + i] * values[digit_i(b)]``, for every byte ``b < k^g``.

    Inputs past the end of ``x`` count as 0 (the padding codes of the last byte add nothing).
    """
    n = x.shape[0]
    for j in range(tables.shape[0]):
        t = tables[j]
        t[0] = 0.0
        size = 1
        for i in range(g):
            xi = x[j * g + i] if j * g + i < n else np.float32(0.0)
            for d in range(k - 1, -1, -1):  # d = 0 last: it overwrites the block it reads
                c = xi * values[d]
                base = d * size
                for b in range(size):
                    t[base + b] = t[b] + c
            size *= k


@_compiled
def lookup(tables: Any, codes: Any, scales: Any, span: int, partial: Any, y: Any) -> None:
    """``y[o] = sum_s scales[s, o] sum_{j in span s} tables[j, codes[j, o]]``: the codes'
    values summed over each ``span`` byte positions, then times that span's scale.

    ``codes`` is ``(groups, out)``: for one byte position the outputs lie side by side, so the
    loop over ``o`` runs in SIMD lanes (gathers from the table rows, which stay in L1), four
    byte positions a pass over ``partial``.
    """
    y[:] = 0.0
    groups = codes.shape[0]
    for s in range(scales.shape[0]):
        partial[:] = 0.0
        j, stop = s * span, min(groups, (s + 1) * span)
        while j + 4 <= stop:
            t0, t1, t2, t3 = tables[j], tables[j + 1], tables[j + 2], tables[j + 3]
            c0, c1, c2, c3 = codes[j], codes[j + 1], codes[j + 2], codes[j + 3]
            for o in range(y.shape[0]):
                partial[o] += (t0[c0[o]] + t1[c1[o]]) + (t2[c2[o]] + t3[c3[o]])
            j += 4
        while j < stop:
            t, c = tables[j], codes[j]
            for o in range(y.shape[0]):
                partial[o] += t[c[o]]
            j += 1
        scale = scales[s]
        for o in range(y.shape[0]):
            y[o] += scale[o] * partial[o]


@_compiled
def decode(
    codes: Any,
    decoded: Any,
    g: int,
    scales: Any,
    span: int,
    scaled: bool,
    start: int,
    stop: int,
    out: Any,
) -> None:
    """Rows ``start * g : stop * g`` of ``W.T`` (inputs by outputs) in float32, into ``out``:
    each code's value, times the scale of its output over its span when ``scaled``.

    ``decoded[i, b]`` is the value of digit ``i`` of byte ``b``.
    """
    for j in range(start, stop):
        c = codes[j]
        for i in range(g):
            row = out[(j - start) * g + i]
            values = decoded[i]
            for o in range(c.shape[0]):
                row[o] = values[c[o]]
            if scaled:  # a second pass over a row in L1: the unscaled loop stays as fast
                scale_row(row, scales[j // span])


@_compiled
def decode_two(
    codes: Any,
    low: Any,
    high: Any,
    scales: Any,
    span: int,
    scaled: bool,
    start: int,
    stop: int,
    out: Any,
) -> None:
    """``decode`` for two values (8 codes a byte): a masked blend, no table."""
    for j in range(start, stop):
        c = codes[j]
        for i in range(8):
            row = out[(j - start) * 8 + i]
            for o in range(c.shape[0]):
                row[o] = high if (c[o] >> i) & 1 else low
            if scaled:
                scale_row(row, scales[j // span])


@_compiled
def scale_row(row: Any, scale: Any) -> None:
    """``row *= scale``, entry by entry."""
    for o in range(row.shape[0]):
        row[o] *= scale[o]


@_compiled
def sign_bytes(x: Any, out: Any) -> bool:
    """Pack rows of +-1 into bytes (bit set for +1, 8 inputs a byte, padding 0); False if an
    entry is neither -1 nor +1."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        for j in range(out.shape[1]):
            byte = 0
            for i in range(min(8, n - 8 * j)):
                v = x[r, 8 * j + i]
                if v == 1.0:
                    byte |= 1 << i
                elif v != -1.0:
                    return False
            out[r, j] = byte
    return True


@_compiled
def xnor(x_bytes: Any, codes: Any, start: int, stop: int, counts: Any) -> None:
    """``counts[r, o] = sum_{start <= j < stop} popcount(x_bytes[r, j] XOR codes[j, o])``:
    bits that differ.

    Byte-wide popcounts side by side over the outputs (VPOPCNTB where the CPU has it), four
    byte positions a pass (four memory streams), summed in bytes over 28 positions (at most
    224, no overflow) before widening: 64 lanes a vector instead of 16.
    """
    n = codes.shape[1]
    partial = np.empty(n, dtype=np.uint8)
    for r in range(x_bytes.shape[0]):
        count = counts[r]
        count[:] = 0
        for first in range(start, stop, 28):
            last = min(stop, first + 28)
            partial[:] = 0
            j = first
            while j + 4 <= last:
                b0, b1, b2, b3 = (
                    x_bytes[r, j],
                    x_bytes[r, j + 1],
                    x_bytes[r, j + 2],
                    x_bytes[r, j + 3],
                )
                c0, c1, c2, c3 = codes[j], codes[j + 1], codes[j + 2], codes[j + 3]
                for o in range(n):
                    partial[o] += (popcount(b0 ^ c0[o]) + popcount(b1 ^ c1[o])) + (
                        popcount(b2 ^ c2[o]) + popcount(b3 ^ c3[o])
                    )
                j += 4
            while j < last:
                b, c = x_bytes[r, j], codes[j]
                for o in range(n):
                    partial[o] += popcount(b ^ c[o])
                j += 1
            for o in range(n):
                count[o] += partial[o]


@_compiled
def small(
    x: Any,
    values: Any,
    k: int,
    g: int,
    codes: Any,
    scales: Any,
    span: int,
    bias: Any,
    xnor_ok: bool,
    max_rows: int,
    y: Any,
) -> int:
    """One call for the few-rows paths: 1 if it ran XNOR-popcount, 2 table lookups, 0 neither.

    XNOR when ``xnor_ok`` (sign weights) and every input is -1 or +1; else lookups when there
    are at most ``max_rows`` rows. ``y`` gets ``x @ W.T + bias``, with ``W`` the codes' values
    times ``scales[s, o]`` over the ``span`` byte positions of span ``s``: each span's sum is
    accumulated exactly as unscaled (an integer for XNOR), then multiplied by its scale.
    Fusing the checks, packing and bias into one compiled call keeps the Python overhead of a
    batch-1 product to one call.
    """
    rows, n = x.shape
    groups, out = codes.shape
    if xnor_ok:
        x_bytes = np.empty((rows, groups), dtype=np.uint8)
        if sign_bytes(x, x_bytes):
            counts = np.empty((rows, out), dtype=np.int32)
            y[:] = 0.0
            for s in range(scales.shape[0]):
                start, stop = s * span, min(groups, (s + 1) * span)
                inputs = min(n, 8 * stop) - 8 * start  # padding bits agree: never counted
                xnor(x_bytes, codes, start, stop, counts)
                scale = scales[s]
                for r in range(rows):
                    for o in range(out):
                        y[r, o] += scale[o] * np.float32(inputs - 2 * counts[r, o])
            for r in range(rows):
                for o in range(out):
                    y[r, o] += bias[o]
            return 1
    if rows > max_rows:
        return 0
    tables = np.empty((groups, 256), dtype=np.float32)
    partial = np.empty(out, dtype=np.float32)
    for r in range(rows):
        build_tables(x[r], values, k, g, tables)
        lookup(tables, codes, scales, span, partial, y[r])
        for o in range(out):
            y[r, o] += bias[o]
    return 2
