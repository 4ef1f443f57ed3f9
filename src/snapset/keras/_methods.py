"""The methods: how one weight's stored variable becomes exact values of its set.

A method object serves one weight. It owns the weight's value set and tables (in the
variable's dtype), says what the variable stores and how it is named, maps wanted values to
what is stored (``Method.right_inverse``), gives the forward value with its gradient
(``Method.value``), the deterministic exact members (``Method.hard``), their index codes
(``Method.codes``) and, for a scaled set ``w = alpha * v``, their scales (``Method.scales``)
and the weight they make (``Method.exact``). The variable carries a reference to its method
object: that record is the one place that says a variable is constrained, for snapset's
layers and for weights marked by [`snapset.keras.constrain`][] alike.

A method class implements the unscaled map from what it reads (the stored variable, or for a
statistic scale the stored float kernel divided by its scale, on the latent's scale) to the
set: ``_value``, ``_hard``, ``_codes`` and ``_right_inverse``; the base class adds the
scale around them, once for all, as the PyTorch front's ``Constraint`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._files import holds_members
from .._scales import STATISTIC_FLOOR, ScaleLayout, Scaling, bad_scale_message, scale_unit
from .._sets import ValueSet
from .._spec import METHODS as SPECS
from .._spec import (
    NOT_BY_FLIP_OPTIMIZER,
    NamedMethod,
    OutsideSetError,
    flip_step_refused,
    gumbel_logit_scale,
    method_options,
    nonfinite_stored_message,
    outside_set_error,
)
from . import _functional as F
from ._estimators import SURROGATES
from ._functional import Tensor

_RECORD = "_snapset_method"
# The attribute of a plain variable that holds members of a set (what harden leaves, or a
# snapset file loads), as PyTorch's harden_ marks a tensor.
_HARDENED = "_snapset_hardened"


class Scale:
    r"""The scale of a scaled set: a weight computes with ``w = alpha * v``, ``v`` exact members.

    ``alpha`` is one float per group of entries that ``scaling`` (a core
    ``snapset._scales.Scaling``) chooses for a Keras kernel of ``shape``: the whole tensor,
    each output channel (the last axis), or each run of ``g`` entries along the input axis
    (the axis before the last; none for a vector). Where it comes from:

    * ``learned``: ``alpha = start * exp(log_gain)``, a fixed ``start`` (the non-trainable
      variable ``<weight>_scale_start``, shape ``layout.scale_shape``: the ``absmean``
      statistic of the drawn kernel) times the exponential of a trained ``log_gain`` (the
      variable ``<weight>_scale_log_gain``, 0 at first), trained by a gradient optimizer (for
      ``flip`` too: [`snapset.keras.Router`][] sends it to its default optimizer, Bop moves
      the codes). In the log domain a step moves ``alpha`` by a factor, whatever its size, and
      never past zero (as [`snapset.torch.constrain`][]'s scales). Its constraint
      ``LogGainGuard`` keeps ``exp(log_gain)`` finite and > 0;
    * ``absmean`` / ``absmax``: ``mean|W|`` or ``max|W|`` of the stored float kernel per
      group, divided by the set's unit (``snapset._scales.scale_unit``) and floored at
      ``STATISTIC_FLOOR``, recomputed at every call with ``ops.stop_gradient`` (BitNet
      b1.58's ``absmean``). The method then reads ``W / alpha`` on its latent scale, so the
      gradient reaches ``W`` straight through.

    The product ``alpha * v`` is one multiplication an entry, in the variable's dtype.

    Examples:
        >>> import snapset
        >>> scale = Scale(Scaling.of("channel", None, method="ste"), snapset.Ternary(), (4, 2))
        >>> scale.layout.scale_shape
        (1, 2)
        >>> w = ops.convert_to_tensor([[1.0, 0.0], [-3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        >>> ops.convert_to_numpy(scale.statistic(w)).tolist()
        [[1.0, 9.999999747378752e-06]]
    """

    def __init__(self, scaling: Scaling, values: ValueSet, shape: tuple[int, ...]) -> None:
        self.scaling = scaling
        self.layout: ScaleLayout = scaling.layout(shape, -1, -2 if len(shape) >= 2 else None)
        self.unit = scale_unit(values)
        #: A learned scale's variables (``keras.Variable``; None for a statistic), set by the
        #: layer: ``alpha = start * exp(log_gain)``.
        self.start: Any = None
        self.log_gain: Any = None

    @property
    def learned(self) -> bool:
        """Whether the scales are trained (else a statistic of the float kernel)."""
        return self.scaling.learned

    def alpha(self) -> Tensor:
        """A learned scale's ``start * exp(log_gain)``, with the gradient to ``log_gain``."""
        return learned_alpha(self.start, self.log_gain)

    def statistic(self, weight: Tensor, mode: str | None = None) -> Tensor:
        """``mode`` (default: this scale's) of ``weight`` per group, without gradient."""
        layout = self.layout
        grouped = ops.reshape(ops.abs(ops.stop_gradient(weight)), layout.grouped)
        reduce = ops.max if (mode or self.scaling.mode) == "absmax" else ops.mean
        stat = reduce(grouped, axis=layout.reduce_axes, keepdims=True) / self.unit
        return ops.reshape(ops.maximum(stat, STATISTIC_FLOOR), layout.scale_shape)

    def start_of(self, drawn: Tensor) -> Tensor:
        """The ``start`` of a learned scale for a freshly drawn kernel: its ``absmean`` per
        group, summed and divided in float64 and rounded once to the kernel's dtype, so that
        the order of the sum does not matter and every backend and the PyTorch front give the
        same bits (JAX, without float64 unless ``jax_enable_x64``, sums in float32)."""
        layout = self.layout
        wide = "float32" if keras.backend.backend() == "jax" else "float64"
        grouped = ops.reshape(ops.cast(ops.abs(ops.stop_gradient(drawn)), wide), layout.grouped)
        count = int(np.prod([layout.grouped[axis] for axis in layout.reduce_axes]))
        stat = ops.sum(grouped, axis=layout.reduce_axes, keepdims=True) / count / self.unit
        start = ops.cast(ops.maximum(stat, STATISTIC_FLOOR), drawn.dtype)
        return ops.reshape(start, layout.scale_shape)

    def scales(self, stored: Tensor) -> Tensor:
        """The scales (shape ``layout.scale_shape``): ``alpha``, or the statistic of
        ``stored``."""
        return self.alpha() if self.learned else self.statistic(stored)

    def expand(self, members: Tensor, alpha: Tensor) -> Tensor:
        """``alpha * members``, each scale times the entries of its group."""
        layout = self.layout
        grouped = ops.reshape(members, layout.grouped) * ops.reshape(alpha, layout.grouped_scale)
        return ops.reshape(grouped, layout.shape)

    def divide(self, weight: Tensor, alpha: Tensor) -> Tensor:
        """``weight / alpha``, each entry by its group's scale."""
        layout = self.layout
        grouped = ops.reshape(weight, layout.grouped) / ops.reshape(alpha, layout.grouped_scale)
        return ops.reshape(grouped, layout.shape)

    def check(self, alpha: npt.NDArray[Any], where: str, fix: str) -> None:
        """Raise ``ValueError`` if ``alpha`` holds an entry that is not finite and > 0."""
        bad = ~(np.isfinite(alpha) & (alpha > 0))
        if bad.any():
            example = float(str(alpha[bad].reshape(-1)[0]))
            raise ValueError(f"{bad_scale_message(where, int(bad.sum()), example)} {fix}")

    def __repr__(self) -> str:
        scaling = self.scaling
        return f"Scale(granularity={scaling.granularity!r}, mode={scaling.mode!r})"


def learned_alpha(start: Any, log_gain: Any) -> Tensor:
    """A learned scale, ``start * exp(log_gain)``: weights' and activations' alike.

    Examples:
        >>> ops.convert_to_numpy(learned_alpha(2.0, 0.0)).tolist()
        2.0
    """
    return ops.convert_to_tensor(start) * ops.exp(ops.convert_to_tensor(log_gain))


class LogGainGuard(keras.constraints.Constraint):
    """The constraint of a learned scale's ``log_gain``: an entry that a step made NaN, infinite
    or so large in magnitude that ``exp`` of it could overflow or vanish (beyond half the log of
    the dtype's largest value: 44.4 for float32) goes back to 0, its scale back to its
    ``start``; ``clamps`` (if given) counts them.

    A backstop, so that no call ever computes with a scale that is not finite and > 0 (a
    Keras step cannot be undone as PyTorch's guard undoes it: the constraint sees the new
    values only). ``clamps`` is a non-trainable int32 variable of the layer
    (``<weight>_scale_clamps``, read as the layer's ``scale_clamps``);
    [`snapset.keras.exact_weights`][] and ``harden`` warn when it grew. The count is kept on
    the TensorFlow and torch backends; on JAX the guard holds but nothing is counted (its
    train step applies constraints in a stateless scope that keeps only the trainable and
    optimizer variables, and has released the layer's other variables meanwhile).

    Examples:
        >>> import keras
        >>> clamps = keras.Variable(0, dtype="int32", trainable=False)
        >>> guard = LogGainGuard(clamps)
        >>> ops.convert_to_numpy(guard(ops.convert_to_tensor([0.5, 90.0, float("nan")]))).tolist()
        [0.5, 0.0, 0.0]
        >>> int(ops.convert_to_numpy(clamps)) == (0 if keras.backend.backend() == "jax" else 2)
        True
    """

    def __init__(self, clamps: Any = None) -> None:
        self.clamps = clamps

    def __call__(self, w: Any) -> Any:
        w = ops.convert_to_tensor(w)
        limit = float(np.log(np.finfo(keras.backend.standardize_dtype(w.dtype)).max)) / 2
        good = ops.logical_and(ops.isfinite(w), ops.less_equal(ops.abs(w), limit))
        if self.clamps is not None and keras.backend.backend() != "jax":
            self.clamps.assign_add(ops.sum(ops.cast(ops.logical_not(good), "int32")))
        return ops.where(good, w, ops.zeros_like(w))


class Method(NamedMethod):
    """Base of the methods: one weight's stored variable in, exact values of its set out.

    ``values`` is the weight's value set, ``dtype`` its variable's dtype, ``weight`` its name
    (``"kernel"``); ``options`` are the method's (see ``snapset._spec.METHODS``), checked
    and completed with their defaults into ``options``. Refuses a dtype that cannot tell
    the values apart.

    Examples:
        >>> import snapset, snapset.keras as sk
        >>> method = sk.METHODS["stochastic"](snapset.Ternary(), "float32", "kernel")
        >>> method.method, method.stores, method.stored_name, method.options["latent_range"]
        ('stochastic', 'latent', 'kernel_latent', 0.1)
    """

    def __init__(self, values: ValueSet, dtype: str, weight: str, **options: Any) -> None:
        self.options = check_options(self.method, options)
        self.values = values
        self.dtype = dtype
        self.weight = weight
        self.tables = values.tables(dtype, self.options.get("latent_range"))
        #: The scale of a scaled set (``w = alpha * v``), or None for the exact set itself.
        self.scale: Scale | None = None

    @property
    def stored_name(self) -> str:
        """The stored variable's name: the weight's, with ``_latent`` for a latent and
        ``_logits`` for logits."""
        return self.weight if self.stores == "values" else f"{self.weight}_{self.stores}"

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The stored variable's shape for a weight of ``shape`` (``gumbel`` adds an axis)."""
        return shape

    def value_shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The weight's shape for a stored variable of ``stored_shape``: what ``harden``
        leaves."""
        return stored_shape

    def scaled(self, scaling: Scaling | None, shape: tuple[int, ...]) -> Method:
        """Scale this method's values as ``scaling`` says (None: leave them unscaled), for a
        kernel of ``shape``; return it. A learned scale's variables are the layer's to make and
        to set as ``scale.start`` and ``scale.log_gain``."""
        self.scale = None if scaling is None else Scale(scaling, self.values, shape)
        return self

    def start(self, drawn: Tensor, init: str) -> Tensor:
        """What to store for a freshly drawn tensor: ``init`` (``"spread"`` or ``"nearest"``,
        see ``snapset._spec.INITS``) applied to it (divided by the ``absmean`` a learned scale
        starts at), then the method's map; a statistic scale stores the float kernel itself."""
        scale = self.scale
        if scale is not None and not scale.learned:
            return drawn
        on_set = drawn if scale is None else scale.divide(drawn, scale.start_of(drawn))
        return self._right_inverse(F.spread(on_set, self.values) if init == "spread" else on_set)

    # ----- the protocol: the scale around each method's own map --------------------------

    def value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        """The values the forward pass uses, ``alpha * v`` (``v`` when unscaled) with ``v``
        exact members, with the method's gradient to ``stored`` (and to a learned ``alpha``)."""
        if self.scale is None:
            return self._value(stored, training, seed_generator)
        alpha = self.scale.scales(stored)
        members = self._value(self._reads(stored, alpha), training, seed_generator)
        return self.scale.expand(members, alpha)

    def hard(self, stored: Tensor) -> Tensor:
        """The deterministic exact members ``v`` of the set (unscaled; inference,
        [`snapset.keras.scaled_parts`][])."""
        return self._hard(self._reads(stored))

    def codes(self, stored: Tensor) -> Tensor:
        """Index of each entry's deterministic member in the sorted set (int32)."""
        return self._codes(self._reads(stored))

    def scales(self, stored: Tensor) -> Tensor | None:
        """The scales ``alpha`` of the deterministic members, without gradient (None when
        unscaled)."""
        return None if self.scale is None else ops.stop_gradient(self.scale.scales(stored))

    def exact(self, stored: Tensor) -> Tensor:
        """The deterministic weight ``alpha * hard`` (``hard`` when unscaled): what inference
        computes with, [`snapset.keras.exact_weights`][] reads and ``harden`` stores, bit for
        bit."""
        members = self.hard(stored)
        alpha = self.scales(stored)
        return members if alpha is None or self.scale is None else self.scale.expand(members, alpha)

    def right_inverse(self, values: Tensor) -> Tensor:
        """What to store so that the weight shows ``values`` (their nearest members, divided
        by a learned scale first); a statistic scale stores the float kernel itself."""
        if self.scale is None:
            return self._right_inverse(values)
        if not self.scale.learned:
            return values
        return self._right_inverse(self.scale.divide(values, self.scale.alpha()))

    def _reads(self, stored: Tensor, alpha: Tensor | None = None) -> Tensor:
        """What the method's own map reads: the stored variable, or, for a statistic scale,
        the float kernel divided by its scale on the method's latent scale."""
        if self.scale is None or self.scale.learned:
            return stored
        alpha = self.scale.statistic(stored) if alpha is None else alpha
        return self._right_inverse(self.scale.divide(ops.convert_to_tensor(stored), alpha))

    # ----- what each method implements ---------------------------------------------------

    def _right_inverse(self, values: Tensor) -> Tensor:
        """What to store so that the unscaled weight shows ``values``."""
        raise NotImplementedError

    def _value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        """The exact members the forward pass uses, with the method's gradient."""
        raise NotImplementedError

    def _hard(self, stored: Tensor) -> Tensor:
        raise NotImplementedError

    def _codes(self, stored: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """The values of index codes, in the variable's dtype."""
        return F.lookup(self._tensor(self.tables.values), codes)

    def outside(self, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Which entries of a stored array (already in the variable's dtype) the method cannot
        hold: for ``flip`` those that are not members of the set, for a latent the non-finite
        ones."""
        raise NotImplementedError

    def check(self, stored: npt.ArrayLike, where: str, fix: str) -> None:
        """Raise ``snapset.OutsideSetError`` if ``stored`` holds what ``outside`` refuses.

        ``where`` names the variable, ``fix`` says what to do instead.

        Examples:
            >>> import snapset
            >>> Flip(snapset.Sign(), "float32", "kernel").check([1.0, 0.3], "'kernel'", "Fix.")
            Traceback (most recent call last):
            snapset.OutsideSetError: flip variable 'kernel' holds 1 value outside \
ValueSet([-1, 1]) (for example 0.3). Fix.
        """
        held = np.asarray(stored)
        bad = self.outside(held)
        if bad.any():
            # The shortest repr in the stored dtype: 0.3, not float32's 0.30000001192092896.
            example, count = float(str(held[bad].reshape(-1)[0])), int(bad.sum())
            if self.stores == "values":
                raise outside_set_error(f"flip variable {where}", self.values, count, example, fix)
            stored = f"{self.stores} variable {where}"
            raise OutsideSetError(
                f"{nonfinite_stored_message(stored, count, self.stores)} "
                f"(For example {example!r}.) {fix}"
            )

    def _tensor(self, table: Any) -> Tensor:
        return ops.convert_to_tensor(table, self.dtype)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.values!r}, {self.dtype!r}, {self.weight!r}{options})"


class _Latent(Method):
    """Stores a float latent ``u`` on the scale where the set's range is
    ``[-latent_range, latent_range]``: ``w = centre + half_range * u / latent_range``."""

    def _right_inverse(self, values: Tensor) -> Tensor:
        """Latents of ``values``: ``(values - centre) * latent_range / half_range``."""
        vs = self.values
        return (values - vs.center) * (self.options["latent_range"] / vs.half_range)

    def _value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        latent = ops.convert_to_tensor(stored)
        rounded = self._round(latent, training, seed_generator)
        surrogate = SURROGATES[self.options["estimator"]]
        return F.straight_through(
            latent, rounded, surrogate, self.tables.scale, self.options["latent_range"]
        )

    def _round(self, latent: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        """The exact values of the forward pass, without gradient: the nearest, or while
        training a random neighbour within the ``dither`` band around each threshold (see
        ``snapset._spec.METHODS``)."""
        dither = self.options["dither"]
        if not training or dither <= 0:
            return self._hard(latent)
        levels, table = self._tensor(self.tables.levels), self._tensor(self.tables.values)
        return F.stochastic_round(latent, levels, table, seed_generator, dither)

    def _hard(self, stored: Tensor) -> Tensor:
        thresholds, table = self._tensor(self.tables.thresholds), self._tensor(self.tables.values)
        return F.nearest(ops.convert_to_tensor(stored), thresholds, table)

    def _codes(self, stored: Tensor) -> Tensor:
        return F.codes(ops.convert_to_tensor(stored), self._tensor(self.tables.thresholds))

    def outside(self, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        return _nonfinite(stored)


def _nonfinite(stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    return ~np.isfinite(stored.astype(np.float64))


class STE(_Latent):
    r"""Nearest value forward, straight-through gradient to a float latent.

    Forward, in training and inference alike, the nearest value of the set to the latent's
    value (a tie goes to the larger value), ``q = nearest(w) in V``. Backward:
    ``dq/du = half_range / latent_range`` inside the range, shaped outside by the estimator
    (``snapset.keras._estimators``). Courbariaux et al., 2016, "Binarized Neural Networks";
    Bengio et al., 2013, "Estimating or Propagating Gradients Through Stochastic Neurons".
    ``dither`` > 0 (default 0): while training, a latent within that share of the gap around a
    threshold takes either neighbouring value at random (see PyTorch's ``STE``).

    Examples:
        >>> import snapset
        >>> ste = STE(snapset.Binary(), "float32", "kernel")
        >>> ste  # doctest: +ELLIPSIS
        STE(ValueSet([0, 1]), 'float32', 'kernel', estimator='inward', latent_range=0.1, ...)
        >>> ste.stored_name
        'kernel_latent'
        >>> u = ste.right_inverse(ops.convert_to_tensor([0.0, 0.4, 0.5, 1.0]))
        >>> ops.convert_to_numpy(ste.hard(u)).tolist(), ops.convert_to_numpy(ste.codes(u)).tolist()
        ([0.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    """

    spec = SPECS["ste"]


class StochasticRounding(_Latent):
    """Random rounding to a neighbouring value while training, nearest value in inference.

    Same latent as ``STE``. While training, a latent between two neighbouring values
    rounds up with probability proportional to its distance from the lower one, so that
    ``E[q] = w`` inside the range (one draw per forward pass, from the layer's
    ``seed_generator``); the straight-through gradient is then the derivative of the
    expectation. Gupta et al., 2015, "Deep Learning with Limited Numerical Precision". It is
    ``STE`` with ``dither=1``.

    Examples:
        >>> import keras, snapset
        >>> rounding = StochasticRounding(snapset.Sign(), "float32", "kernel", seed=3)
        >>> u = rounding.right_inverse(ops.convert_to_tensor([0.0] * 1000))  # halfway
        >>> draws = rounding.value(u, True, keras.random.SeedGenerator(3))
        >>> 400 < int((ops.convert_to_numpy(draws) == 1).sum()) < 600
        True
    """

    spec = SPECS["stochastic"]


class GumbelSoftmax(Method):
    r"""A categorical distribution over the set for every entry, trained by Gumbel-softmax.

    Stores ``u = logits * r`` of shape ``(*shape, len(values))``, with ``r = latent_range``
    (default 0.1, as for ``STE``: the same learning rate suits every method). While training,
    each entry draws ``j = argmax(logits + g)`` with Gumbel noise ``g`` (from the layer's
    ``seed_generator``) and takes the exact value ``v_j``; the gradient is that of
    ``E = sum_j softmax((logits + g) / tau)_j v_j``, with non-finite entries set to 0. In
    inference the entry takes the value of its largest logit (ties go to the larger value). An
    assigned value ``w`` is stored as ``-GUMBEL_SHARPNESS * ((w - v_j) / half_range)^2 * r``
    (``snapset._spec``). Anneal ``temperature`` (tau) with
    [`snapset.keras.set_temperature`][]. The maths of [`snapset.torch.GumbelSoftmax`][]; Jang
    et al., 2017, "Categorical Reparameterization with Gumbel-Softmax"; Maddison et al., 2017,
    "The Concrete Distribution".

    Examples:
        >>> import snapset
        >>> gumbel = GumbelSoftmax(snapset.Ternary(), "float32", "kernel")
        >>> gumbel.stored_name, gumbel.stored_shape((4, 2)), gumbel.value_shape((4, 2, 3))
        ('kernel_logits', (4, 2, 3), (4, 2))
        >>> u = ops.convert_to_tensor([[0.3, 0.1, 0.0], [0.0, 0.2, 0.2]])
        >>> ops.convert_to_numpy(gumbel.hard(u)).tolist()  # the largest logit, ties go up
        [-1.0, 1.0]
    """

    spec = SPECS["gumbel"]

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape, len(self.values))

    def value_shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(stored_shape[:-1])

    def _right_inverse(self, values: Tensor) -> Tensor:
        """Stored logits peaked at each assigned value (see ``snapset._spec.GUMBEL_SHARPNESS``)."""
        table = self._tensor(self.tables.values)
        scale = gumbel_logit_scale(self.values.half_range, self.options["latent_range"])
        return ops.square(ops.expand_dims(values, -1) - table) * self._tensor(scale)

    def _value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        if not training:
            return self._hard(stored)
        logits = ops.convert_to_tensor(stored) / self.options["latent_range"]
        table = self._tensor(self.tables.values)
        return F.gumbel_sample(logits, table, self.options["temperature"], seed_generator)

    def _hard(self, stored: Tensor) -> Tensor:
        return self.decode(self._codes(stored))

    def _codes(self, stored: Tensor) -> Tensor:
        return F.argmax_ties_up(ops.convert_to_tensor(stored))

    def outside(self, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        return _nonfinite(stored)


class Flip(Method):
    """No latent weight: the stored variable *is* the set value, moved only by a flip optimizer.

    Forward is the identity on members of the set, and the gradient reaches the variable
    unchanged; an entry that is not a member (written by something other than a flip
    optimizer) reads as NaN, so that no output is ever computed from it. Nothing here moves a
    value: [`snapset.keras.Bop`][] reads the gradient and moves an entry to a
    neighbouring value of the set; a gradient optimizer would push the values off the set (route
    with [`snapset.keras.Router`][]). Helwegen et al., 2019, "Latent Weights Do
    Not Exist: Rethinking Binarized Neural Network Optimization".

    Examples:
        >>> import snapset
        >>> flip = Flip(snapset.Ternary(), "float32", "kernel")
        >>> w = flip.right_inverse(ops.convert_to_tensor([-0.7, 0.2, 0.5]))
        >>> ops.convert_to_numpy(w).tolist(), ops.convert_to_numpy(flip.codes(w)).tolist()
        ([-1.0, 0.0, 1.0], [0, 1, 2])
    """

    spec = SPECS["flip"]

    def _right_inverse(self, values: Tensor) -> Tensor:
        """The nearest member of the set for each entry (ties go up)."""
        return self.decode(F.codes(values, self._tensor(self.tables.midpoints)))

    def _value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        return self._hard(stored)

    def _hard(self, stored: Tensor) -> Tensor:
        """The stored values, members of the set; NaN in place of an entry that is not."""
        stored = ops.convert_to_tensor(stored)
        # One comparison per value of the set, no gather: the cheapest exact membership test.
        # The values as scalars of the variable's dtype: a numpy float64 would upcast it.
        values = [self._tensor(value) for value in self.tables.values]
        member = ops.equal(stored, values[0])
        for value in values[1:]:
            member = ops.logical_or(member, ops.equal(stored, value))
        return ops.where(member, stored, self._tensor(float("nan")))

    def _codes(self, stored: Tensor) -> Tensor:
        return F.codes(ops.convert_to_tensor(stored), self._tensor(self.tables.midpoints))

    def outside(self, stored: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        return ~np.isin(stored.astype(np.float64), self.tables.values)


METHODS: Mapping[str, type[Method]] = {
    cls.spec.name: cls for cls in (STE, StochasticRounding, GumbelSoftmax, Flip)
}
"""The methods of the Keras front, by name (all of snapset's)."""


def check_options(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check a method of the Keras front and its options; return them with their defaults.

    Examples:
        >>> check_options("stochastic", {"estimator": "clip"})
        {'estimator': 'clip', 'latent_range': 0.1, 'dither': 1.0, 'seed': None}
    """
    return method_options(method, given, front="snapset.keras", methods=tuple(METHODS))


# ----- the record a constrained variable carries ------------------------------------------------


def method_of(variable: Any) -> Method | None:
    """The method object that constrains ``variable``, or None for a plain variable."""
    method = getattr(variable, _RECORD, None)
    return method if isinstance(method, Method) else None


def attach(variable: Any, method: Method) -> None:
    """Record that ``method`` constrains ``variable``; a flip variable also gets a ``FlipGuard``,
    which refuses every optimizer but a flip optimizer."""
    setattr(variable, _RECORD, method)
    mark_hardened(variable, None)  # constrained again: the method says what it holds
    if method.stores == "values":
        variable.constraint = FlipGuard()


def harden_variable(variable: Any) -> None:
    """Assign ``variable`` its exact values (``alpha * v`` for a scaled set) and remove its
    constraint: a plain weight remains, marked with its set and scales (``hardened_parts``).

    Only for a method whose values have the stored shape; a layer replaces a ``gumbel``
    variable (``SetLayer.harden``) and then ``release``s it."""
    method = method_of(variable)
    if method is not None:
        alpha = scales_numpy(variable, method)
        variable.assign(method.exact(variable))
        release(variable)
        mark_hardened(variable, method.values, method.scale, alpha)


def scales_numpy(variable: Any, method: Method) -> npt.NDArray[Any] | None:
    """A constrained variable's scales ``alpha`` as numpy (None when unscaled)."""
    alpha = method.scales(variable)
    return None if alpha is None else np.asarray(ops.convert_to_numpy(alpha))


def mark_hardened(
    variable: Any,
    values: ValueSet | None,
    scale: Scale | None = None,
    alpha: npt.NDArray[Any] | None = None,
) -> None:
    """Mark a plain variable as holding members of ``values`` (times ``alpha``, the scales of
    ``scale``, for a scaled set; ``values=None`` removes the mark), as ``harden_`` and a loaded
    snapset file leave it: ``summary`` shows the set and ``save`` packs the variable while it
    holds them (``hardened_parts``)."""
    setattr(variable, _HARDENED, None if values is None else (values, scale, alpha))


@dataclass(frozen=True)
class Hardened:
    """What a marked plain variable holds: members of ``values`` (in its dtype), times
    ``alpha`` (the scales of ``scale``) for a scaled set."""

    values: ValueSet
    members: npt.NDArray[Any]
    scale: Scale | None = None
    alpha: npt.NDArray[Any] | None = None


def hardened_parts(variable: Any) -> Hardened | None:
    """The set, members and scales of a plain variable that ``harden_`` (or a loaded file)
    marked, if it still holds exactly what the mark says; else None.

    Examples:
        >>> import numpy as np, snapset, snapset.keras as sk
        >>> layer = sk.Dense(2, snapset.Sign(), scale="channel")
        >>> _ = layer(np.ones((1, 3), "float32"))
        >>> layer.harden()
        >>> parts = hardened_parts(layer._set_weights["kernel"])
        >>> parts.values, sorted(np.unique(parts.members).tolist()), parts.alpha.shape
        (ValueSet([-1, 1]), [-1.0, 1.0], (1, 2))
        >>> hardened_parts(layer.bias) is None
        True
    """
    mark = getattr(variable, _HARDENED, None)
    if mark is None:
        return None
    values, scale, alpha = mark
    held = np.asarray(ops.convert_to_numpy(variable))
    dtype = keras.backend.standardize_dtype(variable.dtype)
    if scale is None or alpha is None:
        return Hardened(values, held) if holds_members(values, held, dtype) else None
    layout = scale.layout
    if tuple(held.shape) != layout.shape or tuple(alpha.shape) != layout.scale_shape:
        return None
    # the nearest members of w / alpha, kept if alpha times them gives w back bit for bit
    wide = layout.expand(np.ones(layout.shape), alpha.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        members = values.project(held.astype(np.float64) / wide).astype(held.dtype)
    if not np.array_equal(layout.expand(members, alpha), held):
        return None
    return Hardened(values, members, scale, alpha)


def release(variable: Any) -> None:
    """Remove the record of ``variable``'s method and its ``FlipGuard``."""
    delattr(variable, _RECORD)
    if isinstance(variable.constraint, FlipGuard):
        variable.constraint = None


def variable_path(variable: Any) -> str:
    """How messages name a variable: its path (``"dense/kernel"``)."""
    return f"'{getattr(variable, 'path', variable.name)}'"


def checked_numpy(variable: Any) -> npt.NDArray[Any]:
    """The values of a constrained variable as numpy, after refusing values its method cannot
    hold (``snapset.OutsideSetError``) and learned scales that are not finite and > 0
    (``ValueError``): what every eager consumer reads."""
    held = np.asarray(ops.convert_to_numpy(variable))
    method = method_of(variable)
    if method is not None:
        method.check(held, variable_path(variable), WRITTEN_BY_ANOTHER)
        scale = method.scale
        if scale is not None and scale.learned:
            where = f"the learned scales {variable_path(scale.start)} * exp(log_gain)"
            scale.check(np.asarray(ops.convert_to_numpy(scale.alpha())), where, SCALE_FIX)
    return held


def exact_numpy(variable: Any, method: Method) -> npt.NDArray[Any]:
    """The exact values of a constrained variable (``alpha * v`` for a scaled set) as numpy,
    after ``checked_numpy``."""
    checked_numpy(variable)
    return np.asarray(ops.convert_to_numpy(method.exact(variable)))


def scaled_numpy(variable: Any, method: Method) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The exact members ``v`` and the scales ``alpha`` of a variable of a scaled set, as
    numpy, after ``checked_numpy``."""
    checked_numpy(variable)
    members, scales = method.hard(variable), method.scales(variable)
    return np.asarray(ops.convert_to_numpy(members)), np.asarray(ops.convert_to_numpy(scales))


SCALE_FIX = (
    "Assign or load a positive start and a log_gain whose exp() keeps the product finite (the "
    "log_gain constraint resets what an optimizer step makes otherwise); nothing was changed."
)
"""The Keras ``fix`` of a learned scale found not finite and > 0."""


WRITTEN_BY_ANOTHER = (
    f"{NOT_BY_FLIP_OPTIMIZER}: train flip variables with snapset.keras.Bop (route a model's "
    "variables through snapset.keras.Router(flip=Bop(...), default=...)), and assign them "
    "members of the set only."
)
"""The Keras ``fix`` of a flip variable found off its set."""

# Set while a flip optimizer writes: FlipGuard lets those writes through and no other.
_FLIP_WRITES = threading.local()


@contextmanager
def flip_writes() -> Iterator[None]:
    """Let ``FlipGuard`` accept the updates made inside (Bop wraps its ``apply`` in it)."""
    depth = getattr(_FLIP_WRITES, "depth", 0)
    _FLIP_WRITES.depth = depth + 1
    try:
        yield
    finally:
        _FLIP_WRITES.depth = depth


class FlipGuard(keras.constraints.Constraint):
    """The constraint of a flip variable: it refuses every optimizer but a flip optimizer.

    Every Keras optimizer applies a variable's ``constraint`` after updating it. A flip
    optimizer ([`snapset.keras.Bop`][]) writes only members of the set and passes; any other
    optimizer (``model.compile(optimizer="adam")`` on a flip layer) gets a ``TypeError``
    (the words PyTorch's guard uses). A compiled train step (TensorFlow's and JAX's default) runs
    the guard while it is traced, before any step changes a value; an eager step (the torch
    backend, ``run_eagerly=True``) has written its update by then, and that update is what
    [`snapset.keras.exact_weights`][], ``harden``, saving and the forward pass refuse.

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> layer = sk.Multiplier([-1, 1], "flip")
        >>> _ = layer(np.ones((1, 3), "float32"))
        >>> sgd = keras.optimizers.SGD()
        >>> sgd.apply([keras.ops.ones((3,))], layer.trainable_variables)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: An optimizer other than a flip optimizer cannot step flip \
variable '.../kernel': a gradient step would move it off ValueSet([-1, 1]), ...
    """

    def __call__(self, w: Any) -> Any:
        if getattr(_FLIP_WRITES, "depth", 0):
            return w
        method = method_of(w)
        values = method.values if method is not None else "its value set"
        flips = f"variable {variable_path(w)}"
        raise TypeError(
            f"{flip_step_refused('An optimizer other than a flip optimizer', flips, values)} "
            f"{WRITTEN_BY_ANOTHER}"
        )


def flip_method(variable: Any) -> Method | None:
    """The method object of a flip variable (one that holds set values and that Bop moves)."""
    method = method_of(variable)
    return method if method is not None and method.stores == "values" else None


def flip_values(variable: Any) -> ValueSet | None:
    """The value set of a flip variable (one that holds set values and that Bop moves), or None.

    Examples:
        >>> import numpy as np, snapset.keras as sk
        >>> layer = sk.Multiplier([0, 1], method="flip")
        >>> _ = layer(np.ones((1, 3), "float32"))
        >>> sk.flip_values(layer.weights[0])
        ValueSet([0, 1])
        >>> layer.harden()
        >>> sk.flip_values(layer.weights[0]) is None
        True
    """
    method = flip_method(variable)
    return None if method is None else method.values
