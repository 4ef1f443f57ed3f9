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

from ._simd import BLOCK, SHIFT, half_sums
from ._simd import PERMUTES as PERMUTES  # read by _matrix: whether lookup_halves runs here

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

    The low ``(g + 1) // 2`` digits and the others are summed apart, into two small tables
    (``k^3`` and ``k^2`` entries for ternary), and each entry is then one addition of the two:
    a block of additions a value of the high digits, side by side in SIMD lanes. Inputs past
    the end of ``x`` count as 0 (the padding codes of the last byte add nothing).
    """
    digits = (g + 1) // 2
    size = k**digits
    low = np.empty(size, dtype=np.float32)
    high = np.empty(k ** (g - digits), dtype=np.float32)
    for j in range(tables.shape[0]):
        digit_sums(x, values, k, j * g, digits, low)
        digit_sums(x, values, k, j * g + digits, g - digits, high)
        t = tables[j]
        for h in range(high.shape[0]):
            block, shift = t[h * size : (h + 1) * size], high[h]
            for b in range(size):
                block[b] = low[b] + shift


@_compiled
def digit_sums(x: Any, values: Any, k: int, first: int, digits: int, sums: Any) -> None:
    """``sums[b] = sum_i x[first + i] * values[digit_i(b)]`` over ``digits`` base-``k`` digits
    of ``b``, built by doubling: digit ``i`` adds its term to a copy of the block before it."""
    sums[0] = 0.0
    size = 1
    for i in range(digits):
        xi = x[first + i] if first + i < x.shape[0] else np.float32(0.0)
        for d in range(k - 1, -1, -1):  # d = 0 last: it overwrites the block it reads
            term = xi * values[d]
            for b in range(size):
                sums[d * size + b] = sums[b] + term
        size *= k


@_compiled
def build_halves(x: Any, values: Any, k: int, g: int, halves: Any) -> None:
    """``halves[j, 0, b]``: the sum of inputs ``g j ..`` times the values of the low ``(g + 1)
    // 2`` digits of ``b``; ``halves[j, 1, b]``: of the next inputs, for its high digits (for
    ``lookup_halves``). Each is ``sum_d x_d * pattern_d``, a multiply-add of 32 lanes a
    digit, with ``pattern_d[b]`` the value of digit ``d`` of ``b`` (0 past the table)."""
    digits = (g + 1) // 2
    low, high = digit_patterns(values, k, digits), digit_patterns(values, k, g - digits)
    for j in range(halves.shape[0]):
        pattern_sums(x, j * g, low, halves[j, 0])
        pattern_sums(x, j * g + digits, high, halves[j, 1])


@_compiled
def digit_patterns(values: Any, k: int, digits: int) -> Any:
    """``patterns[d, b]``: the value of base-``k`` digit ``d`` of ``b``, for the ``k^digits``
    entries of a half table (of 32); 0 past them."""
    patterns = np.zeros((digits, 32), dtype=np.float32)
    size = k**digits
    for d in range(digits):
        for b in range(size):
            patterns[d, b] = values[(b // k**d) % k]
    return patterns


@_compiled
def pattern_sums(x: Any, first: int, patterns: Any, out: Any) -> None:
    """``out = sum_d x[first + d] * patterns[d]``; inputs past the end of ``x`` count as 0."""
    out[:] = 0.0
    for d in range(patterns.shape[0]):
        xd = x[first + d] if first + d < x.shape[0] else np.float32(0.0)
        pattern = patterns[d]
        for b in range(out.shape[0]):
            out[b] += xd * pattern[b]


# No fastmath: the outputs taken one at a time must add as the permutes' lanes add.
@numba.njit(nogil=True, error_model="numpy")
def lookup_halves(
    halves: Any,
    codes: Any,
    low_size: int,
    scales: Any,
    span: int,
    bias: Any,
    y: Any,
    start: int,
    stop: int,
) -> None:
    """``lookup`` on half tables (see ``snapset._kernels._simd``): each code byte ``b`` adds
    ``halves[j, 0, b mod low_size] + halves[j, 1, b div low_size]``, 64 outputs a pass by
    register permutes, the last ones (``(stop - start) mod 64``) one at a time, in the same
    order, so that any split between threads gives the same bits."""
    n = stop - start
    magic = ((1 << SHIFT) + low_size - 1) // low_size
    total = np.zeros(n, dtype=np.float32)
    partial = np.empty(n, dtype=np.float32)
    groups = codes.shape[0]
    blocks = n - n % BLOCK
    for s in range(scales.shape[0]):
        first, last = s * span, min(groups, (s + 1) * span)
        for o in range(0, blocks, BLOCK):
            half_sums(halves, codes, first, last, start + o, low_size, magic, partial[o:])
        for o in range(blocks, n):
            acc = np.float32(0.0)
            for j in range(first, last):
                b = codes[j, start + o]
                high = (b * magic) >> SHIFT
                acc += halves[j, 0, b - high * low_size] + halves[j, 1, high]
            partial[o] = acc
        add_scaled(total, scales[s, start:stop], partial)
    add_bias(y[start:stop], total, bias[start:stop])


@_compiled
def lookup(
    tables: Any, codes: Any, scales: Any, span: int, bias: Any, y: Any, start: int, stop: int
) -> None:
    """Outputs ``start:stop`` of ``y = sum_s scales[s] sum_{j in span s} tables[j, codes[j]] +
    bias``: the codes' values summed over each ``span`` byte positions, then times that span's
    scale.

    ``codes`` is ``(groups, out)``: for one byte position the outputs lie side by side, so the
    loop over them runs in SIMD lanes (gathers from the table rows, which stay in L1), four
    byte positions a pass over ``partial``.
    """
    n = stop - start
    total = np.zeros(n, dtype=np.float32)
    partial = np.empty(n, dtype=np.float32)
    groups = codes.shape[0]
    for s in range(scales.shape[0]):
        partial[:] = 0.0
        j, last = s * span, min(groups, (s + 1) * span)
        while j + 4 <= last:
            t0, t1, t2, t3 = tables[j], tables[j + 1], tables[j + 2], tables[j + 3]
            c0, c1 = codes[j, start:stop], codes[j + 1, start:stop]
            c2, c3 = codes[j + 2, start:stop], codes[j + 3, start:stop]
            for o in range(n):
                partial[o] += (t0[c0[o]] + t1[c1[o]]) + (t2[c2[o]] + t3[c3[o]])
            j += 4
        while j < last:
            t, c = tables[j], codes[j, start:stop]
            for o in range(n):
                partial[o] += t[c[o]]
            j += 1
        add_scaled(total, scales[s, start:stop], partial)
    add_bias(y[start:stop], total, bias[start:stop])


@_compiled
def threshold_bits(
    y: Any, threshold: Any, high: Any, low: Any, out: Any, start: int, stop: int
) -> None:
    """Sign bits of outputs ``start:stop`` (``start`` a multiple of 8) of every row of ``y``:
    bit ``o`` of ``out[r]`` is ``high[o]`` where ``y[r, o] >= threshold[o]``, else ``low[o]``
    (1 for +1, 0 for -1), eight outputs a byte as ``sign_bytes`` packs inputs."""
    for r in range(y.shape[0]):
        row = y[r]
        for byte in range(start // 8, (stop + 7) // 8):
            bits = np.uint8(0)
            for i in range(min(8, stop - 8 * byte)):
                o = 8 * byte + i
                plus = high[o] if row[o] >= threshold[o] else low[o]
                bits |= np.uint8(plus) << np.uint8(i)
            out[r, byte] = bits


# No fastmath in these two: every output is rounded alike, whichever share it falls in.
@numba.njit(nogil=True, error_model="numpy")
def add_scaled(total: Any, scale: Any, partial: Any) -> None:
    """``total += scale * partial``, output by output: a span's sum times its scale."""
    for o in range(total.shape[0]):
        total[o] += scale[o] * partial[o]


