"""Tensor-level maths of the Keras front, written only against ``keras.ops``.

The same definitions as the PyTorch front (``snapset.torch._functional``): the decision
boundaries and tables come from :class:`~snapset.ValueSet` in float64 and are cast once, so both
fronts choose the same value for the same latent, ties included, and pass the same surrogate
gradient. Forward values are looked up in a table (``ops.take``), never computed as
``w + stop_gradient(q - w)``, which rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._sets import ValueSet

ESTIMATORS = ("inward", "clip", "identity")
"""Surrogate derivatives of the rounding outside the set's range (as in ``snapset.torch``)."""

Tensor = Any  # a backend tensor (tf.Tensor, torch.Tensor or jax.Array)


@dataclass(frozen=True)
class Tables:
    """A value set's lookup tables in one dtype, as numpy arrays.

    ``table``: the values; ``midpoints``: the boundaries between them on the value scale;
    ``levels`` and ``thresholds``: values and boundaries on the latent scale, where the set's
    range is ``[-latent_range, latent_range]``.
    """

    values: ValueSet
    dtype: str
    latent_range: float
    table: npt.NDArray[Any] = field(repr=False)
    midpoints: npt.NDArray[Any] = field(repr=False)
    levels: npt.NDArray[Any] = field(repr=False)
    thresholds: npt.NDArray[Any] = field(repr=False)

    @property
    def scale(self) -> float:
        """Slope of value against latent: the straight-through derivative inside the range."""
        return self.values.half_range / self.latent_range


def tables(values: ValueSet, dtype: str, latent_range: float = 0.1) -> Tables:
    """Build the tables of ``values`` in ``dtype``; refuse a dtype that merges two values.

    Example:
        >>> import snapset
        >>> t = tables(snapset.Sign(), "float32")
        >>> t.table.tolist(), t.thresholds.tolist()
        ([-1.0, 1.0], [0.0])
    """
    np_dtype = np.dtype(dtype)
    if np_dtype.kind != "f":
        raise TypeError(f"snapset constrains floating-point weights only, got dtype {dtype}")
    with np.errstate(over="ignore"):
        table = np.asarray(values.values, dtype=np.float64).astype(np_dtype)
        midpoints = np.asarray(values.midpoints, dtype=np.float64).astype(np_dtype)
        levels = (values.to_latent(values.values) * latent_range).astype(np_dtype)
        thresholds = (values.to_latent(values.midpoints) * latent_range).astype(np_dtype)
    if not np.isfinite(table).all():
        raise ValueError(f"{values!r} does not fit in {dtype}: a value overflows")
    for row in (
        np.stack([table[:-1], midpoints, table[1:]], 1),
        np.stack([levels[:-1], thresholds, levels[1:]], 1),
    ):
        merged = ~(np.diff(row, axis=1) > 0).all(axis=1)
        if merged.any():
            i = int(np.flatnonzero(merged)[0])
            raise ValueError(
                f"{values!r} cannot be told apart in {dtype}: {values.values[i]} and "
                f"{values.values[i + 1]} round together. Use a wider dtype (float32 or float64) "
                "or values further apart."
            )
    return Tables(values, np_dtype.name, float(latent_range), table, midpoints, levels, thresholds)


def codes(x: Tensor, boundaries: npt.NDArray[Any]) -> Tensor:
    """Index of each entry's value: how many boundaries lie at or below it (ties go up).

    A sum of comparisons: exact and the same on every backend.
    """
    index = ops.cast(ops.greater_equal(x, boundaries[0]), "int32")
    for boundary in boundaries[1:]:
        index = index + ops.cast(ops.greater_equal(x, boundary), "int32")
    return index


def nearest(latent: Tensor, t: Tables) -> Tensor:
    """Exact nearest values of ``latent`` (on the latent scale); a tie goes to the larger value.

    Example:
        >>> import snapset
        >>> t = tables(snapset.ValueSet([1, -1, 0.5, -0.5]), "float32")
        >>> ops.convert_to_numpy(nearest(ops.convert_to_tensor([-0.1, 0.0, 0.04]), t)).tolist()
        [-1.0, 0.5, 0.5]
    """
    return ops.take(ops.convert_to_tensor(t.table), codes(latent, t.thresholds))


def stochastic_round(latent: Tensor, t: Tables, seed: Any) -> Tensor:
    """Round at random to one of the two neighbouring values, unbiased on the latent scale.

    A latent between levels ``l_j <= u < l_{j+1}`` becomes value ``j + 1`` with probability
    ``(u - l_j) / (l_{j+1} - l_j)`` and value ``j`` otherwise; latents outside the range are
    clipped first. ``seed`` is a ``keras.random.SeedGenerator`` (or an int).
    """
    k = len(t.values)
    clipped = ops.clip(latent, t.levels[0], t.levels[-1])
    low = ops.clip(codes(clipped, t.levels) - 1, 0, k - 2)
    levels = ops.convert_to_tensor(t.levels)
    below, above = ops.take(levels, low), ops.take(levels, low + 1)
    p_up = (clipped - below) / (above - below)
    draw = keras.random.uniform(ops.shape(latent), dtype=t.dtype, seed=seed)
    up = ops.cast(ops.less(draw, p_up), "int32")
    return ops.take(ops.convert_to_tensor(t.table), low + up)


