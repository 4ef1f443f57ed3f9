"""Bop for Keras 3, and Router: one optimizer for ``model.compile`` that sends flip variables
to Bop and everything else to another optimizer."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from .._spec import check_bop_options
from . import _ops
from ._layers import flip_values
from ._ops import Tables, Tensor

# Options of keras.optimizers.Optimizer that would move a flip variable off its set.
_REFUSED = ("weight_decay", "use_ema")


def _lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """``start + weight * (end - start)``, rounded as ``torch.lerp`` rounds it."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def _eager_numpy(variable: Any) -> np.ndarray[Any, Any]:
    """The variable's values, also while a TensorFlow function is being traced (the TensorFlow
    trainer builds its optimizer there, where nothing can be read but from the outer scope)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            return np.asarray(variable.numpy())
    return np.asarray(variable.numpy())


def _all_finite(grads: list[Tensor | None]) -> Tensor:
    flags = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    return ops.all(ops.stack(flags)) if flags else ops.convert_to_tensor(True)


@keras.saving.register_keras_serializable(package="snapset")
class Bop(keras.optimizers.Optimizer):
    r"""Bop, the flip optimizer, for flip variables over any ordered value set (Keras 3).

    The rule of :class:`snapset.torch.Bop`: each entry ``w`` is a value ``v_i`` of its sorted
    set; Bop keeps an exponential moving average ``m`` of the gradient (rate ``gamma``) and
    moves ``w`` one level down where ``m > theta``, one level up where ``m < -theta``, and
    nowhere at either end of the set:

    .. math::
       m_t = (1 - \gamma) m_{t-1} + \gamma g_t, \qquad
       i_t = \mathrm{clip}(i_{t-1} - \mathrm{sign}(m_t)\,[|m_t| > \theta_t],\ 0,\ k - 1)

    with ``theta = threshold`` (``threshold_mode="abs"``) or ``threshold`` times the
    bias-corrected running RMS of the variable's gradient (``"rel"``). ``momentum_reset``
    (``"interior"``, ``"always"``, ``"never"``) says which moved entries restart from
    ``m = 0``; for two-value sets ``"interior"`` is the paper's Bop. A step whose gradients hold
    NaN or infinity anywhere changes nothing (:attr:`nonfinite_steps` counts them).

    Bop has no learning rate. It trains flip variables only (layers built with
    ``method="flip"``); give a whole model to :class:`Router`. Helwegen et al., NeurIPS 2019,
    "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization".

    Example:
        >>> import numpy as np, snapset.keras as sk
        >>> layer = sk.Multiplier([0, 1], method="flip", init="nearest",
        ...                       kernel_initializer="zeros")
        >>> _ = layer(np.ones((1, 3), "float32"))
        >>> bop = sk.Bop(threshold=1e-3, gamma=0.5)
        >>> bop.apply([np.full(3, -0.01, "float32")], layer.trainable_variables)
        >>> layer.exact_weights()["kernel"].tolist()  # the loss wanted every entry to grow
        [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        threshold: float = 1e-8,
        gamma: float = 1e-4,
        *,
        threshold_mode: str = "abs",
        momentum_reset: str = "interior",
        name: str = "bop",
        **kwargs: Any,
    ) -> None:
        check_bop_options(threshold, gamma, threshold_mode, momentum_reset)
        kwargs.pop("learning_rate", None)  # from a saved config: Bop has none
        for option in _REFUSED:
            if kwargs.get(option):
                raise ValueError(
                    f"Bop does not support {option}: it would move flip variables off their "
                    "value set"
                )
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.threshold = float(threshold)
        self.gamma = float(gamma)
        self.threshold_mode = threshold_mode
        self.momentum_reset = momentum_reset
        self._finite: Tensor = None

    def build(self, var_list: list[Any]) -> None:
        """Create the averages of each flip variable; refuse any other variable."""
        if self.built:
            return
        value_tables: list[Tables] = []
        for variable in var_list:
            values = flip_values(variable)
            if values is None:
                raise ValueError(
                    f"Bop cannot train variable '{variable.path}': it is not a flip variable, "
                    "so Bop does not know which values it may take. Build its layer with "
                    "method='flip', or give it to another optimizer: "
                    "model.compile(optimizer=snapset.keras.Router(flip=Bop(...), "
                    "default=keras.optimizers.Adam()))"
                )
            t = _ops.tables(values, variable.dtype)
            held = _eager_numpy(variable)
            outside = ~np.isin(held, t.table)
            if outside.any():
                raise ValueError(
                    f"Bop cannot train variable '{variable.path}': it holds {int(outside.sum())} "
                    f"values outside {values!r}, for example "
                    f"{float(held[outside][0])}. Was it trained by "
                    "another optimizer? Assign it the nearest values (variable.assign) and "
                    "route it to Bop only."
                )
            value_tables.append(t)
        super().build(var_list)
        self._tables = value_tables
        self._momentums = [self.add_variable_from_reference(v, "momentum") for v in var_list]
        self._grad_sqs = [
            self.add_variable((), initializer="zeros", dtype="float32", name="grad_sq")
            for _ in var_list
        ]
        self._finite_steps = self.add_variable(
            (), initializer="zeros", dtype="float32", name="finite_steps"
        )
        self._nonfinite_steps = self.add_variable(
            (), initializer="zeros", dtype="float32", name="nonfinite_steps"
        )

    @property
    def nonfinite_steps(self) -> int:
        """How many steps changed nothing because a gradient held NaN or infinity."""
        return int(self._nonfinite_steps.numpy()) if self.built else 0

    def apply(self, grads: Any, trainable_variables: Any = None) -> None:
        """Apply one step to the flip variables (skipped whole if a gradient is not finite)."""
        grads = list(grads)
        if not grads:
            return
        # The flag gates every variable's update, so a non-finite step changes nothing.
        self._finite = _all_finite(grads)
        super().apply(grads, trainable_variables)
        finite = ops.cast(self._finite, "float32")
        self._finite_steps.assign_add(finite)
        self._nonfinite_steps.assign_add(1.0 - finite)

    def update_step(self, gradient: Tensor, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        t = self._tables[index]
        momentum, grad_sq = self._momentums[index], self._grad_sqs[index]
        k, gamma = len(t.values), self.gamma
        grad = ops.cast(gradient, variable.dtype)
        new_momentum = _lerp(ops.convert_to_tensor(momentum), grad, gamma)
        mean_square = ops.mean(ops.square(ops.cast(grad, "float32")))
        new_grad_sq = _lerp(ops.convert_to_tensor(grad_sq), mean_square, gamma)
        theta: Any = self.threshold
        if self.threshold_mode == "rel":
            step = ops.add(self._finite_steps, 1.0)
            correction = 1.0 - ops.power(1.0 - gamma, step)
            theta = ops.cast(ops.sqrt(new_grad_sq / correction) * self.threshold, grad.dtype)
        # +1 (a level up) where m < -theta, -1 (a level down) where m > theta, 0 elsewhere.
        direction = ops.sign(ops.clip(new_momentum, -theta, theta) - new_momentum)
        value = ops.convert_to_tensor(variable)
        index_now = _ops.codes(value, t.midpoints)
        moved_to = ops.clip(index_now + ops.cast(direction, "int32"), 0, k - 1)
        new_value = ops.take(ops.convert_to_tensor(t.table), moved_to)
        moved = ops.not_equal(moved_to, index_now)
        if self.momentum_reset == "always":
            new_momentum = ops.where(moved, ops.zeros_like(new_momentum), new_momentum)
        elif self.momentum_reset == "interior":
            interior = ops.logical_and(ops.greater(moved_to, 0), ops.less(moved_to, k - 1))
            reset = ops.logical_and(moved, interior)
            new_momentum = ops.where(reset, ops.zeros_like(new_momentum), new_momentum)
        finite = self._finite
        self.assign(variable, ops.where(finite, new_value, value))
        self.assign(momentum, ops.where(finite, new_momentum, ops.convert_to_tensor(momentum)))
        self.assign(grad_sq, ops.where(finite, new_grad_sq, ops.convert_to_tensor(grad_sq)))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.pop("learning_rate", None)
        config.update(
            threshold=self.threshold,
            gamma=self.gamma,
            threshold_mode=self.threshold_mode,
            momentum_reset=self.momentum_reset,
        )
        return config


@keras.saving.register_keras_serializable(package="snapset")
class Router(keras.optimizers.Optimizer):
    """One optimizer for ``model.compile``: flip variables go to ``flip``, the rest to ``default``.

    Keras takes one optimizer per model; a model with flip layers needs two (Bop for the flip
    variables, a gradient optimizer for latents and float weights), as larq's
    ``CaseOptimizer`` did for Keras 2. A variable is a flip variable when its layer was built
    with ``method="flip"`` (see :func:`flip_values`). ``learning_rate`` is that of ``default``.
    Works with ``model.fit`` on the TensorFlow, JAX and torch backends, and saves with the
    model.

    Example:
        >>> import keras, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], "flip"),
        ...                           keras.layers.Dense(1)])
        >>> router = sk.Router(flip=sk.Bop(threshold=1e-4, gamma=1e-2),
        ...                    default=keras.optimizers.Adam(1e-3))
        >>> model.compile(optimizer=router, loss="mse")
        >>> router.build(model.trainable_variables)
        >>> [v.name for v in router.flip_variables], len(router.default_variables)
        (['kernel'], 2)
    """

    def __init__(
        self, flip: Any, default: Any = "adam", name: str = "router", **kwargs: Any
    ) -> None:
        flip = keras.optimizers.get(flip)
        default = keras.optimizers.get(default)
        kwargs.pop("learning_rate", None)  # from a saved config: it is default's
        if kwargs:
            raise ValueError(
                "Router takes no optimizer options of its own (got "
                + ", ".join(map(repr, kwargs))
                + "); give them to the flip or the default optimizer"
            )
        if flip is default:
            raise ValueError("Router needs two distinct optimizers for flip and default")
        super().__init__(learning_rate=0.0, name=name)
        self.flip = flip
        self.default = default
        self._flip_indices: list[int] = []
        self._default_indices: list[int] = []

    @property
    def flip_variables(self) -> list[Any]:
        """The variables routed to ``flip`` (after :meth:`build`)."""
        return [self._trainable_variables[i] for i in self._flip_indices]

    @property
    def default_variables(self) -> list[Any]:
        """The variables routed to ``default`` (after :meth:`build`)."""
        return [self._trainable_variables[i] for i in self._default_indices]

    def build(self, var_list: list[Any]) -> None:
        """Split ``var_list`` and build both optimizers on their shares."""
        if self.built:
            return
        var_list = list(var_list)
        flip_indices = [i for i, v in enumerate(var_list) if flip_values(v) is not None]
        default_indices = [i for i, v in enumerate(var_list) if flip_values(v) is None]
        self.flip.build([var_list[i] for i in flip_indices])
        self.default.build([var_list[i] for i in default_indices])
        super().build(var_list)
        self._flip_indices, self._default_indices = flip_indices, default_indices

    @property
    def variables(self) -> list[Any]:
        return [*self._variables, *self.flip.variables, *self.default.variables]

    @property
    def learning_rate(self) -> Any:
        return self.default.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self.default.learning_rate = value

    def apply(self, grads: Any, trainable_variables: Any = None) -> None:
        """Apply ``flip`` to the flip variables' gradients and ``default`` to the others."""
        grads = list(grads)
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        for optimizer, indices in (
            (self.flip, self._flip_indices),
            (self.default, self._default_indices),
        ):
            if indices:
                optimizer.apply(
                    [grads[i] for i in indices], [trainable_variables[i] for i in indices]
                )
        self._iterations.assign_add(1)

    def stateless_apply(
        self, optimizer_variables: Any, grads: Any, trainable_variables: Any
    ) -> tuple[list[Any], list[Any]]:
        """Stateless form of :meth:`apply` (the JAX backend trains through it)."""
        optimizer_variables, grads = list(optimizer_variables), list(grads)
        new_trainable = list(trainable_variables)
        own = len(self._variables)
        flip_count = len(self.flip.variables)
        shares = (
            (self.flip, self._flip_indices, optimizer_variables[own : own + flip_count]),
            (self.default, self._default_indices, optimizer_variables[own + flip_count :]),
        )
        new_inner: list[Any] = []
        for optimizer, indices, state in shares:
            if indices:
                updated, state = optimizer.stateless_apply(
                    state, [grads[i] for i in indices], [new_trainable[i] for i in indices]
                )
                for i, value in zip(indices, updated, strict=True):
                    new_trainable[i] = value
            new_inner.extend(state)
        mapping = list(zip(self._variables, optimizer_variables[:own], strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._iterations.assign_add(1)
        own_values = [scope.get_current_value(v) for v in self._variables]
        return new_trainable, own_values + new_inner

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flip": keras.saving.serialize_keras_object(self.flip),
            "default": keras.saving.serialize_keras_object(self.default),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Router:
        config = dict(config)
        for key in ("flip", "default"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)