@numba.njit(nogil=True, error_model="numpy")
def add_bias(out: Any, total: Any, shift: Any) -> None:
    """``out = total + shift``: the outputs with their bias."""
    for o in range(out.shape[0]):
        out[o] = total[o] + shift[o]


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
    entry is neither -1 nor +1 (checked first, in one branch-free pass, then packed)."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        row = x[r]
        other = False
        for i in range(n):
            other |= abs(row[i]) != 1.0
        if other:
            return False
        full = n // 8
        for j in range(full):
            byte = np.uint8(0)
            for i in range(8):
                byte |= np.uint8(row[8 * j + i] > 0.0) << np.uint8(i)
            out[r, j] = byte
        if full < out.shape[1]:
            byte = np.uint8(0)
            for i in range(n - 8 * full):
                byte |= np.uint8(row[8 * full + i] > 0.0) << np.uint8(i)
            out[r, full] = byte
    return True


@_compiled
def xnor(
    x_bytes: Any,
    codes: Any,
    scales: Any,
    span: int,
    n_in: int,
    bias: Any,
    y: Any,
    start: int,
    stop: int,
) -> None:
    """Outputs ``start:stop`` of ``y = sum_s scales[s] (inputs_s - 2 popcount_s(x ^ w)) +
    bias`` for every row of sign bits ``x_bytes``: over each span's byte positions, the bits
    that differ count -1, the others +1 (``inputs_s`` real inputs; padding bits agree).

    Byte-wide popcounts side by side over the outputs (VPOPCNTB where the CPU has it), four
    byte positions a pass (four memory streams), summed in bytes over 28 positions (at most
    224, no overflow) before widening: 64 lanes a vector instead of 16.
    """
    n = stop - start
    groups = codes.shape[0]
    partial = np.empty(n, dtype=np.uint8)
    count = np.empty(n, dtype=np.int32)
    total = np.empty(n, dtype=np.float32)
    for r in range(x_bytes.shape[0]):
        total[:] = 0.0
        for s in range(scales.shape[0]):
            first_byte, last_byte = s * span, min(groups, (s + 1) * span)
            count[:] = 0
            for first in range(first_byte, last_byte, 28):
                last = min(last_byte, first + 28)
                partial[:] = 0
                j = first
                while j + 4 <= last:
                    b0, b1, b2, b3 = (
                        x_bytes[r, j],
                        x_bytes[r, j + 1],
                        x_bytes[r, j + 2],
                        x_bytes[r, j + 3],
                    )
                    c0, c1 = codes[j, start:stop], codes[j + 1, start:stop]
                    c2, c3 = codes[j + 2, start:stop], codes[j + 3, start:stop]
                    for o in range(n):
                        partial[o] += (popcount(b0 ^ c0[o]) + popcount(b1 ^ c1[o])) + (
                            popcount(b2 ^ c2[o]) + popcount(b3 ^ c3[o])
                        )
                    j += 4
                while j < last:
                    b, c = x_bytes[r, j], codes[j, start:stop]
                    for o in range(n):
                        partial[o] += popcount(b ^ c[o])
                    j += 1
                for o in range(n):
                    count[o] += partial[o]
            inputs = min(n_in, 8 * last_byte) - 8 * first_byte
            scale = scales[s, start:stop]
            for o in range(n):
                total[o] += scale[o] * np.float32(inputs - 2 * count[o])
        add_bias(y[r, start:stop], total, bias[start:stop])


