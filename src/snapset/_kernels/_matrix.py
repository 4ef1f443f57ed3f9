"""CPU kernels for packed weights: lookup-table matrix-vector products, decoding, XNOR-popcount.

A packed ``(out, n_in)`` matrix of ``k`` values keeps one byte per ``g`` inputs per output
(``g`` codes in base ``k``, ``k^g <= 256``: 8 signs, 5 ternary values or 4 four-value codes a
byte, so sign weights take 1 bit, ternary 1.6 bits and four values 2 bits each). The bytes are
stored byte position major, ``codes[j, o]`` for inputs ``g j .. g j + g - 1`` of output ``o``,
so that every kernel runs over the outputs in SIMD lanes.

* **Float inputs, few rows** (``small_matmul``): as T-MAC and bitnet.cpp do, each input row first
  fills a table per byte position, ``T[j, b] = sum_i x[g j + i] * values[digit_i(b)]`` for all
  ``k^g`` bytes ``b`` (256 sums, built by doubling in about 256 additions), and then each output
  is ``y[o] = sum_j T[j, W[o, j]]``: one load and one addition per ``g`` weights, reading the
  weights at 1/32 (sign) of float32's bytes. On CPUs with AVX-512 the tables are split into
  two *half tables* of at most 32 entries, which register permutes read 16 outputs at a time
  (``_simd``); there lookups beat BLAS on wide layers at any number of rows
  (``lookup_max_rows``).
* **Float inputs, many rows** (``decode_rows``): where a table lookup per row costs more than
  a float multiply-add amortised over many rows (narrow layers, or no permutes), ``W.T`` is
  decoded a block of inputs at a time into a float buffer and the caller accumulates
  ``x[:, block] @ W.T[block]`` with BLAS.
* **Inputs in {-1, +1} with sign weights** (``small_matmul``, any number of rows): the
  input's sign bits are XORed with the weight bytes and counted: ``y = n - 2 popcount(x ^ w)``.
* **Scaled sets** (``w = alpha * v``): the lookups and XNOR sum each output's code values as
  unscaled (exactly, for XNOR: integers) over each span of inputs that share a scale, then
  multiply that sum by its scale: one product an output, or an output and a group of inputs.
  The decoded tiles hold ``alpha * v`` in float32, the entries of the scaled float layer.

Each product splits its outputs into shares that the calling thread and the pool's threads
take in turn (``_threads``); each output is computed as one thread computes it, so results do
not depend on the number of threads. The kernels are compiled by numba on the first packed
call, all at once under a lock, and kept in numba's on-disk cache, so the first call in a
fresh environment takes a few seconds and later processes load the machine code. Without a
writable cache directory, or with damaged cache files, they compile uncached (with a
warning). Where numba is missing or fails, or ``SNAPSET_KERNELS=numpy`` is set, vectorised
numpy versions compute the same thing. ``backend(explain=True)`` says which kernels run and
why.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from .._packing import radix_for
from .._sets import ValueSet
from ._loader import KernelLoader
from ._threads import run_shares, spans

__all__ = [
    "LOOKUP_MAX_ROWS",
    "PackedMatrix",
    "backend",
    "decode_rows",
    "lookup_max_rows",
    "sign_bits",
    "small_matmul",
    "xnor_bits",
]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
ArrayT = TypeVar("ArrayT", bound=npt.NDArray[Any])


@dataclass(frozen=True)
class PackedMatrix:
    """An ``(out, n_in)`` matrix of ``k`` values as ``(groups, out)`` bytes of ``g`` codes,
    each value times a positive scale (for a scaled set ``w = alpha * v``; 1 when unscaled).

    The scales cover ``span`` byte positions each: one span for one scale per output (the
    whole tensor or each output channel), or one span per run of inputs that share a scale
    (a group size along the input axis). Where such a run does not fill whole bytes (256
    ternary inputs are 51.2 bytes), each run is padded to whole bytes with the code 0, and
    ``lay_out`` pads the inputs alike with zeros, so that no byte straddles two scales.
    """

    values: ValueSet
    n_in: int
    group: int
    codes: U8  # (groups, out): byte j of output o holds the codes of inputs g j .. g j + g - 1
    table: F32  # (k,) the values in float32
    decoded: F32  # (8, 256): decoded[i, b] is the value of digit i of byte b
    k: int  # len(values), kept at hand for the per-call path
    signs: bool  # values == {-1, +1}: the XNOR path applies
    scales: F32  # (spans, out): the scale of output o over the byte positions of span s
    span: int  # byte positions a scale covers
    run: int  # inputs that share a scale (n_in for one scale per output)
    scale_bytes: int  # bytes of the scales as given (0 when unscaled)

    @classmethod
    def from_codes(
        cls,
        codes: npt.NDArray[np.integer[Any]],
        values: ValueSet,
        scales: npt.ArrayLike | None = None,
    ) -> PackedMatrix:
        """Pack an ``(out, n_in)`` array of codes in ``[0, k)``, with ``scales`` (positive,
        of shape ``(1, 1)``, ``(out, 1)`` or ``(out, s)`` with ``s`` dividing ``n_in``: one
        for the matrix, one per output, or one per output and run of ``n_in / s`` inputs)."""
        out, n_in = codes.shape
        k = len(values)
        g = radix_for(k, max_bits=8).group
        given = np.ones((1, 1), dtype=np.float32) if scales is None else np.asarray(scales)
        spans = given.shape[1]
        if given.ndim != 2 or given.shape[0] not in (1, out) or n_in % spans:
            raise ValueError(
                f"scales of shape {given.shape} do not fit an ({out}, {n_in}) matrix: use "
                "(1, 1), (out, 1) or (out, s) with s dividing the inputs"
            )
        run = n_in // spans
        if spans > 1 and run % g:  # pad each run to whole bytes (code 0 where no input is)
            width = -(-run // g) * g
            runs = np.zeros((out, spans, width), dtype=np.int64)
            runs[:, :, :run] = codes.reshape(out, spans, run)
            codes = runs.reshape(out, spans * width)
        groups = -(-codes.shape[1] // g)
        padded = np.zeros((out, groups * g), dtype=np.int64)  # code 0 where there is no input
        padded[:, : codes.shape[1]] = codes
        powers = k ** np.arange(g, dtype=np.int64)
        packed = (padded.reshape(out, groups, g) * powers).sum(axis=2).astype(np.uint8)
        table = np.asarray(values.values, dtype=np.float32)
        digits = (np.arange(256)[None, :] // powers[:, None]) % k
        decoded = np.zeros((8, 256), dtype=np.float32)
        decoded[:g] = table[digits]
        codes_t = np.ascontiguousarray(packed.T)
        by_span = np.ascontiguousarray(np.broadcast_to(given, (out, spans)).T, dtype=np.float32)
        return cls(
            values,
            n_in,
            g,
            codes_t,
            table,
            decoded,
            k,
            values == ValueSet([-1, 1]),
            by_span,
            groups // spans,
            run,
            0 if scales is None else 4 * given.size,
        )

    @property
    def out(self) -> int:
        return int(self.codes.shape[1])

    @property
    def groups(self) -> int:
        return int(self.codes.shape[0])

    @property
    def width(self) -> int:
        """Inputs the kernels read: ``n_in``, plus each run's padding to whole bytes."""
        spans = self.scales.shape[0]
        return self.n_in if spans == 1 else spans * self.span * self.group

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes and of the scales (what the layer keeps instead of a
        float matrix)."""
        return int(self.codes.nbytes) + self.scale_bytes

    def lay_out(self, x: ArrayT) -> ArrayT:
        """Rows ``x`` (``(rows, n_in)``, any dtype) as the kernels read them: each run of
        inputs that share a scale padded with zeros to whole bytes (``x`` itself when none
        needs it)."""
        if self.width == self.n_in:
            return x
        spans = self.scales.shape[0]
        laid = np.zeros((x.shape[0], spans, self.width // spans), dtype=x.dtype)
        laid[:, :, : self.run] = x.reshape(x.shape[0], spans, self.run)
        return cast(ArrayT, laid.reshape(x.shape[0], self.width))


LOOKUP_MAX_ROWS = 8
"""Up to this many input rows, table lookups beat decoded tiles and BLAS on any packed matrix
(``benchmarks/inference.py``, gathers from whole tables on a 4096x4096 layer)."""
#: With register permutes, lookups beat decoded tiles and BLAS at any number of rows once
#: codes a byte times outputs reaches this: lookups cost a table a row (fixed) and a permute
#: a byte and 16 outputs, tiles a multiply-add a weight and row. Measured once at batch 256
#: on 1024-input layers of 256, 1024 and 4096 outputs (one thread): lookups won from 1024
#: outputs for sign weights, at 4096 for ternary and four values; ``benchmarks/inference.py``
#: checks the 4096-output case by batch.
LOOKUPS_AT_ANY_BATCH = 8192


def lookup_max_rows(m: PackedMatrix) -> int | None:
    """The most input rows for which table lookups run on ``m`` by default, beyond which
    decoded tiles and BLAS run: ``LOOKUP_MAX_ROWS``, or None (lookups for any number of rows)
    where register permutes make them cheaper than float multiply-adds (see
    ``LOOKUPS_AT_ANY_BATCH``).

    Examples:
        >>> from snapset import Ternary
        >>> small = PackedMatrix.from_codes(np.zeros((16, 64), np.int64), Ternary())
        >>> lookup_max_rows(small)
        8
    """
    kernels = _KERNELS.module()
    if kernels is not None and kernels.PERMUTES and m.group * m.out >= LOOKUPS_AT_ANY_BATCH:
        return None
    return LOOKUP_MAX_ROWS


def backend(explain: bool = False) -> str:
    """``"numba"`` when the compiled kernels are in use, else ``"numpy"``; with ``explain``, a
    sentence that starts with that name and says why (loading the kernels if need be)."""
    if explain:
        return _KERNELS.explain()
    return "numpy" if _KERNELS.module() is None else "numba"


def small_matmul(
    x: F32, m: PackedMatrix, bias: F32, max_rows: int | None, threads: int = 1
) -> tuple[str, str, F32 | None]:
    """``x @ W.T + bias`` for float32 rows ``x`` (``(rows, n_in)``) by XNOR or table lookups.

    Returns the backend that ran (``"numba"`` or ``"numpy"``), then ``("xnor", y)`` when ``W``
    and every input are in {-1, +1}, ``("lookup", y)`` for at most ``max_rows`` rows (any
    number for None), and ``("tiles", None)`` otherwise (the caller then uses ``decode_rows``
    and BLAS). Each span's
    sum of code values is accumulated as unscaled, then multiplied by its scale. The compiled
    kernels split the outputs between ``threads`` threads; each output is summed as one thread
    sums it, so ``y`` is the same for any number.
    """
    x = m.lay_out(x)
    kernels = _KERNELS.module()
    if kernels is not None:
        return ("numba", *_run_small(kernels, x, m, bias, max_rows, threads))
    if m.signs and bool(np.all(np.abs(x) == 1)):
        return "numpy", "xnor", _xnor_numpy(x, m) + bias
    if max_rows is not None and x.shape[0] > max_rows:
        return "numpy", "tiles", None
    return "numpy", "lookup", _lookup_numpy(x, m) + bias


def decode_rows(m: PackedMatrix, start: int, stop: int, out: F32, threads: int = 1) -> F32:
    """Rows ``start * g : stop * g`` of the scaled ``W.T`` (byte positions ``start:stop``),
    each code's value times its scale (in float32, the product a scaled float layer holds),
    into ``out``, by up to ``threads`` threads.

    Returns ``out[: (stop - start) * g]``, float32 of shape ``(rows, out_features)``, rows in
    the order of ``m.lay_out``; padding rows hold the padding codes' value (multiply them by
    zero inputs).
    """
    rows = (stop - start) * m.group
    kernels = _KERNELS.module()
    if kernels is None:
        block = m.codes[start:stop]  # (bytes, out)
        scales = m.scales[np.arange(start, stop) // m.span][:, None, :]
        decoded = m.decoded[: m.group, block].transpose(1, 0, 2) * scales
        out[:rows] = decoded.reshape(rows, m.out)
    else:

        def share(first: int, last: int) -> None:  # byte positions start + first : start + last
            _run_decode(kernels, m, start + first, start + last, out[first * m.group :])

        run_shares(share, spans(stop - start, _SHARES * threads, _DECODE_SHARE), threads)
    return out[:rows]


#: Work a thread takes at least, below which handing it over (20 to 60 us on the benchmark
#: machine) costs more than it saves: table lookups (rows x byte positions x outputs; 2^19
#: take about 100 us), XNOR bytes (as many take a sixteenth of that), and byte positions of a
#: decoded block of 4096 outputs.
_LOOKUP_SHARE = 1 << 19
_XNOR_SHARE = 1 << 23
_DECODE_SHARE = 8
#: Shares a thread of each product: a thread that starts late leaves its shares to the others.
_SHARES = 4
#: Shares start at multiples of this many outputs: the permutes' block, a cache line of codes.
_ALIGN = 64
#: Entries of a half table: two registers of 16 float32 (sets of up to 5 values, and of 7 to
#: 32; a six-value byte's three digits make 36).
_HALF = 32


def sign_bits(x: F32) -> U8 | None:
    """Rows of -1/+1 (``(rows, n)`` float32) as bits, 8 inputs a byte (bit set for +1, the
    padding 0); None where an entry is neither or numba is not there."""
    kernels = _KERNELS.module()
    out = np.empty((x.shape[0], -(-x.shape[1] // 8)), dtype=np.uint8)
    return out if kernels is not None and kernels.sign_bytes(x, out) else None


def xnor_bits(
    x_bytes: U8,
    m: PackedMatrix,
    bias: F32,
    step: tuple[F32, U8, U8] | None,
    threads: int = 1,
) -> tuple[F32, U8 | None]:
    """One layer of a binary network on bits: ``y = x @ W.T + bias`` for rows of sign bits
    ``x_bytes`` and sign weights (XNOR-popcount), and, where ``step`` is ``(threshold, high,
    low)``, the sign bits of ``high if y >= threshold else low`` (per output; 1 for +1) for
    the next layer. ``y`` is computed as ``small_matmul`` computes it, so each bit is the one
    a comparison of its output gives. Needs the compiled kernels (``compiled()``)."""
    kernels = _KERNELS.module()
    assert kernels is not None and m.signs and m.width == m.n_in
    rows = x_bytes.shape[0]
    y = np.empty((rows, m.out), dtype=np.float32)
    bits = None if step is None else np.empty((rows, -(-m.out // 8)), dtype=np.uint8)

    def share(start: int, stop: int) -> None:
        kernels.xnor(x_bytes, m.codes, m.scales, m.span, m.n_in, bias, y, start, stop)
        if step is not None:
            kernels.threshold_bits(y, *step, bits, start, stop)

    least = _XNOR_SHARE // (rows * m.groups)
    run_shares(share, spans(m.out, _SHARES * threads, least, _ALIGN), threads)
    return y, bits


def _run_small(
    kernels: ModuleType, x: F32, m: PackedMatrix, bias: F32, max_rows: int | None, threads: int
) -> tuple[str, F32 | None]:
    """XNOR where it applies, else lookups for at most ``max_rows`` rows: tables (or sign
    bits) for the rows once, then the outputs in shares between threads."""
    rows = x.shape[0]
    y = np.empty((rows, m.out), dtype=np.float32)
    per_output = rows * m.groups  # bytes of codes read for each output
    if m.signs:
        x_bytes = np.empty((rows, m.groups), dtype=np.uint8)
        if kernels.sign_bytes(x, x_bytes):
            args = (x_bytes, m.codes, m.scales, m.span, x.shape[1], bias, y)
            shares = spans(m.out, _SHARES * threads, _XNOR_SHARE // per_output, _ALIGN)
            run_shares(lambda start, stop: kernels.xnor(*args, start, stop), shares, threads)
            return "xnor", y
    if max_rows is not None and rows > max_rows:
        return "tiles", None
    low_size = m.k ** ((m.group + 1) // 2)
    if kernels.PERMUTES and low_size <= _HALF:  # half tables in registers
        tables = np.empty((rows, m.groups, 2, _HALF), dtype=np.float32)
        build, lookup = kernels.build_halves, kernels.lookup_halves
        sizes: tuple[int, ...] = (low_size,)
    else:  # whole tables in L1, gathers
        tables = np.empty((rows, m.groups, 256), dtype=np.float32)
        build, lookup, sizes = kernels.build_tables, kernels.lookup, ()

    def tabulate(first: int, last: int) -> None:  # each row's tables, rows in shares
        for r in range(first, last):
            build(x[r], m.table, m.k, m.group, tables[r])

    def share(start: int, stop: int) -> None:
        for r in range(rows):
            lookup(tables[r], m.codes, *sizes, m.scales, m.span, bias, y[r], start, stop)

    run_shares(tabulate, spans(rows, threads, 1), threads)
    run_shares(share, spans(m.out, _SHARES * threads, _LOOKUP_SHARE // per_output, _ALIGN), threads)
    return "lookup", y


def _run_decode(kernels: ModuleType, m: PackedMatrix, start: int, stop: int, out: F32) -> None:
    scaled = m.scale_bytes > 0
    if m.k == 2:
        low, high = m.table
        kernels.decode_two(m.codes, low, high, m.scales, m.span, scaled, start, stop, out)
    else:
        kernels.decode(m.codes, m.decoded, m.group, m.scales, m.span, scaled, start, stop, out)


# ----- numpy versions --------------------------------------------------------------------------


def _by_span(m: PackedMatrix, per_byte: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``(groups, out)`` sums per byte position as ``(spans, out)`` sums per span."""
    sums: npt.NDArray[Any] = per_byte.reshape(-1, m.span, m.out).sum(axis=1)
    return sums


