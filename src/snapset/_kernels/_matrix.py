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
  weights at 1/32 (sign) of float32's bytes.
* **Float inputs, many rows** (``decode_rows``): a table lookup per row costs more than a float
  multiply-add amortised over many rows, so ``W.T`` is decoded a block of inputs at a time into
  a float buffer and the caller accumulates ``x[:, block] @ W.T[block]`` with BLAS.
* **Inputs in {-1, +1} with sign weights** (``small_matmul``, any number of rows): the
  input's sign bits are XORed with the weight bytes and counted: ``y = n - 2 popcount(x ^ w)``.

The kernels are compiled by numba on the first packed call, all at once under a lock, and kept
in numba's on-disk cache, so the first call in a fresh environment takes a few seconds and later
processes load the machine code. Without a writable cache directory, or with damaged cache
files, they compile uncached (with a warning). Where numba is missing or fails, or
``SNAPSET_KERNELS=numpy`` is set, vectorised numpy versions compute the same thing.
``backend(explain=True)`` says which kernels run and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._packing import radix_for
from .._sets import ValueSet
from ._loader import KernelLoader

__all__ = ["PackedMatrix", "backend", "decode_rows", "small_matmul"]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class PackedMatrix:
    """An ``(out, n_in)`` matrix of ``k`` values as ``(groups, out)`` bytes of ``g`` codes."""

    values: ValueSet
    n_in: int
    group: int
    codes: U8  # (groups, out): byte j of output o holds the codes of inputs g j .. g j + g - 1
    table: F32  # (k,) the values in float32
    decoded: F32  # (8, 256): decoded[i, b] is the value of digit i of byte b
    k: int  # len(values), kept at hand for the per-call path
    signs: bool  # values == {-1, +1}: the XNOR path applies

    @classmethod
    def from_codes(cls, codes: npt.NDArray[np.integer[Any]], values: ValueSet) -> PackedMatrix:
        """Pack an ``(out, n_in)`` array of codes in ``[0, k)``."""
        out, n_in = codes.shape
        k = len(values)
        g = radix_for(k, max_bits=8).group
        groups = -(-n_in // g)
        padded = np.zeros((out, groups * g), dtype=np.int64)  # code 0 where there is no input
        padded[:, :n_in] = codes
        powers = k ** np.arange(g, dtype=np.int64)
        packed = (padded.reshape(out, groups, g) * powers).sum(axis=2).astype(np.uint8)
        table = np.asarray(values.values, dtype=np.float32)
        digits = (np.arange(256)[None, :] // powers[:, None]) % k
        decoded = np.zeros((8, 256), dtype=np.float32)
        decoded[:g] = table[digits]
        codes_t = np.ascontiguousarray(packed.T)
        return cls(values, n_in, g, codes_t, table, decoded, k, values == ValueSet([-1, 1]))

    @property
    def out(self) -> int:
        return int(self.codes.shape[1])

    @property
    def groups(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes (what the layer keeps instead of a float matrix)."""
        return int(self.codes.nbytes)


def backend(explain: bool = False) -> str:
    """``"numba"`` when the compiled kernels are in use, else ``"numpy"``; with ``explain``, a
    sentence that starts with that name and says why (loading the kernels if need be)."""
    if explain:
        return _KERNELS.explain()
    return "numpy" if _KERNELS.module() is None else "numba"


def small_matmul(x: F32, m: PackedMatrix, bias: F32, max_rows: int) -> tuple[str, str, F32 | None]:
    """``x @ W.T + bias`` for float32 rows ``x`` (``(rows, n_in)``) by XNOR or table lookups.

    Returns the backend that ran (``"numba"`` or ``"numpy"``), then ``("xnor", y)`` when ``W``
    and every input are in {-1, +1}, ``("lookup", y)`` for at most ``max_rows`` rows, and
    ``("tiles", None)`` otherwise (the caller then uses ``decode_rows`` and BLAS).
    """
    kernels = _KERNELS.module()
    if kernels is not None:
        return ("numba", *_run_small(kernels, x, m, bias, max_rows))
    if m.signs and bool(np.all(np.abs(x) == 1)):
        return "numpy", "xnor", _xnor_numpy(x, m) + bias
    if x.shape[0] > max_rows:
        return "numpy", "tiles", None
    return "numpy", "lookup", _lookup_numpy(x, m) + bias


def decode_rows(m: PackedMatrix, start: int, stop: int, out: F32) -> F32:
    """Rows ``start * g : stop * g`` of ``W.T`` (byte positions ``start:stop``) into ``out``.

    Returns ``out[: (stop - start) * g]``, float32 of shape ``(rows, out_features)``; rows past
    ``n_in`` hold the padding codes' value (multiply them by zero inputs).
    """
    rows = (stop - start) * m.group
    kernels = _KERNELS.module()
    if kernels is None:
        block = m.codes[start:stop]  # (bytes, out)
        out[:rows] = m.decoded[: m.group, block].transpose(1, 0, 2).reshape(rows, m.out)
    else:
        _run_decode(kernels, m, start, stop, out)
    return out[:rows]


def _run_small(
    kernels: ModuleType, x: F32, m: PackedMatrix, bias: F32, max_rows: int
) -> tuple[str, F32 | None]:
    y = np.empty((x.shape[0], m.out), dtype=np.float32)
    used = kernels.small(x, m.table, m.k, m.group, m.codes, bias, m.signs, max_rows, y)
    return ("tiles", None) if used == 0 else ("xnor" if used == 1 else "lookup", y)


def _run_decode(kernels: ModuleType, m: PackedMatrix, start: int, stop: int, out: F32) -> None:
    if m.k == 2:
        kernels.decode_two(m.codes, m.table[0], m.table[1], start, stop, out)
    else:
        kernels.decode(m.codes, m.decoded, m.group, start, stop, out)


# ----- numpy versions --------------------------------------------------------------------------


def _lookup_numpy(x: F32, m: PackedMatrix) -> F32:
    xp = np.zeros((x.shape[0], m.groups * m.group), dtype=np.float32)
    xp[:, : m.n_in] = x  # padded inputs are 0, so the padding codes add nothing
    tables = np.empty((m.groups, 256), dtype=np.float32)
    y = np.empty((x.shape[0], m.out), dtype=np.float32)
    for row in range(x.shape[0]):
        _tables_numpy(xp[row], m.table, len(m.values), m.group, tables)
        y[row] = np.take_along_axis(tables, m.codes.astype(np.intp), axis=1).sum(axis=0)
    return y


def _xnor_numpy(signs: F32, m: PackedMatrix) -> F32:
    bits = np.zeros((signs.shape[0], m.groups * 8), dtype=np.bool_)
    bits[:, : m.n_in] = signs > 0  # padding: bit 0 in both, so it never counts as differing
    x_bytes = np.packbits(bits, axis=1, bitorder="little")
    counts = np.stack([_popcount(row[:, None] ^ m.codes).sum(axis=0) for row in x_bytes])
    return (m.n_in - 2 * counts).astype(np.float32)


def _tables_numpy(x: F32, values: F32, k: int, g: int, tables: F32) -> None:
    # Table index b = sum_i digit_i k^i: digit i selects a block of k^i entries, doubling-style.
    xs = x.reshape(-1, g)
    tables[:, 0] = 0.0
    size = 1
    for i in range(g):
        for d in range(k - 1, -1, -1):
            tables[:, d * size : (d + 1) * size] = tables[:, :size] + xs[:, i : i + 1] * values[d]
        size *= k


def _popcount(bytes_: U8) -> npt.NDArray[np.int64]:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        counts: npt.NDArray[np.int64] = np.bitwise_count(bytes_).astype(np.int64)
        return counts
    bits = np.unpackbits(bytes_[..., None], axis=-1)
    counts = bits.sum(axis=-1, dtype=np.int64)
    return counts


# ----- numba versions --------------------------------------------------------------------------


def _warm_up(kernels: ModuleType) -> None:
    """Run every kernel once, for the argument types of real calls (sign and ternary weights)."""
    for values in (ValueSet([-1, 1]), ValueSet([-1, 0, 1])):
        m = PackedMatrix.from_codes(np.zeros((1, 1), dtype=np.int64), values)
        x = np.ones((1, 1), dtype=np.float32)
        _run_small(kernels, x, m, np.zeros(1, dtype=np.float32), 1)
        _run_decode(kernels, m, 0, 1, np.empty((m.group, 1), dtype=np.float32))


_KERNELS = KernelLoader("snapset's packed kernels", "snapset._kernels._numba", _warm_up)