# No fastmath: the comparisons must see NaN as it is (a NaN settles nothing).
@numba.njit(nogil=True, error_model="numpy")
def grid_integers(latent: Any, edges: Any, integers: Any, out: Any, start: int, stop: int) -> bool:
    """``out[i] = integers[c]``, ``c`` how many of the ``n`` sorted boundaries ``latent[i]``
    reaches (``>=``), for ``i`` in ``start:stop``. ``edges`` holds the boundaries between two
    -inf and two +inf: with ``e(c) = edges[c + 1]``, the count is ``c`` where ``e(c) <= v <
    e(c + 1)``. It is guessed from the first boundary and the mean gap, then moved by one
    comparison on either side: four loads, all at the guess, which the core overlaps (LLVM
    does not vectorise gathers on every CPU, so this stays a scalar loop). False where a guess
    was off by more than one (uneven boundaries, NaN), which the caller then counts
    otherwise."""
    n = edges.shape[0] - 4
    first = edges[2]
    gap = (edges[n + 1] - first) / (n - 1)
    unsettled = 0
    values, found = latent[start:stop], out[start:stop]
    for i in range(stop - start):
        v = values[i]
        guess = (v - first) / gap
        guess = 0.0 if guess != guess else min(max(guess, -1.0), float(n))
        c = min(int(np.floor(guess)) + 1, n)
        below, low, high, above = edges[c], edges[c + 1], edges[c + 2], edges[c + 3]
        up, down = v >= high, v < low
        c += np.int64(up) - np.int64(down)
        settled = (v == v) & (~up | (v < above) | (c == n)) & (~down | (v >= below))
        unsettled += np.int64(not settled)
        found[i] = integers[c]
    return unsettled == 0
