"""Mixed-radix packing of value codes: ``k`` values at close to ``log2(k)`` bits a weight.

This module knows nothing of torch. A tensor's codes (indices into its sorted value set, each in
``[0, k)``) are cut into groups of ``g`` codes; a group is the base-``k`` number
``c_0 + c_1 k + ... + c_{g-1} k^(g-1)``, written least significant bit first in a field of
``bits = bit_length(k^g - 1)`` bits, and the fields follow each other in one little-endian
bitstream. The last group may be shorter (``r < g`` codes in ``bit_length(k^r - 1)`` bits), so
nothing is padded but the final byte. For ``k = 2`` this is exactly
``numpy.packbits(codes, bitorder="little")``; ternary takes 29 codes in 46 bits (1.586 bits a
weight, log2(3) = 1.585), five values 3 codes in 7 bits (2.333, log2(5) = 2.322).

Fields fit in 64 bits, so a group is one ``uint64`` and packing is a few vectorised passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Radix", "pack_codes", "radix_for", "unpack_codes"]

#: Groups handled per pass: bounds the temporary memory (a few dozen MiB) of huge tensors. A
#: multiple of 8, so that every pass but the last ends on a byte boundary.
_CHUNK_GROUPS = 1 << 16


@dataclass(frozen=True)
class Radix:
    """How codes of a ``k``-value set are grouped: ``group`` codes in ``field_bits`` bits."""

    k: int
    group: int

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"Invalid number of values: {self.k} (must be >= 2)")
        if not 1 <= self.group <= 64 or self.field(self.group) > 64:
            raise ValueError(
                f"Invalid group of {self.group} codes for {self.k} values: "
                f"k^group must fit in 64 bits"
            )

    def field(self, codes: int) -> int:
        """Bits of the field that holds ``codes`` codes: ``bit_length(k^codes - 1)``."""
        return int(self.k**codes - 1).bit_length()

    @property
    def field_bits(self) -> int:
        """Bits of a full group's field."""
        return self.field(self.group)

    @property
    def bits_per_weight(self) -> float:
        """``field_bits / group``: the cost of a weight in a long tensor."""
        return self.field_bits / self.group

    def nbytes(self, count: int) -> int:
        """Bytes that ``count`` packed codes take."""
        full, rest = divmod(count, self.group)
        return math.ceil((full * self.field_bits + self.field(rest)) / 8)


def radix_for(k: int, max_bits: int = 64) -> Radix:
    """The grouping with the fewest bits a weight whose field fits in ``max_bits``.

    Ties go to the larger group (fewer fields; 8 signs a byte rather than 1).

    Examples:
        >>> r = radix_for(3)
        >>> r.group, r.field_bits, round(r.bits_per_weight, 3)
        (29, 46, 1.586)
        >>> radix_for(3, max_bits=8).group  # five ternary codes a byte: 243 <= 256
        5
    """
    if k < 2:
        raise ValueError(f"Invalid number of values: {k} (must be >= 2)")
    best_group, best_bits = 0, 0
    for group in range(1, 65):
        bits = int(k**group - 1).bit_length()
        if bits > max_bits:
            break
        # Compare bits / group exactly, as fractions.
        if best_group == 0 or bits * best_group <= best_bits * group:
            best_group, best_bits = group, bits
    if best_group == 0:
        raise ValueError(f"{k} values need more than {max_bits} bits a code")
    return Radix(k, best_group)


def pack_codes(codes: npt.ArrayLike, radix: Radix) -> npt.NDArray[np.uint8]:
    """Pack codes in ``[0, k)`` (any shape, read flat in C order) into bytes.

    Examples:
        >>> pack_codes([1, 0, 1, 1, 0, 0, 0, 0, 1], radix_for(2)).tolist()
        [13, 1]
        >>> unpack_codes(pack_codes([2, 0, 1, 2], radix_for(3)), radix_for(3), 4).tolist()
        [2, 0, 1, 2]
    """
    flat = np.asarray(codes).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= radix.k):
        raise ValueError(f"codes must lie in [0, {radix.k - 1}], got {flat.min()}..{flat.max()}")
    flat = flat.astype(np.uint64)
    g = radix.group
    out = np.empty(radix.nbytes(flat.size), dtype=np.uint8)
    step = _CHUNK_GROUPS * g
    written = 0
    for start in range(0, max(flat.size, 1), step):
        piece = flat[start : start + step]
        full = piece.size // g
        bits = [_bits(_horner(piece[: full * g].reshape(full, g), radix.k), radix.field_bits)]
        rest = piece[full * g :]
        if rest.size:
            bits.append(_bits(_horner(rest.reshape(1, -1), radix.k), radix.field(rest.size)))
        packed = np.packbits(np.concatenate(bits), bitorder="little")
        out[written : written + packed.size] = packed
        written += packed.size
    return out


def unpack_codes(data: npt.NDArray[np.uint8], radix: Radix, count: int) -> npt.NDArray[np.int64]:
    """Inverse of ``pack_codes``: ``count`` codes (flat int64) from the bytes.

    Raises ``ValueError`` if ``data`` has the wrong length or holds a group that is not a valid
    base-``k`` number (a damaged file).
    """
    if data.size != radix.nbytes(count):
        raise ValueError(
            f"{count} codes of {radix.k} values take {radix.nbytes(count)} bytes, got {data.size}"
        )
    g, width = radix.group, radix.field_bits
    codes = np.empty(count, dtype=np.int64)
    step = _CHUNK_GROUPS * g
    byte = 0
    for start in range(0, max(count, 1), step):
        n = min(step, count - start)
        full, rest = divmod(n, g)
        nbits = full * width + radix.field(rest)
        nbytes = math.ceil(nbits / 8)
        bits = np.unpackbits(data[byte : byte + nbytes], count=nbits, bitorder="little")
        byte += nbytes
        pieces = [_digits(_number(bits[: full * width].reshape(full, width)), radix.k, g)]
        if rest:
            tail = bits[full * width :].reshape(1, -1)
            pieces.append(_digits(_number(tail), radix.k, rest))
        codes[start : start + n] = np.concatenate([p.reshape(-1) for p in pieces])
    return codes


def _horner(groups: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.uint64]:
    """``sum_i groups[:, i] * k^i``, exact in uint64 since ``k^g <= 2^64``."""
    value = np.zeros(groups.shape[0], dtype=np.uint64)
    base = np.uint64(k)
    for i in range(groups.shape[1] - 1, -1, -1):
        value = value * base + groups[:, i]
    return value


def _bits(values: npt.NDArray[np.uint64], width: int) -> npt.NDArray[np.uint8]:
    shifts = np.arange(width, dtype=np.uint64)
    bits: npt.NDArray[np.uint8] = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return bits.reshape(-1)


def _number(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    shifts = np.arange(bits.shape[1], dtype=np.uint64)
    number: npt.NDArray[np.uint64] = (bits.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
    return number


def _digits(values: npt.NDArray[np.uint64], k: int, count: int) -> npt.NDArray[np.int64]:
    base = np.uint64(k)
    out = np.empty((values.shape[0], count), dtype=np.int64)
    for i in range(count):
        out[:, i] = values % base
        values = values // base
    if values.size and values.any():
        raise ValueError(
            f"damaged codes: a group of {count} codes holds a number >= {k}^{count}, "
            "which no packing of valid codes writes"
        )
    return out
