"""Bop, the flip optimizer, for Keras 3: moves flip variables through any ordered value set."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from ..._spec import BOP2_DEFAULTS, BOP_DEFAULTS, check_bop_options
from .._functional import Tensor
from .._methods import WRITTEN_BY_ANOTHER, Method, flip_method, flip_writes, variable_path

# Options of keras.optimizers.Optimizer that would move a flip variable off its set.
_REFUSED = ("weight_decay", "use_ema")


def _lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """``start + weight * (end - start)``, ``torch.lerp``'s formula (torch's CPU kernels fuse
    its multiply-add, which ``keras.ops`` cannot: the averages may differ in the last bit)."""
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


def _bias_correction(rate: float, step: Tensor, dtype: str) -> Tensor:
    """``1 - (1 - rate) ** step`` in ``dtype``, rounded from float64 as the PyTorch front's
    Python floats are (float32 powers of a rounded ``1 - rate`` are dozens of ulps off); as
    ``-expm1(step * log1p(-rate))``, within a few ulps, where JAX holds no float64."""
    wide = "float64"
    if keras.backend.backend() == "jax":
        import jax

        wide = "float64" if jax.config.read("jax_enable_x64") else "float32"
    log_keep = math.log1p(-rate) if rate < 1 else -math.inf  # rate 1 keeps nothing: c = 1
    exponent = ops.cast(step, wide) * ops.convert_to_tensor(log_keep, wide)
    return ops.cast(-ops.expm1(exponent), dtype)


def _entry_direction(
    momentum: Tensor, second_moment: Tensor, correction: Tensor, threshold: float
) -> Tensor:
    """``-sign(m)`` where ``m * m > (v / correction) * threshold**2``, else 0: the test
    ``|m| > threshold * sqrt(v / correction)`` in squares, each side rounded as the PyTorch
    front rounds it (a float32 ``sqrt`` is not correctly rounded on every device)."""
    bar = (second_moment / correction) * ops.convert_to_tensor(threshold**2, momentum.dtype)
    passed = ops.greater(momentum * momentum, bar)
    return ops.where(passed, -ops.sign(momentum), ops.zeros_like(momentum))


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

    with ``theta = threshold`` (``threshold_mode="abs"``), ``threshold`` times the
    bias-corrected running RMS of the variable's gradient (``"rel"``), or ``threshold`` times
    each entry's own bias-corrected running RMS, kept at rate ``sigma``
    (``"second_moment"``, the rule of [`snapset.keras.Bop2ndOrder`][]). ``momentum_reset``
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
        sigma: float = BOP_DEFAULTS["sigma"],
        name: str = "bop",
        **kwargs: Any,
    ) -> None:
        check_bop_options(threshold, gamma, threshold_mode, momentum_reset, sigma)
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
        self.sigma = float(sigma)
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
        self._second_moments = [
            self.add_variable_from_reference(v, "second_moment")
            for v in var_list
            if self.threshold_mode == "second_moment"
        ]
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
        step = ops.add(self._finite_steps, 1.0)
        finite = self._finite
        if self.threshold_mode == "second_moment":
            # Each scalar in the gradient's dtype, rounded once from a Python float, as torch
            # rounds them: keras.ops may turn a Python float into a float32 tensor.
            second_moment = self._second_moments[index]
            old_moment = ops.convert_to_tensor(second_moment)
            new_moment = (
                old_moment * ops.convert_to_tensor(1.0 - self.sigma, grad.dtype)
                + (ops.convert_to_tensor(self.sigma, grad.dtype) * grad) * grad
            )
            self.assign(second_moment, ops.where(finite, new_moment, old_moment))
            correction = _bias_correction(self.sigma, step, grad.dtype)
            direction = _entry_direction(new_momentum, new_moment, correction, self.threshold)
        else:
            theta = ops.convert_to_tensor(self.threshold, grad.dtype)
            if self.threshold_mode == "rel":
                correction = _bias_correction(gamma, step, "float32")
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
            sigma=self.sigma,
        )
        return config


@keras.saving.register_keras_serializable(package="snapset")
class Bop2ndOrder(Bop):
    r"""The second-moment Bop for Keras 3: an entry moves when its average gradient is a large
    enough fraction of its own gradient's RMS, so one setting suits any loss scale.

    The rule of [`snapset.torch.Bop2ndOrder`][] (its docstring has the reasoning and the
    paper), on flip variables over any ordered set:

    ```text
    m_t <- (1 - gamma) m_{t-1} + gamma g_t
    v_t <- (1 - sigma) v_{t-1} + sigma g_t^2
    move one level against sign(m_t) where |m_t| > threshold sqrt(v_t / (1 - (1 - sigma)^t))
    ```

    ``Bop(threshold_mode="second_moment")`` with the defaults of both fronts
    (``snapset._spec.BOP2_DEFAULTS``); momentum resets and skipped non-finite steps are Bop's.
    Multiplying the loss by a power of two leaves a run unchanged, bit for bit.

    Examples:
        >>> import numpy as np, snapset, snapset.keras as sk
        >>> layer = sk.Multiplier(snapset.Ternary(), method="flip", init="nearest",
        ...                       kernel_initializer="ones")
        >>> _ = layer(np.ones((1, 3), "float32"))
        >>> bop = sk.optim.Bop2ndOrder()  # threshold 0.04, gamma = sigma = 0.01
        >>> moves = []
        >>> for t in range(1, 31):  # a steady gradient, of any size: "make every entry smaller"
        ...     before = layer.get_weights()[0]
        ...     bop.apply([np.full(3, 1e-6, "float32")], layer.trainable_variables)
        ...     if (layer.get_weights()[0] != before).any():
        ...         moves.append(t)
        >>> moves  # |m| / sqrt(v) = 1 - 0.99^t passes 0.04 at t = 5; each move resets m
        [5, 10]
        >>> layer.get_weights()[0].tolist()
        [-1.0, -1.0, -1.0]
    """

    def __init__(
        self,
        threshold: float = BOP2_DEFAULTS["threshold"],
        gamma: float = BOP2_DEFAULTS["gamma"],
        sigma: float = BOP2_DEFAULTS["sigma"],
        *,
        momentum_reset: str = BOP2_DEFAULTS["momentum_reset"],
        name: str = "bop2ndorder",
        **kwargs: Any,
    ) -> None:
        if "threshold_mode" in kwargs:
            raise TypeError(
                "Bop2ndOrder's threshold_mode is 'second_moment'; for another one use "
                f"snapset.keras.Bop(threshold_mode={kwargs['threshold_mode']!r})"
            )
        super().__init__(
            threshold,
            gamma,
            threshold_mode="second_moment",
            momentum_reset=momentum_reset,
            sigma=sigma,
            name=name,
            **kwargs,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["threshold_mode"]  # fixed by the class
        return config
