"""Bop, the flip optimizer, for Keras 3: moves flip variables through any ordered value set."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from ..._spec import BOP_DEFAULTS, check_bop_options
from .._functional import Tensor
from .._methods import WRITTEN_BY_ANOTHER, Method, flip_method, flip_writes, variable_path

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

    The rule of [`snapset.torch.Bop`][]: each entry ``w`` is a value ``v_i`` of its
    sorted set; Bop keeps an exponential moving average ``m`` of the gradient (rate ``gamma``) and
    moves ``w`` one level down where ``m > theta``, one level up where ``m < -theta``, and nowhere
    at either end of the set:

    ```text
    m_t = (1 - gamma) m_{t-1} + gamma g_t
    i_t = clip(i_{t-1} - sign(m_t) [|m_t| > theta_t], 0, k - 1),    w_t = v_{i_t}
    ```

    with ``theta = threshold`` (``threshold_mode="abs"``) or ``threshold`` times the
    bias-corrected running RMS of the variable's gradient (``"rel"``). ``momentum_reset``
    (``"interior"``, ``"always"``, ``"never"``) says which moved entries restart from
    ``m = 0``; for two-value sets ``"interior"`` is the paper's Bop. A step whose gradients hold
    NaN or infinity anywhere changes nothing (``nonfinite_steps`` counts them).

    Bop has no learning rate; its defaults are those of the PyTorch front
    (``snapset._spec.BOP_DEFAULTS``). It trains flip variables only (layers built with
    ``method="flip"``, weights marked by [`snapset.keras.constrain`][]); give
    a whole model to ``Router``. Helwegen et al., NeurIPS 2019, "Latent Weights Do Not Exist:
    Rethinking Binarized Neural Network Optimization".

    Examples:
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
        threshold: float = BOP_DEFAULTS["threshold"],
        gamma: float = BOP_DEFAULTS["gamma"],
        *,
        threshold_mode: str = BOP_DEFAULTS["threshold_mode"],
        momentum_reset: str = BOP_DEFAULTS["momentum_reset"],
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
        methods: list[Method] = []
        for variable in var_list:
            method = flip_method(variable)
            if method is None:
                raise ValueError(
                    f"Bop cannot train variable '{variable.path}': it is not a flip variable, "
                    "so Bop does not know which values it may take. Build its layer with "
                    "method='flip', or give it to another optimizer: "
                    "model.compile(optimizer=snapset.keras.Router(flip=Bop(...), "
                    "default=keras.optimizers.Adam()))"
                )
            method.check(_eager_numpy(variable), variable_path(variable), WRITTEN_BY_ANOTHER)
            methods.append(method)
        super().build(var_list)
        self._methods = methods
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
        with flip_writes():  # the flip variables' FlipGuard lets Bop's own writes through
            super().apply(grads, trainable_variables)
        finite = ops.cast(self._finite, "float32")
        self._finite_steps.assign_add(finite)
        self._nonfinite_steps.assign_add(1.0 - finite)

    def update_step(self, gradient: Tensor, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        method = self._methods[index]
        momentum, grad_sq = self._momentums[index], self._grad_sqs[index]
        k, gamma = len(method.values), self.gamma
        grad = ops.cast(gradient, variable.dtype)
        new_momentum = _lerp(ops.convert_to_tensor(momentum), grad, gamma)
        mean_square = ops.mean(ops.square(ops.cast(grad, "float32")))
        new_grad_sq = _lerp(ops.convert_to_tensor(grad_sq), mean_square, gamma)
        # In the gradient's dtype: keras.ops may turn a Python float into a float32 tensor.
        theta = ops.convert_to_tensor(self.threshold, grad.dtype)
        if self.threshold_mode == "rel":
            step = ops.add(self._finite_steps, 1.0)
            correction = 1.0 - ops.power(1.0 - gamma, step)
            theta = ops.cast(ops.sqrt(new_grad_sq / correction) * self.threshold, grad.dtype)
        # +1 (a level up) where m < -theta, -1 (a level down) where m > theta, 0 elsewhere.
        direction = ops.sign(ops.clip(new_momentum, -theta, theta) - new_momentum)
        value = ops.convert_to_tensor(variable)
        index_now = method.codes(value)
        moved_to = ops.clip(index_now + ops.cast(direction, "int32"), 0, k - 1)
        new_value = method.decode(moved_to)
        moved = ops.not_equal(moved_to, index_now)
        if self.momentum_reset == "always":
            new_momentum = ops.where(moved, ops.zeros_like(new_momentum), new_momentum)
        elif self.momentum_reset == "interior":
            interior = ops.logical_and(ops.greater(moved_to, 0), ops.less(moved_to, k - 1))
            reset = ops.logical_and(moved, interior)
            new_momentum = ops.where(reset, ops.zeros_like(new_momentum), new_momentum)
        # An entry off the set (written by something else) stays as it is, for every eager
        # consumer to refuse, rather than being moved from its nearest value in silence.
        member = ops.equal(method.decode(index_now), value)
        finite = self._finite
        self.assign(variable, ops.where(ops.logical_and(finite, member), new_value, value))
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
