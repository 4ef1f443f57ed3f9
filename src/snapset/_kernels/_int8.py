"""Integer grids of value sets, and packed weights as int8 matrices for integer matrix units.

A set whose values are all ``step * n``, with integers ``n`` in int8's range, multiplies on
integer units: for activations ``alpha * step_a * n_a`` and weights ``scale * step_w * n_w``,

```text
y = alpha * step_a * step_w * scale * sum_i n_a[i] n_w[i]     the sum exact in int32
```

which is how BitNet b1.58 runs its per-token 8-bit activations against ternary weights. This
module finds the grid (exactly, on the values' binary fractions) and decodes a
``PackedMatrix`` into the ``(width, out)`` int8 matrix of its integers; the product itself is
the front's (``torch._int_mm`` for PyTorch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from .._sets import ValueSet
from ._matrix import _KERNELS, PackedMatrix
from ._threads import run_shares, spans

__all__ = ["INT8_RANGE", "IntegerGrid", "grid_integers", "int8_weight", "integer_grid"]

#: The integers an int8 holds.
INT8_RANGE = range(-128, 128)


@dataclass(frozen=True)
class IntegerGrid:
    """A set's values as ``step * n``: ``integers`` are the ``n`` of the set's values in their
    (sorted) order, with no common divisor but 1, so ``step`` is the largest such step."""

    step: float
    integers: tuple[int, ...]

    @property
    def largest(self) -> int:
        """The largest ``|n|``: a bound on each term of an integer sum."""
        return max(abs(n) for n in self.integers)


def integer_grid(values: ValueSet) -> IntegerGrid | str:
    """The largest ``step`` with every value of ``values`` equal to ``step * n``, ``n`` an
    integer in int8's range (-128..127), found exactly on the values' binary fractions; or,
    where there is none, why (a phrase whose subject is the set).

    Examples:
        >>> import snapset
        >>> integer_grid(snapset.ValueSet([1, -1, 0.5, -0.5]))
        IntegerGrid(step=0.5, integers=(-2, -1, 1, 2))
        >>> integer_grid(snapset.Sign()), integer_grid(snapset.Binary())
        (IntegerGrid(step=1.0, integers=(-1, 1)), IntegerGrid(step=1.0, integers=(0, 1)))
        >>> integer_grid(snapset.ValueSet(range(-128, 128))).step
        1.0
        >>> integer_grid(snapset.ValueSet([1, 200]))
        'lies on an integer grid only with integers up to 200, beyond int8 (-128..127)'
        >>> integer_grid(snapset.ValueSet([0.1, 0.3]))  # as binary fractions, far apart
        ... # doctest: +ELLIPSIS
        'lies on an integer grid only with integers up to 10808639105689190, beyond int8 ...'
    """
    fractions = [Fraction(v) for v in values]
    # every float is an integer over a power of two: over their common denominator, the step
    # is the greatest common divisor of the numerators
    denominator = math.lcm(*(f.denominator for f in fractions))
    numerators = [int(f * denominator) for f in fractions]
    step = Fraction(math.gcd(*numerators), denominator)
    integers = tuple(int(f / step) for f in fractions)
    if min(integers) < INT8_RANGE.start or max(integers) >= INT8_RANGE.stop:
        widest = max(abs(n) for n in integers)
        return (
            f"lies on an integer grid only with integers up to {widest}, beyond int8 "
            f"({INT8_RANGE.start}..{INT8_RANGE.stop - 1})"
        )
    return IntegerGrid(float(step), integers)


def int8_weight(m: PackedMatrix, grid: IntegerGrid) -> npt.NDArray[np.int8]:
    """``W.T`` of a packed matrix as the integers of ``grid`` (the grid of ``m.values``):
    ``(m.width, m.out)`` int8, rows in the order of ``m.lay_out`` (a padding row holds code
    0's integer: its input is 0). Unscaled: the scales apply to the integer sums.

    Examples:
        >>> import numpy as np, snapset
        >>> four = snapset.ValueSet([1, -1, 0.5, -0.5])
        >>> codes = np.array([[0, 1, 2], [3, 3, 0]])        # values -1, -0.5, 0.5 and 1, 1, -1
        >>> m = PackedMatrix.from_codes(codes, four)
        >>> int8_weight(m, integer_grid(four)).tolist()    # W.T in steps of 0.5
        [[-2, 2], [-1, 2], [1, -2]]
    """
    powers = len(m.values) ** np.arange(m.group)
    digits = (np.arange(256)[None, :] // powers[:, None]) % len(m.values)  # (g, 256)
    by_digit = np.asarray(grid.integers, dtype=np.int8)[digits]
    decoded = by_digit[:, m.codes].transpose(1, 0, 2)  # (groups, g, out)
    weight: npt.NDArray[np.int8] = np.ascontiguousarray(decoded.reshape(-1, m.out)[: m.width])
    return weight


def grid_integers(
    latent: npt.NDArray[np.float32],
    boundaries: npt.NDArray[np.float32],
    grid: IntegerGrid,
    threads: int = 1,
) -> npt.NDArray[np.int8] | None:
    """The integers ``n`` of the nearest values that a latent rounding picks for the flat
    ``latent``: value ``c`` where ``c`` of the sorted ``boundaries`` are reached (``>=``), as
    ``grid.integers[c]``, in one compiled pass split between ``threads``. None where numba is
    not there or the boundaries are too uneven for one correction (the caller then rounds
    with its own operations).

    Examples:
        >>> import numpy as np, snapset
        >>> grid = integer_grid(snapset.Ternary())
        >>> latent = np.array([-0.9, -0.5, 0.49, 0.5], np.float32)
        >>> grid_integers(latent, np.array([-0.5, 0.5], np.float32), grid).tolist()
        [-1, 0, 0, 1]
    """
    kernels = _KERNELS.module()
    if kernels is None or len(boundaries) < 2:
        return None
    integers = np.asarray(grid.integers, dtype=np.int8)
    infinity = np.array([np.inf, np.inf])
    edges = np.concatenate([-infinity, boundaries, infinity]).astype(latent.dtype)
    out = np.empty(latent.shape, dtype=np.int8)

    def share(start: int, stop: int) -> bool:
        return bool(kernels.grid_integers(latent, edges, integers, out, start, stop))

    settled = run_shares(share, spans(len(latent), threads, _GRID_SHARE), threads)
    return out if all(settled) else None


#: Entries a thread rounds at least (about 100 us of work).
_GRID_SHARE = 1 << 17