def estimator_grad(
    estimator: str, latent: Tensor, grad: Tensor, scale: float, bound: float
) -> Tensor:
    """Surrogate derivative of the rounding, applied to an incoming gradient.

    Inside ``[-bound, bound]`` the gradient passes times ``scale``; outside, ``"inward"``
    passes only gradients that move the latent back towards the range, ``"clip"`` passes
    nothing and ``"identity"`` passes everything (see :func:`snapset.torch.estimator_grad`).

    Example:
        >>> u = ops.convert_to_tensor([0.05, 0.3, 0.3])
        >>> g = ops.convert_to_tensor([1.0, 1.0, -1.0])
        >>> ops.convert_to_numpy(estimator_grad("inward", u, g, 10.0, 0.1)).tolist()
        [10.0, 10.0, -0.0]
    """
    if estimator == "identity":
        return grad * scale
    if estimator == "clip":
        keep = ops.less_equal(ops.abs(latent), bound)
    else:
        # Descent moves the latent by -grad: outward where (clip(u) - u) * grad > 0.
        keep = ops.less_equal((ops.clip(latent, -bound, bound) - latent) * grad, 0)
    return ops.cast(keep, grad.dtype) * grad * scale


def straight_through(latent: Tensor, hard: Tensor, t: Tables, estimator: str) -> Tensor:
    """Return ``hard`` exactly, with the estimator's gradient flowing to ``latent``.

    Example:
        >>> import snapset
        >>> t = tables(snapset.Binary(), "float32")
        >>> u = ops.convert_to_tensor([-0.05, 0.0, 0.2])
        >>> ops.convert_to_numpy(straight_through(u, nearest(u, t), t, "inward")).tolist()
        [0.0, 1.0, 1.0]
    """

    @ops.custom_gradient  # type: ignore[untyped-decorator]
    def forward(u: Tensor, q: Tensor) -> tuple[Tensor, Callable[..., tuple[Tensor, Tensor]]]:
        def grad(*args: Tensor, upstream: Tensor | None = None) -> tuple[Tensor, Tensor]:
            # TensorFlow and JAX pass the upstream gradient positionally, torch by keyword.
            if upstream is None:
                (upstream,) = args
            return estimator_grad(estimator, u, upstream, t.scale, t.latent_range), ops.zeros_like(
                q
            )

        return ops.copy(q), grad

    # Copies, so that TensorFlow sees tensors rather than the variable they were read from.
    return forward(ops.copy(latent), hard)


def spread(weight: Tensor, values: ValueSet) -> Tensor:
    """Map a freshly initialised weight onto the set's range, using every value equally.

    Entries keep their order: the smallest ``1/k`` of them land in the bin of the smallest
    value, and so on, spread evenly inside each bin (the PyTorch front's map, in the weight's
    dtype). Written in ``keras.ops`` so that it also runs where the weight is symbolic.

    Example:
        >>> import snapset
        >>> w = spread(ops.convert_to_tensor([0.3, -0.2, 0.1, 0.0]), snapset.Sign())
        >>> ops.convert_to_numpy(w).tolist()
        [0.75, -0.75, 0.25, -0.25]
    """
    shape, dtype = ops.shape(weight), weight.dtype
    flat = ops.reshape(weight, (-1,))
    k, n = len(values), flat.shape[0]
    ranks = ops.cast(ops.argsort(ops.argsort(flat)), dtype)
    position = (ranks + 0.5) * (k / n)  # in (0, k): the integer part picks the bin
    bins = ops.minimum(ops.floor(position), k - 1)
    edges = ops.convert_to_tensor(
        np.asarray([values.values[0], *values.midpoints, values.values[-1]]), dtype
    )
    index = ops.cast(bins, "int32")
    low, high = ops.take(edges, index), ops.take(edges, index + 1)
    return ops.reshape(low + (position - bins) * (high - low), shape)


def stored_from_values(values: Tensor, t: Tables, method: str) -> Tensor:
    """What a method stores for wanted values: the nearest members (``flip``) or the latents.

    Example:
        >>> import snapset
        >>> t = tables(snapset.Binary(), "float32")
        >>> w = ops.convert_to_tensor([0.25, 0.5, 1.0])
        >>> ops.convert_to_numpy(stored_from_values(w, t, "flip")).tolist()
        [0.0, 1.0, 1.0]
        >>> [round(u, 6) for u in ops.convert_to_numpy(stored_from_values(w, t, "ste")).tolist()]
        [-0.05, 0.0, 0.1]
    """
    if method == "flip":
        return ops.take(ops.convert_to_tensor(t.table), codes(values, t.midpoints))
    vs = t.values
    return (values - vs.center) * (t.latent_range / vs.half_range)
