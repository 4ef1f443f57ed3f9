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

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._packing import radix_for
from .._sets import ValueSet

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
    loaded = _loaded()
    if explain:
        return loaded.reason
    return "numpy" if loaded.kernels is None else "numba"


def small_matmul(x: F32, m: PackedMatrix, bias: F32, max_rows: int) -> tuple[str, str, F32 | None]:
    """``x @ W.T + bias`` for float32 rows ``x`` (``(rows, n_in)``) by XNOR or table lookups.

    Returns the backend that ran (``"numba"`` or ``"numpy"``), then ``("xnor", y)`` when ``W``
    and every input are in {-1, +1}, ``("lookup", y)`` for at most ``max_rows`` rows, and
    ``("tiles", None)`` otherwise (the caller then uses ``decode_rows`` and BLAS).
    """
    kernels = _numba_kernels()
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
    kernels = _numba_kernels()
    if kernels is None:
        block = m.codes[start:stop]  # (bytes, out)
        out[:rows] = m.decoded[: m.group, block].transpose(1, 0, 2).reshape(rows, m.out)
    else:
        _run_decode(kernels, m, start, stop, out)
    return out[:rows]


def _run_small(
    kernels: Kernels, x: F32, m: PackedMatrix, bias: F32, max_rows: int
) -> tuple[str, F32 | None]:
    y = np.empty((x.shape[0], m.out), dtype=np.float32)
    used = kernels["small"](x, m.table, m.k, m.group, m.codes, bias, m.signs, max_rows, y)
    return ("tiles", None) if used == 0 else ("xnor" if used == 1 else "lookup", y)


def _run_decode(kernels: Kernels, m: PackedMatrix, start: int, stop: int, out: F32) -> None:
    if m.k == 2:
        kernels["decode_two"](m.codes, m.table[0], m.table[1], start, stop, out)
    else:
        kernels["decode"](m.codes, m.decoded, m.group, start, stop, out)


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

Kernels = dict[str, Callable[..., Any]]


@dataclass(frozen=True)
class _Loaded:
    kernels: Kernels | None  # None: the numpy versions run
    reason: str  # which kernels and why, in a sentence that starts with "numba" or "numpy"


_STATE: _Loaded | None = None
# Threads making their first packed call at once all wait for one load; none may see a
# half-loaded state and run numpy while the others run numba.
_LOAD_LOCK = threading.Lock()


def _numba_kernels() -> Kernels | None:
    """The compiled kernels, built on first use; None where numba is missing or turned off."""
    return _loaded().kernels


def _loaded() -> _Loaded:
    global _STATE
    if os.environ.get("SNAPSET_KERNELS", "").lower() == "numpy":
        return _Loaded(None, "numpy, because SNAPSET_KERNELS=numpy is set")
    if _STATE is None:
        with _LOAD_LOCK:
            if _STATE is None:
                _STATE = _load()
    return _STATE


def _load() -> _Loaded:
    """Import numba's kernels and compile them for this CPU, from its cache where it can.

    Without a writable cache directory, or with cache files that do not load (truncated,
    corrupt), the kernels compile afresh, uncached, with a warning: every process then pays the
    compile time. Where even that fails, the numpy versions run.
    """
    try:
        from . import _numba
    except ImportError as error:
        return _Loaded(
            None, f"numpy, because numba is not installed ({error}): pip install 'snapset[kernels]'"
        )
    try:
        folder = _numba.enable_cache()
    except RuntimeError as error:  # numba's "cannot cache function": no writable directory
        problem = (
            f"no writable cache directory ({error}); set NUMBA_CACHE_DIR to a writable folder "
            "to compile them once"
        )
    else:
        try:
            _warm_up(_numba.KERNELS)
        except Exception as error:  # a damaged cache file can raise anything
            problem = (
                f"its files in {folder} do not load ({type(error).__name__}: {error}); delete "
                "them to compile once and cache again"
            )
        else:
            return _Loaded(_numba.KERNELS, f"numba, compiled for this CPU, cached in {folder}")
    # a fresh copy of the module: its kernels have no cache attached
    _numba = importlib.reload(_numba)
    try:
        _warm_up(_numba.KERNELS)
    except Exception as error:  # whatever numba raises, numpy computes the same
        loaded = _Loaded(
            None,
            f"numpy, because numba could not compile the kernels ({type(error).__name__}: "
            f"{error}) after its cache failed: {problem}",
        )
    else:
        loaded = _Loaded(
            _numba.KERNELS,
            "numba, compiled for this CPU without its on-disk cache, so every process compiles "
            f"them again on its first packed call (a few seconds): {problem}",
        )
    warnings.warn(f"snapset's packed kernels: {loaded.reason}", RuntimeWarning, stacklevel=2)
    return loaded


def _warm_up(kernels: Kernels) -> None:
    """Compile (or load from the cache) every kernel for the argument types of real calls."""
    for values in (ValueSet([-1, 1]), ValueSet([-1, 0, 1])):
        m = PackedMatrix.from_codes(np.zeros((1, 1), dtype=np.int64), values)
        x = np.ones((1, 1), dtype=np.float32)
        _run_small(kernels, x, m, np.zeros(1, dtype=np.float32), 1)
        _run_decode(kernels, m, 0, 1, np.empty((m.group, 1), dtype=np.float32))
