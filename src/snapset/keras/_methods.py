"""The methods: how one weight's stored variable becomes exact values of its set.

A method object serves one weight. It owns the weight's value set and tables (in the
variable's dtype), says what the variable stores and how it is named, maps wanted values to
what is stored (``Method.right_inverse``), gives the forward value with its gradient
(``Method.value``), the deterministic exact values (``Method.hard``) and their index
codes (``Method.codes``). The variable carries a reference to its method object: that
record is the one place that says a variable is constrained, for snapset's layers and for
weights marked by [`snapset.keras.constrain`][] alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

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

    def start(self, drawn: Tensor, init: str) -> Tensor:
        """What to store for a freshly drawn tensor: ``init`` (``"spread"`` or ``"nearest"``,
        see ``snapset._spec.INITS``), then ``right_inverse``."""
        return self.right_inverse(F.spread(drawn, self.values) if init == "spread" else drawn)

    def right_inverse(self, values: Tensor) -> Tensor:
        """What to store so that the weight shows ``values`` (their nearest members)."""
        raise NotImplementedError

    def value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        """The exact values the forward pass uses, with the method's gradient to ``stored``."""
        raise NotImplementedError

    def hard(self, stored: Tensor) -> Tensor:
        """The deterministic exact values (inference,
        [`snapset.keras.exact_weights`][])."""
        raise NotImplementedError

    def codes(self, stored: Tensor) -> Tensor:
        """Index of each entry's deterministic value in the sorted set (int32)."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """The values of index codes, in the variable's dtype."""
        return ops.take(self._tensor(self.tables.values), codes)

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

    def right_inverse(self, values: Tensor) -> Tensor:
        """Latents of ``values``: ``(values - centre) * latent_range / half_range``."""
        vs = self.values
        return (values - vs.center) * (self.options["latent_range"] / vs.half_range)

    def value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        latent = ops.convert_to_tensor(stored)
        rounded = self._round(latent, training, seed_generator)
        surrogate = SURROGATES[self.options["estimator"]]
        return F.straight_through(
            latent, rounded, surrogate, self.tables.scale, self.options["latent_range"]
        )

    def _round(self, latent: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        """The exact values of the forward pass, without gradient."""
        raise NotImplementedError

    def hard(self, stored: Tensor) -> Tensor:
        return self.decode(self.codes(stored))

    def codes(self, stored: Tensor) -> Tensor:
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

    Examples:
        >>> import snapset
        >>> ste = STE(snapset.Binary(), "float32", "kernel")
        >>> ste
        STE(ValueSet([0, 1]), 'float32', 'kernel', estimator='inward', latent_range=0.1)
        >>> ste.stored_name
        'kernel_latent'
        >>> u = ste.right_inverse(ops.convert_to_tensor([0.0, 0.4, 0.5, 1.0]))
        >>> ops.convert_to_numpy(ste.hard(u)).tolist(), ops.convert_to_numpy(ste.codes(u)).tolist()
        ([0.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    """

    spec = SPECS["ste"]

    def _round(self, latent: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        return self.hard(latent)


class StochasticRounding(_Latent):
    """Random rounding to a neighbouring value while training, nearest value in inference.

    Same latent as ``STE``. While training, a latent between two neighbouring values
    rounds up with probability proportional to its distance from the lower one, so that
    ``E[q] = w`` inside the range (one draw per forward pass, from the layer's
    ``seed_generator``); the straight-through gradient is then the derivative of the
    expectation. Gupta et al., 2015, "Deep Learning with Limited Numerical Precision".

    Examples:
        >>> import keras, snapset
        >>> rounding = StochasticRounding(snapset.Sign(), "float32", "kernel", seed=3)
        >>> u = rounding.right_inverse(ops.convert_to_tensor([0.0] * 1000))  # halfway
        >>> draws = rounding.value(u, True, keras.random.SeedGenerator(3))
        >>> 400 < int((ops.convert_to_numpy(draws) == 1).sum()) < 600
        True
    """

    spec = SPECS["stochastic"]

    def _round(self, latent: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        if not training:
            return self.hard(latent)
        levels, table = self._tensor(self.tables.levels), self._tensor(self.tables.values)
        return F.stochastic_round(latent, levels, table, seed_generator)


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

    def right_inverse(self, values: Tensor) -> Tensor:
        """Stored logits peaked at each assigned value (see ``snapset._spec.GUMBEL_SHARPNESS``)."""
        table = self._tensor(self.tables.values)
        scale = gumbel_logit_scale(self.values.half_range, self.options["latent_range"])
        return ops.square(ops.expand_dims(values, -1) - table) * self._tensor(scale)

    def value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        if not training:
            return self.hard(stored)
        logits = ops.convert_to_tensor(stored) / self.options["latent_range"]
        table = self._tensor(self.tables.values)
        return F.gumbel_sample(logits, table, self.options["temperature"], seed_generator)

    def hard(self, stored: Tensor) -> Tensor:
        return self.decode(self.codes(stored))

    def codes(self, stored: Tensor) -> Tensor:
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

    def right_inverse(self, values: Tensor) -> Tensor:
        """The nearest member of the set for each entry (ties go up)."""
        return self.decode(F.codes(values, self._tensor(self.tables.midpoints)))

    def value(self, stored: Tensor, training: bool | None, seed_generator: Any) -> Tensor:
        return self.hard(stored)

    def hard(self, stored: Tensor) -> Tensor:
        """The stored values, members of the set; NaN in place of an entry that is not."""
        stored = ops.convert_to_tensor(stored)
        # One comparison per value of the set, no gather: the cheapest exact membership test.
        # The values as scalars of the variable's dtype: a numpy float64 would upcast it.
        values = [self._tensor(value) for value in self.tables.values]
        member = ops.equal(stored, values[0])
        for value in values[1:]:
            member = ops.logical_or(member, ops.equal(stored, value))
        return ops.where(member, stored, self._tensor(float("nan")))

    def codes(self, stored: Tensor) -> Tensor:
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
        {'estimator': 'clip', 'latent_range': 0.1, 'seed': None}
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
    if method.stores == "values":
        variable.constraint = FlipGuard()


def harden_variable(variable: Any) -> None:
    """Assign ``variable`` its exact values and remove its constraint: a plain weight remains.

    Only for a method whose values have the stored shape; a layer replaces a ``gumbel``
    variable (``SetLayer.harden``) and then ``release``s it."""
    method = method_of(variable)
    if method is not None:
        variable.assign(method.hard(variable))
        release(variable)


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
    hold (``snapset.OutsideSetError``): what every eager consumer reads."""
    held = np.asarray(ops.convert_to_numpy(variable))
    method = method_of(variable)
    if method is not None:
        method.check(held, variable_path(variable), WRITTEN_BY_ANOTHER)
    return held


def exact_numpy(variable: Any, method: Method) -> npt.NDArray[Any]:
    """The exact values of a constrained variable as numpy, after ``checked_numpy``."""
    checked_numpy(variable)
    return np.asarray(ops.convert_to_numpy(method.hard(variable)))


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