def _lookup_numpy(x: F32, m: PackedMatrix) -> F32:
    xp = np.zeros((x.shape[0], m.groups * m.group), dtype=np.float32)
    xp[:, : x.shape[1]] = x  # padded inputs are 0, so the padding codes add nothing
    tables = np.empty((m.groups, 256), dtype=np.float32)
    y = np.empty((x.shape[0], m.out), dtype=np.float32)
    for row in range(x.shape[0]):
        _tables_numpy(xp[row], m.table, len(m.values), m.group, tables)
        picked = np.take_along_axis(tables, m.codes.astype(np.intp), axis=1)
        y[row] = (m.scales * _by_span(m, picked)).sum(axis=0)
    return y


def _xnor_numpy(signs: F32, m: PackedMatrix) -> F32:
    n = signs.shape[1]
    bits = np.zeros((signs.shape[0], m.groups * 8), dtype=np.bool_)
    bits[:, :n] = signs > 0  # padding: bit 0 in both, so it never counts as differing
    x_bytes = np.packbits(bits, axis=1, bitorder="little")
    starts = 8 * m.span * np.arange(m.scales.shape[0])
    inputs = (np.minimum(n, starts + 8 * m.span) - starts)[:, None]  # real inputs per span
    counts = [_by_span(m, _popcount(row[:, None] ^ m.codes)) for row in x_bytes]
    y = np.stack([(m.scales * (inputs - 2 * c).astype(np.float32)).sum(axis=0) for c in counts])
    return y.astype(np.float32)


