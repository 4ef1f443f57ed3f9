"""Scales: ``w = alpha * v``, with ``v`` an exact member of the set and ``alpha`` a float.

This module knows nothing of torch or keras. It owns every rule of scales that both fronts
obey: the names of the granularities and of the modes, which method can use which mode, the
shapes (how a tensor is grouped so that one scale covers each group, and the shape the scales
are stored in), the statistics (BitNet's absmean, absmax) and the scale a learned one starts
from, and every message about scales. A front only reshapes, reduces and multiplies.

The same rules scale a discrete activation (``ActivationScaling``),
where the groups are a tensor, a token (the last axis) or a channel.

References: Rastegari et al., 2016, "XNOR-Net" (one scale per output channel, ``mean|W|`` for
signs); Li et al., 2016, "Ternary Weight Networks"; Esser et al., 2020, "Learned Step Size
Quantization"; Ma et al., 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58
Bits" (BitNet b1.58: ternary weights times ``mean|W|`` per tensor, int8 activations times
``max|x| / 127`` per token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._sets import ValueSet

__all__ = [
    "ACTIVATION_GRANULARITIES",
    "ACTIVATION_MODES",
    "SCALE_GRANULARITIES",
    "SCALE_MODES",
    "STATISTIC_ESTIMATOR",
    "STATISTIC_FLOOR",
    "ActivationScaling",
    "ScaleLayout",
    "Scaling",
    "bad_scale_message",
    "scale_unit",
]

SCALE_GRANULARITIES = ("tensor", "channel")
"""A weight's scale granularities by name: one scale for the whole tensor, or one per output
channel. A positive int ``g`` is the third kind: one scale per ``g`` consecutive entries along
the input axis (GGUF's TQ1_0 and TQ2_0 use 256)."""

SCALE_MODES = ("learned", "absmean", "absmax")
"""Where a weight's scale comes from; the first is the default. ``learned``: in both fronts
``alpha = start * exp(log_gain)``, ``start`` the ``absmean`` of the weights it was made from
(summed in float64 and rounded once, so that every backend starts alike) and ``log_gain`` a
parameter, 0 at first, that a gradient optimizer trains: in the log domain a step moves the
scale by a factor and never past zero (as TQT trains its thresholds, Jain et al., 2020).
``absmean`` and ``absmax``: a statistic of the float weight, recomputed at every forward (the
method then stores the float weight itself as its latent: only ``ste`` and ``stochastic``
have one)."""

STATISTIC_MODES = ("absmean", "absmax")
"""The modes that recompute the scale from a float weight at every forward."""

STATISTIC_ESTIMATOR = "identity"
"""The estimator of a statistic scale when none is given: BitNet b1.58's plain straight-through
gradient. With a statistic the output does not depend on the float weight's overall size, and
the default ``inward`` lets the entries beyond ``alpha`` (about 45% of them for ``absmean``)
only shrink: the whole weight shrinks until its codes flip at random. Measured with 3 seeds
(``benchmarks/scales.py``): 50.4% against 70.6% for a residual MLP on MNIST-1D, 44.8% against
84.9% for a small transformer."""

STATISTIC_FLOOR = 1e-5
"""The smallest scale a statistic gives (BitNet's clamp): an all-zero group keeps a positive
scale, and its entries the code of 0 (or the set's value nearest 0)."""

ACTIVATION_GRANULARITIES = ("tensor", "token", "channel")
"""An activation's scale granularities: one scale for the whole tensor, one per token (each
position of every axis but the feature axis: BitNet's per-token int8), or one per feature
channel."""

ACTIVATION_MODES = ("absmax", "learned", "static")
"""Where an activation's scale comes from; the first is the default. ``absmax``: recomputed
from each input; ``learned``: a float parameter (LSQ's learned step); ``static``: a fixed
number given as ``scale=``."""


def scale_unit(values: ValueSet) -> float:
    """The magnitude of the set that a scale maps a statistic onto: ``w / alpha`` reaches it.

    For a set with values of both signs, the smaller of its two ends in magnitude, so that
    both ends are reached (127 for the int8 set ``-128..127``, 1 for signs and ternary); for a
    set of one sign, its largest magnitude (1 for ``{0, 1}``).

    Examples:
        >>> import snapset
        >>> scale_unit(snapset.Ternary()), scale_unit(snapset.Binary())
        (1.0, 1.0)
        >>> scale_unit(snapset.ValueSet(range(-128, 128)))
        127.0
    """
    low, high = values.values[0], values.values[-1]
    if low < 0 < high:
        return min(-low, high)
    return max(abs(low), abs(high))


@dataclass(frozen=True)
class ScaleLayout:
    """How a tensor of ``shape`` is grouped so that one scale covers each group.

    A front views the values as ``grouped``, reduces ``reduce_axes`` (keeping them) to get
    one statistic per group in the shape ``grouped_scale``, and stores scales in
    ``scale_shape``. Scaling is ``(v.reshape(grouped) * alpha.reshape(grouped_scale))
    .reshape(shape)``: one product per entry, in the tensor's dtype.

    Examples:
        >>> layout = Scaling(4).layout((2, 8), out_axis=0, in_axis=1)
        >>> layout.grouped, layout.reduce_axes, layout.grouped_scale, layout.scale_shape
        ((2, 2, 4), (2,), (2, 2, 1), (2, 2))
        >>> layout.count
        4
    """

    shape: tuple[int, ...]
    grouped: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    grouped_scale: tuple[int, ...]
    scale_shape: tuple[int, ...]

    @property
    def count(self) -> int:
        """How many scales the tensor has."""
        return math.prod(self.scale_shape)

    def expand(self, members: npt.NDArray[Any], alpha: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``alpha * members`` in numpy, each scale times the entries of its group, in the
        members' dtype: one product an entry, as the fronts compute it.

        Examples:
            >>> layout = Scaling("channel").layout((2, 2), out_axis=0, in_axis=1)
            >>> layout.expand(np.array([[1.0, -1.0], [0.0, 1.0]]), np.array([[2.0], [0.5]]))
            array([[ 2. , -2. ],
                   [ 0. ,  0.5]])
        """
        scales = np.asarray(alpha).astype(members.dtype).reshape(self.grouped_scale)
        product: npt.NDArray[Any] = (members.reshape(self.grouped) * scales).reshape(self.shape)
        return product

    def statistic(self, magnitudes: npt.ArrayLike, mode: str, values: ValueSet) -> Any:
        """The reference statistic in numpy, for tests: ``reduce(|w|) / scale_unit``, floored.

        Examples:
            >>> layout = Scaling("channel").layout((2, 3), out_axis=0, in_axis=1)
            >>> layout.statistic([[1, -2, 3], [0, 0, 0]], "absmean", ValueSet([-1, 0, 1])).tolist()
            [[2.0], [1e-05]]
        """
        grouped = np.abs(np.asarray(magnitudes, dtype=np.float64)).reshape(self.grouped)
        reduce = np.mean if mode == "absmean" else np.max
        stat = reduce(grouped, axis=self.reduce_axes, keepdims=True) / scale_unit(values)
        return np.maximum(stat, STATISTIC_FLOOR).reshape(self.scale_shape)


@dataclass(frozen=True)
class Scaling:
    """A weight's scale: its granularity and where it comes from (see ``SCALE_GRANULARITIES``
    and ``SCALE_MODES``). ``Scaling.of`` checks what a user passed.

    Examples:
        >>> Scaling.of("channel", None, method="flip")
        Scaling(granularity='channel', mode='learned')
        >>> Scaling.of(None, None, method="ste") is None
        True
        >>> Scaling.of("tensor", "absmean", method="flip")
        Traceback (most recent call last):
        ValueError: scale_mode='absmean' recomputes the scale from a float weight at every \
forward, and method 'flip' stores none; use scale_mode='learned' (the default) with 'flip', or \
method 'ste' or 'stochastic'
    """

    granularity: str | int
    mode: str = SCALE_MODES[0]

    @classmethod
    def of(cls, scale: Any, scale_mode: Any, *, method: str) -> Scaling | None:
        """The scaling that ``scale=`` and ``scale_mode=`` ask for with ``method``, or ``None``
        for an exact, unscaled set; a ``ValueError`` names what is wrong and the fix."""
        if scale is None:
            if scale_mode is not None:
                raise ValueError(
                    f"scale_mode={scale_mode!r} needs a scale: pass scale='tensor', "
                    "'channel' or a group size along the input axis (such as 256)"
                )
            return None
        check_granularity(scale, SCALE_GRANULARITIES, "a group size along the input axis")
        mode = SCALE_MODES[0] if scale_mode is None else scale_mode
        if mode not in SCALE_MODES:
            raise ValueError(
                f"Unknown scale_mode {mode!r}; valid: " + ", ".join(map(repr, SCALE_MODES))
            )
        if mode in STATISTIC_MODES and method not in ("ste", "stochastic"):
            raise ValueError(
                f"scale_mode={mode!r} recomputes the scale from a float weight at every "
                f"forward, and method {method!r} stores none; use scale_mode='learned' (the "
                f"default) with {method!r}, or method 'ste' or 'stochastic'"
            )
        return cls(scale, mode)

    @property
    def learned(self) -> bool:
        """Whether the scale is a trained parameter (else a statistic of the float weight)."""
        return self.mode == "learned"

    def estimator(self, given: str | None) -> str | None:
        """The estimator to use: ``given``, else ``STATISTIC_ESTIMATOR`` for a statistic
        scale, else None (the method's default).

        Examples:
            >>> Scaling("tensor", "absmean").estimator(None), Scaling("tensor").estimator(None)
            ('identity', None)
        """
        return given if given is not None or self.learned else STATISTIC_ESTIMATOR

    def layout(self, shape: tuple[int, ...], out_axis: int, in_axis: int | None) -> ScaleLayout:
        """The grouping of a tensor of ``shape``, whose output channels run along
        ``out_axis`` and inputs along ``in_axis`` (``None`` where it has none, as a
        ``Multiplier``'s vector); a ``ValueError`` if the granularity does not fit."""
        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        out = out_axis % ndim if ndim else 0
        if self.granularity == "tensor" or ndim == 0:
            keep: set[int] = set()
            return _layout(shape, shape, tuple(range(ndim)), keep)
        if self.granularity == "channel":
            return _layout(shape, shape, tuple(a for a in range(ndim) if a != out), {out})
        size = int(self.granularity)
        if in_axis is None or ndim < 2:
            raise ValueError(
                f"scale={size} groups the input axis, and a tensor of shape {shape} has none; "
                "use scale='tensor' or 'channel'"
            )
        axis = in_axis % ndim
        if shape[axis] % size:
            divisors = [d for d in range(min(size, shape[axis]), 0, -1) if shape[axis] % d == 0]
            raise ValueError(
                f"scale={size} groups {shape[axis]} inputs (axis {axis} of shape {shape}) in "
                f"groups of {size}, which does not divide them; choose a group size that does, "
                f"such as {divisors[0]}"
            )
        grouped = (*shape[:axis], shape[axis] // size, size, *shape[axis + 1 :])
        # axes of `grouped`: out keeps its index if it comes before the input axis
        kept = {out if out < axis else out + 1, axis}
        reduce = tuple(a for a in range(len(grouped)) if a not in kept)
        return _layout(shape, grouped, reduce, kept, group_axis=axis + 1)


@dataclass(frozen=True)
class ActivationScaling:
    """An activation's scale: its granularity, where it comes from, and (``static``) its value.

    ``Quantize(values, scale=...)`` takes ``None`` (no scale: the set's own values), a name of
    ``ACTIVATION_GRANULARITIES``, or a positive number (a static scale for the whole tensor).

    Examples:
        >>> ActivationScaling.of("token", None)
        ActivationScaling(granularity='token', mode='absmax', value=None)
        >>> ActivationScaling.of(0.5, None)
        ActivationScaling(granularity='tensor', mode='static', value=0.5)
        >>> ActivationScaling.of("token", "learned")
        Traceback (most recent call last):
        ValueError: scale='token' has one scale per input row, which no parameter can hold; \
use scale_mode='absmax' with 'token', or scale='tensor' or 'channel' to learn one
    """

    granularity: str
    mode: str
    value: float | None = None

    @classmethod
    def of(cls, scale: Any, scale_mode: Any) -> ActivationScaling | None:
        """Check ``scale=`` and ``scale_mode=`` of an activation quantizer."""
        if scale is None:
            if scale_mode is not None:
                raise ValueError(
                    f"scale_mode={scale_mode!r} needs a scale: pass scale='tensor', 'token', "
                    "'channel' or a number"
                )
            return None
        if not isinstance(scale, str):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise TypeError(
                    f"Invalid scale {scale!r}: use None, "
                    + ", ".join(map(repr, ACTIVATION_GRANULARITIES))
                    + " or a positive number"
                )
            if scale_mode not in (None, "static"):
                raise ValueError(
                    f"scale={scale} is a static scale; scale_mode={scale_mode!r} does not apply"
                )
            check_positive_scale(float(scale), "scale")
            return cls("tensor", "static", float(scale))
        if scale not in ACTIVATION_GRANULARITIES:
            raise ValueError(
                f"Unknown scale {scale!r}; valid: None, "
                + ", ".join(map(repr, ACTIVATION_GRANULARITIES))
                + " or a positive number (a static scale)"
            )
        mode = ACTIVATION_MODES[0] if scale_mode is None else scale_mode
        if mode not in ACTIVATION_MODES:
            raise ValueError(
                f"Unknown scale_mode {mode!r}; valid: " + ", ".join(map(repr, ACTIVATION_MODES))
            )
        if mode == "static":
            raise ValueError("scale_mode='static' needs the scale itself: pass scale=<number>")
        if mode == "learned" and scale == "token":
            raise ValueError(
                "scale='token' has one scale per input row, which no parameter can hold; use "
                "scale_mode='absmax' with 'token', or scale='tensor' or 'channel' to learn one"
            )
        return cls(scale, mode)

    def layout(self, shape: tuple[int, ...], feature_axis: int) -> ScaleLayout:
        """The grouping of an activation of ``shape`` whose features run along
        ``feature_axis`` (PyTorch: 1 for a convolution's input, -1 for a linear one's)."""
        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        feature = feature_axis % ndim if ndim else 0
        if self.granularity == "tensor" or ndim == 0:
            return _layout(shape, shape, tuple(range(ndim)), set())
        if self.granularity == "token":
            return _layout(shape, shape, (feature,), set(range(ndim)) - {feature})
        return _layout(shape, shape, tuple(a for a in range(ndim) if a != feature), {feature})


def check_granularity(scale: Any, names: tuple[str, ...], group: str) -> None:
    """Refuse a scale granularity that is neither one of ``names`` nor a positive int."""
    if isinstance(scale, str):
        if scale not in names:
            raise ValueError(
                f"Unknown scale {scale!r}; valid: None, "
                + ", ".join(map(repr, names))
                + f" or {group}"
            )
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(
            f"Invalid scale {scale!r}; valid: None, "
            + ", ".join(map(repr, names))
            + f" or {group} (a positive int)"
        )


def check_positive_scale(value: float, where: str) -> None:
    """Refuse a scale that is zero, negative, NaN or infinite."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(bad_scale_message(where, 1, value))


def bad_scale_message(where: str, count: int, example: float) -> str:
    """What both fronts say about scales that are zero, negative, NaN or infinite.

    Examples:
        >>> bad_scale_message("the scales of 'fc.weight'", 2, -0.5)
        "the scales of 'fc.weight' hold 2 entries that are not finite and > 0 (for example \
-0.5); a scale must be a positive float: w = alpha * v with v in the set and alpha > 0."
    """
    return (
        f"{where} hold {count} {'entry that is' if count == 1 else 'entries that are'} not "
        f"finite and > 0 (for example {example!r}); a scale must be a positive float: "
        "w = alpha * v with v in the set and alpha > 0."
    )


def _layout(
    shape: tuple[int, ...],
    grouped: tuple[int, ...],
    reduce: tuple[int, ...],
    kept: set[int],
    group_axis: int | None = None,
) -> ScaleLayout:
    grouped_scale = tuple(n if a in kept else 1 for a, n in enumerate(grouped))
    # a group size inserts one axis (the entries of a group) that the scales do not keep
    scale_shape = tuple(n for a, n in enumerate(grouped_scale) if a != group_axis)
    return ScaleLayout(shape, grouped, reduce, grouped_scale, scale_shape)
