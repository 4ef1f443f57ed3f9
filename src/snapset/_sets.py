"""Value sets: the finite sets a parameter may take its values from.

This module knows nothing of torch or keras. It owns the maths every front shares: the sorted
values, the nearest-value projection with its tie rule, the index codes, the scale of the
latent ("the set's range maps to [-1, 1]") that the training methods use, the ``spread`` init,
and the float64 tables that each front casts to its dtype (``ValueSet.tables``), with the
check that the dtype still tells the values apart.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Binary", "Sign", "Tables", "Ternary", "ValueSet", "round_to_dtype"]

Float64Array = npt.NDArray[np.float64]


class ValueSet:
    """A finite, sorted set of real values that a parameter may take.

    The values are stored sorted and as Python floats, so two sets built from the same numbers
    in any order are equal and hash alike.

    Nearest-value projection maps every real number to the closest value of the set. Tie rule:
    a point exactly halfway between two neighbouring values goes to the larger one, so that the
    sign of 0 is +1 and the {0, 1} rounding of 0.5 is 1.

    Examples:
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
        elif hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
            values = values.tolist()  # a numpy array or a framework's tensor of values
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"ValueSet needs a list of numbers such as [-1, 1], got {values!r}")
        entries = list(values)
        floats = [_finite_float(entry, entries) for entry in entries]
        if len(floats) < 2:
            raise ValueError(
                f"ValueSet needs at least two values to choose between, got {_brief(entries)}"
            )
        ordered = tuple(sorted(floats))
        # Neighbours after sorting: linear after the sort, so a hostile list of thousands
        # of values is checked as fast as it is read.
        repeated = next((a for a, b in pairwise(ordered) if a == b), None)
        if repeated is not None:
            raise ValueError(
                f"ValueSet entries must be distinct, got {repeated} more than once "
                f"in {_brief(entries)}"
            )
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
        """The set as code that rebuilds it; a long one as a ``range`` where it is one, else
        cut short (an int8 set would fill a screen, and every message names the set).

        Examples:
            >>> ValueSet([0.5, -1, 1])
            ValueSet([-1, 0.5, 1])
            >>> ValueSet(range(-128, 128))
            ValueSet(range(-128, 128))
            >>> ValueSet([k * k for k in range(20)])
            ValueSet([0, 1, 4, 9, ..., 289, 324, 361] (20 values))
        """
        v = self._values
        if len(v) <= 16:
            return f"ValueSet([{', '.join(_short(x) for x in v)}])"
        step = v[1] - v[0]
        if all(x.is_integer() for x in v) and all(b - a == step for a, b in pairwise(v)):
            stop, by = int(v[-1] + step), int(step)
            return f"ValueSet(range({int(v[0])}, {stop}{'' if by == 1 else f', {by}'}))"
        head, tail = ", ".join(map(_short, v[:4])), ", ".join(map(_short, v[-3:]))
        return f"ValueSet([{head}, ..., {tail}] ({len(v)} values))"

    def __reduce__(self) -> tuple[type[ValueSet], tuple[tuple[float, ...]]]:
        return (ValueSet, (self._values,))

    def get_config(self) -> dict[str, list[float]]:
        """The set as plain JSON data (Keras's serialization protocol; ``snapset.keras``
        registers the class with ``keras.saving``).

        Examples:
            >>> ValueSet.from_config(Ternary().get_config()) == Ternary()
            True
        """
        return {"values": list(self._values)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ValueSet:
        """The set that ``get_config`` described."""
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

        Examples:
            >>> ValueSet([0, 1]).to_latent([0.0, 0.5, 1.0]).tolist()
            [-1.0, 0.0, 1.0]
        """
        return (np.asarray(x, dtype=np.float64) - self.center) / self.half_range

    def from_latent(self, t: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Inverse of ``to_latent``."""
        return np.asarray(t, dtype=np.float64) * self.half_range + self.center

    def spread(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map a freshly initialised tensor onto the set's range, using every value equally.

        Entries keep their order: the smallest ``1/k`` of them land in the bin of the smallest
        value (the interval that rounds to it, from the set's minimum to the first midpoint),
        the next ``1/k`` in the next bin, and so on, spread evenly inside each bin. A tensor
        with at least ``k`` entries therefore uses every value, whatever its init's scale
        (PyTorch's and Keras's default inits are far narrower than ``{0, 1}`` or ``{-1, 0, 1}``,
        whose nearest rounding would be all zeros). Ties keep their index order.

        Examples:
            >>> Sign().spread([0.3, -0.2, 0.1, 0.0]).tolist()
            [0.75, -0.75, 0.25, -0.25]
        """
        array = np.asarray(x, dtype=np.float64)
        flat = array.reshape(-1)
        k, n = len(self._values), flat.size
        ranks = np.empty(n, dtype=np.float64)
        ranks[np.argsort(flat, kind="stable")] = np.arange(n, dtype=np.float64)
        position = (ranks + 0.5) * (k / n)  # in (0, k): the integer part picks the bin
        bins = np.minimum(np.floor(position), k - 1)
        edges = np.asarray(self.spread_edges, dtype=np.float64)
        low, high = edges[bins.astype(np.int64)], edges[bins.astype(np.int64) + 1]
        spread: npt.NDArray[np.float64] = low + (position - bins) * (high - low)
        return spread.reshape(array.shape)

    @property
    def spread_edges(self) -> tuple[float, ...]:
        """The ``k + 1`` edges of the bins ``spread`` fills: min, the midpoints, max."""
        return (self._values[0], *self.midpoints, self._values[-1])

    # ----- tables for the fronts ----------------------------------------------------------------

    def tables(self, dtype: str, latent_range: float | None = None) -> Tables:
        """The set's lookup tables as a float ``dtype`` holds them; refuse a dtype that merges
        two values (or a value and its boundary) or that overflows.

        Every table is computed once, in float64, and rounded to ``dtype`` by
        ``round_to_dtype`` (both fronts build from these numbers, so they agree bit for
        bit). ``dtype`` is a name as a front spells it (``"float16"``, ``"torch.bfloat16"``);
        messages repeat it. ``latent_range`` adds the latent tables of ``ste`` and
        ``stochastic``.

        Examples:
            >>> t = Ternary().tables("float16", latent_range=0.1)
            >>> t.values.tolist(), t.midpoints.tolist()
            ([-1.0, 0.0, 1.0], [-0.5, 0.5])
            >>> [round(x, 4) for x in t.thresholds.tolist()], t.scale
            ([-0.05, 0.05], 10.0)
            >>> ValueSet([1, 1.0001]).tables("torch.float16")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: ValueSet([1, 1.0001]) cannot be told apart in torch.float16: 1.0 and ...
        """
        rows = [np.asarray(self._values, dtype=np.float64), np.asarray(self.midpoints)]
        if latent_range is not None:
            rows += [
                self.to_latent(self._values) * latent_range,
                self.to_latent(self.midpoints) * latent_range,
            ]
        values, midpoints, *latent = (round_to_dtype(row, dtype) for row in rows)
        if not np.isfinite(values).all():
            raise ValueError(f"{self!r} does not fit in {dtype}: a value overflows")
        for table, boundaries in [(values, midpoints), *([tuple(latent)] if latent else [])]:
            _check_apart(self, dtype, np.stack([table[:-1], boundaries, table[1:]], axis=1))
        levels, thresholds = latent if latent else (None, None)
        return Tables(self, dtype, latent_range, values, midpoints, levels, thresholds)

    # ----- projection ---------------------------------------------------------------------------

    def encode(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Index (into ``values``) of the nearest value of each entry; ties go up.

        Examples:
            >>> Sign().encode([-0.3, 0.0, 2.0]).tolist()
            [0, 1, 1]
        """
        array = np.asarray(x, dtype=np.float64)
        if np.isnan(array).any():
            raise ValueError("cannot project NaN onto a ValueSet")
        return np.searchsorted(np.asarray(self.midpoints), array, side="right").astype(np.int64)

    def decode(self, codes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Values of index codes.

        Examples:
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

        Examples:
            >>> Binary().project([-2.0, 0.49, 0.5, 7.0]).tolist()
            [0.0, 0.0, 1.0, 1.0]
        """
        return self.decode(self.encode(x))

    def contains(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Elementwise membership test.

        Examples:
            >>> Sign().contains([1.0, 0.0, -1.0]).tolist()
            [True, False, True]
        """
        return np.isin(np.asarray(x, dtype=np.float64), np.asarray(self._values))


@dataclass(frozen=True, eq=False)
class Tables:
    """A value set's tables in one dtype (``ValueSet.tables``), as float64 numpy arrays
    whose numbers the dtype holds exactly.

    ``values`` and ``midpoints`` (the ``k - 1`` decision boundaries) are on the value scale;
    ``levels`` and ``thresholds`` are the same on the latent scale, where the set's range is
    ``[-latent_range, latent_range]`` (``None`` when no latent range was asked for).
    """

    value_set: ValueSet
    dtype: str
    latent_range: float | None
    values: Float64Array
    midpoints: Float64Array
    levels: Float64Array | None
    thresholds: Float64Array | None

    @property
    def scale(self) -> float:
        """Slope of value against latent, ``half_range / latent_range``: the straight-through
        derivative inside the range."""
        if self.latent_range is None:
            raise ValueError("these tables were built without a latent range")
        return self.value_set.half_range / self.latent_range


@dataclass(frozen=True)
class _FloatFormat:
    mantissa_bits: int  # stored bits of the significand
    min_exponent: int  # of the smallest normal number, 2**min_exponent
    largest: float


_FLOAT_FORMATS = {
    "float16": _FloatFormat(10, -14, 65504.0),
    "bfloat16": _FloatFormat(7, -126, float.fromhex("0x1.fep127")),
    "float32": _FloatFormat(23, -126, float.fromhex("0x1.fffffep127")),
    "float64": _FloatFormat(52, -1022, sys.float_info.max),
}


def round_to_dtype(x: npt.ArrayLike, dtype: str) -> Float64Array:
    """``x`` rounded once to the nearest numbers of the float ``dtype``, returned as float64.

    Ties go to the even neighbour and numbers beyond the largest finite one to infinity, as
    IEEE 754 rounds. It is computed in float64 from the format's precision and exponent range,
    so every dtype rounds exactly once: a framework's own cast from float64 to bfloat16 (torch's,
    ml_dtypes', JAX's without x64) goes through float32 and can round twice. ``dtype`` is
    ``float16``, ``bfloat16``, ``float32`` or ``float64``, with or without a framework prefix
    (``torch.float16``).

    Examples:
        >>> round_to_dtype([1 + 2**-8 + 2**-30, 1 + 2**-8, 70000.0], "bfloat16").tolist()
        [1.0078125, 1.0, 70144.0]
        >>> round_to_dtype([0.1], "float32").tolist() == [float(np.float32(0.1))]
        True
    """
    spec = _FLOAT_FORMATS.get(dtype.rpartition(".")[2])
    if spec is None:
        raise TypeError(
            f"snapset constrains floating-point weights only (float16, bfloat16, float32, "
            f"float64), got dtype {dtype}"
        )
    array = np.asarray(x, dtype=np.float64)
    _, exponent = np.frexp(array)  # array = m * 2**exponent with 1/2 <= |m| < 1
    ulp = np.ldexp(1.0, np.maximum(exponent - 1, spec.min_exponent) - spec.mantissa_bits)
    rounded = np.rint(array / ulp) * ulp  # exact: ulp is a power of two
    # beyond the largest finite number: infinity; NaN stays NaN
    held: Float64Array = np.where(
        np.abs(rounded) > spec.largest, np.copysign(np.inf, array), rounded
    )
    return held


def _check_apart(vs: ValueSet, dtype: str, rows: Float64Array) -> None:
    """Refuse ``dtype`` when a row ``(value_i, boundary_i, value_i+1)`` does not increase."""
    merged = ~(np.diff(rows, axis=1) > 0).all(axis=1)
    if merged.any():
        i = int(np.flatnonzero(merged)[0])
        raise ValueError(
            f"{vs!r} cannot be told apart in {dtype}: {vs.values[i]} and {vs.values[i + 1]} "
            "round together. Use a wider dtype (float32 or float64) or values further apart."
        )


def Binary() -> ValueSet:
    """The set ``{0, 1}``.

    Examples:
        >>> Binary().values
        (0.0, 1.0)
    """
    return ValueSet([0, 1])


def Sign() -> ValueSet:
    """The set ``{-1, +1}``.

    Examples:
        >>> Sign().values
        (-1.0, 1.0)
    """
    return ValueSet([-1, 1])


def Ternary() -> ValueSet:
    """The set ``{-1, 0, +1}``.

    Examples:
        >>> Ternary().values
        (-1.0, 0.0, 1.0)
    """
    return ValueSet([-1, 0, 1])


def _finite_float(entry: object, entries: list[Any]) -> float:
    """``entry`` as a finite float, or a ValueError that names it."""
    if isinstance(entry, bool) or not isinstance(entry, numbers.Real):
        raise ValueError(
            f"ValueSet entries must be real numbers, got {_clip(entry)} "
            f"({type(entry).__name__}) in {_brief(entries)}"
        )
    try:
        value = float(entry)
    except OverflowError:  # an int such as 10**400
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(
            f"ValueSet entries must be finite, got {_clip(entry)} in {_brief(entries)}"
        )
    return value


def _brief(entries: list[Any], limit: int = 8) -> str:
    """A list for a message, cut short: a hostile list may hold thousands of huge numbers."""
    shown = ", ".join(_clip(entry) for entry in entries[:limit])
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"[{shown}{more}]"


def _clip(entry: object, limit: int = 40) -> str:
    if isinstance(entry, int) and entry.bit_length() > 4 * limit:
        return f"<an integer of {entry.bit_length()} bits>"  # repr may exceed Python's digit limit
    text = repr(entry)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _short(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)