def _tables_numpy(x: F32, values: F32, k: int, g: int, tables: F32) -> None:
    # As the compiled build_tables: the low (g + 1) // 2 digits and the others summed apart,
    # then entry b = low[b % k^digits] + high[b // k^digits].
    xs = x.reshape(-1, g)
    digits = (g + 1) // 2
    low, high = _digit_sums(xs[:, :digits], values, k), _digit_sums(xs[:, digits:], values, k)
    both = high[:, :, None] + low[:, None, :]
    tables[:, : both.shape[1] * both.shape[2]] = both.reshape(xs.shape[0], -1)


def _digit_sums(xs: F32, values: F32, k: int) -> F32:
    """``sums[j, b] = sum_i xs[j, i] * values[digit_i(b)]``, by doubling: digit ``i`` selects
    a block of ``k^i`` entries."""
    sums = np.zeros((xs.shape[0], k ** xs.shape[1]), dtype=np.float32)
    size = 1
    for i in range(xs.shape[1]):
        for d in range(k - 1, -1, -1):
            sums[:, d * size : (d + 1) * size] = sums[:, :size] + xs[:, i : i + 1] * values[d]
        size *= k
    return sums


def _popcount(bytes_: U8) -> npt.NDArray[np.int64]:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        counts: npt.NDArray[np.int64] = np.bitwise_count(bytes_).astype(np.int64)
        return counts
    bits = np.unpackbits(bytes_[..., None], axis=-1)
    counts = bits.sum(axis=-1, dtype=np.int64)
    return counts


