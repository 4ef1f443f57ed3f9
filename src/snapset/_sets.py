"""Value sets: the finite sets a parameter may take its values from.

This module knows nothing of torch or keras. It owns the maths every front shares: the sorted
values, the nearest-value projection with its tie rule, the index codes, and the scale of the
latent ("the set's range maps to [-1, 1]") that the training methods use.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Binary", "Sign", "Ternary", "ValueSet"]


class ValueSet:
    """A finite, sorted set of real values that a parameter may take.

    The values are stored sorted and as Python floats, so two sets built from the same numbers
    in any order are equal and hash alike.

    Nearest-value projection maps every real number to the closest value of the set. Tie rule:
    a point exactly halfway between two neighbouring values goes to the larger one, so that the
    sign of 0 is +1 and the {0, 1} rounding of 0.5 is 1.

    Example:
        >>> vs = ValueSet([1, -1, 0.5, -0.5])
        >>> vs.values
        (-1.0, -0.5, 0.5, 1.0)
        >>> len(vs), vs.bits
        (4, 2)
        >>> vs.project([0.2, 0.75, -3.0]).tolist()
        [0.5, 1.0, -1.0]
        >>> vs.encode([0.2, 0.75, -3.0]).tolist()
        [2, 3, 0]
    """

    __slots__ = ("_hash", "_values")

    def __init__(self, values: Iterable[float] | ValueSet) -> None:
        if isinstance(values, ValueSet):
            values = values.values
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"ValueSet needs a list of numbers such as [-1, 1], got {values!r}")
        entries = list(values)
        for entry in entries:
            if isinstance(entry, bool) or not isinstance(entry, numbers.Real):
                raise ValueError(
                    f"ValueSet entries must be real numbers, got {entry!r} "
                    f"({type(entry).__name__}) in {entries!r}"
                )
        floats = [float(entry) for entry in entries]
        bad = [v for v in floats if not math.isfinite(v)]
        if bad:
            raise ValueError(f"ValueSet entries must be finite, got {bad[0]} in {entries!r}")
        if len(floats) < 2:
            raise ValueError(
                f"ValueSet needs at least two values to choose between, got {entries!r}"
            )
        duplicates = sorted({v for v in floats if floats.count(v) > 1})
        if duplicates:
            raise ValueError(
                f"ValueSet entries must be distinct, got {duplicates[0]} more than once "
                f"in {entries!r}"
            )
        ordered = tuple(sorted(floats))
        if not math.isfinite(ordered[-1] - ordered[0]):
            raise ValueError(f"ValueSet range {ordered[0]} .. {ordered[-1]} overflows a float")
        self._values = ordered
        for low, mid, high in zip(ordered, self.midpoints, ordered[1:], strict=False):
            if not low < mid < high:  # subnormal neighbours: no float lies between them
                raise ValueError(
                    f"ValueSet entries {low} and {high} are too close to tell apart: no float "
                    "lies between them to round at"
                )
        self._hash = hash(self._values)

    # ----- identity -------------------------------------------------------------------------

    @property
    def values(self) -> tuple[float, ...]:
        """The values, sorted in increasing order."""
        return self._values

    @property
    def bits(self) -> int:
        """Bits an index code needs: ``ceil(log2(len(self)))``."""
        return math.ceil(math.log2(len(self._values)))

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValueSet):
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"ValueSet([{', '.join(_short(v) for v in self._values)}])"

    def __reduce__(self) -> tuple[type[ValueSet], tuple[tuple[float, ...]]]:
        return (ValueSet, (self._values,))

    def get_config(self) -> dict[str, list[float]]:
        """The set as plain JSON data (Keras's serialization protocol; ``snapset.keras``
        registers the class with ``keras.saving``).

        Example:
            >>> ValueSet.from_config(Ternary().get_config()) == Ternary()
            True
        """
        return {"values": list(self._values)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ValueSet:
        """The set that :meth:`get_config` described."""
        return cls(config["values"])

    # ----- geometry ---------------------------------------------------------------------------

    @property
    def midpoints(self) -> tuple[float, ...]:
        """The ``len - 1`` decision boundaries of the projection, halfway between neighbours."""
        v = self._values
        return tuple(v[i] + (v[i + 1] - v[i]) / 2 for i in range(len(v) - 1))

    @property
    def center(self) -> float:
        """Centre of the set's range: ``(min + max) / 2``."""
        return (self._values[0] + self._values[-1]) / 2

    @property
    def half_range(self) -> float:
        """Half the set's range: ``(max - min) / 2``."""
        return (self._values[-1] - self._values[0]) / 2

    def to_latent(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map values to the latent scale, where the set's range is ``[-1, 1]``.

        Training methods keep their latent weights on this scale, so that a learning rate
        means the same for ``{0, 1}``, ``{-1, +1}`` or ``[0, 100]``.

        Example:
            >>> ValueSet([0, 1]).to_latent([0.0, 0.5, 1.0]).tolist()
            [-1.0, 0.0, 1.0]
        """
        return (np.asarray(x, dtype=np.float64) - self.center) / self.half_range

    def from_latent(self, t: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Inverse of :meth:`to_latent`."""
        return np.asarray(t, dtype=np.float64) * self.half_range + self.center

    # ----- projection ---------------------------------------------------------------------------

    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Index (into :attr:`values`) of the nearest value of each entry; ties go up.

        Example:
            >>> Sign().encode([-0.3, 0.0, 2.0]).tolist()
            [0, 1, 1]
        """
        array = np.asarray(x, dtype=np.float64)
        if np.isnan(array).any():
            raise ValueError("cannot project NaN onto a ValueSet")
        return np.searchsorted(np.asarray(self.midpoints), array, side="right").astype(np.int64)

    def decode(self, codes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Values of index codes.

        Example:
            >>> Ternary().decode([0, 1, 2]).tolist()
            [-1.0, 0.0, 1.0]
        """
        array = np.asarray(codes)
        if array.size and (array.min() < 0 or array.max() >= len(self)):
            raise ValueError(
                f"codes must lie in [0, {len(self) - 1}] for {self!r}, "
                f"got values from {array.min()} to {array.max()}"
            )
        table: npt.NDArray[np.float64] = np.asarray(self._values, dtype=np.float64)
        values: npt.NDArray[np.float64] = table[array]
        return values

    def project(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Nearest value of the set for each entry of ``x``; a tie goes to the larger value.

        Example:
            >>> Binary().project([-2.0, 0.49, 0.5, 7.0]).tolist()
            [0.0, 0.0, 1.0, 1.0]
        """
        return self.decode(self.encode(x))

    def contains(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Elementwise membership test.

        Example:
            >>> Sign().contains([1.0, 0.0, -1.0]).tolist()
            [True, False, True]
        """
        return np.isin(np.asarray(x, dtype=np.float64), np.asarray(self._values))


def Binary() -> ValueSet:
    """The set ``{0, 1}``.

    Example:
        >>> Binary().values
        (0.0, 1.0)
    """
    return ValueSet([0, 1])


def Sign() -> ValueSet:
    """The set ``{-1, +1}``.

    Example:
        >>> Sign().values
        (-1.0, 1.0)
    """
    return ValueSet([-1, 1])


def Ternary() -> ValueSet:
    """The set ``{-1, 0, +1}``.

    Example:
        >>> Ternary().values
        (-1.0, 0.0, 1.0)
    """
    return ValueSet([-1, 0, 1])


def _short(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)