# ----- numba versions --------------------------------------------------------------------------


def _warm_up(kernels: ModuleType) -> None:
    """Run every kernel once, for the argument types of real calls: sign weights (XNOR), ternary
    (half tables, where the CPU has the permutes) and six values (whole tables)."""
    for values in (ValueSet([-1, 1]), ValueSet([-1, 0, 1]), ValueSet(range(6))):
        m = PackedMatrix.from_codes(np.zeros((1, 1), dtype=np.int64), values)
        x = np.ones((1, 1), dtype=np.float32)
        bias = np.zeros(1, dtype=np.float32)
        _run_small(kernels, x, m, bias, 1, 1)  # XNOR for sign weights
        _run_small(kernels, 0.5 * x, m, bias, 1, 1)  # lookups
        _run_decode(kernels, m, 0, 1, np.empty((m.group, 1), dtype=np.float32))
    flags = np.ones(1, np.uint8)
    kernels.threshold_bits(x, x[0], flags, flags, np.empty((1, 1), np.uint8), 0, 1)
    edges = np.array([-np.inf, -np.inf, -0.5, 0.5, np.inf, np.inf], np.float32)
    integers = np.array([-1, 0, 1], np.int8)
    kernels.grid_integers(edges[2:4], edges, integers, np.empty(2, np.int8), 0, 2)


_KERNELS = KernelLoader("snapset's packed kernels", "snapset._kernels._numba", _warm_up)
