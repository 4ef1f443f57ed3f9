r"""Discrete activations: an activation becomes ``alpha * v``, ``v`` exact members of a set.

The activation quantizer of both fronts (the maths of the PyTorch front's ``Quantize``). With
``r = LATENT_RANGE`` (``snapset._spec``) and the set's ``centre`` and ``half_range``:

```text
u = (x / alpha - centre) * r / half_range      the method's latent coordinates
v = method(u)                                  exact members, with the estimator's gradient
out = v * alpha                                one product an entry, in x's dtype
```

``method`` is ``"ste"`` (the nearest member; a tie goes to the larger one) or ``"stochastic"``
(a random neighbour while training, unbiased; the nearest in inference), and the estimator
shapes the gradient: the default ``"clip"`` passes it where ``x / alpha`` lies inside the set's
range and nowhere else, BinaryNet's hard-tanh straight-through estimator for sign activations.
``alpha`` (``snapset._scales.ActivationScaling``): none (the set's own values), a static number,
``absmax`` recomputed from each input without gradient (``max|x| / scale_unit``, floored at
``STATISTIC_FLOOR``: BitNet b1.58's per-token int8 is ``scale="token"`` on ``range(-128,
128)``), or ``learned`` (LSQ's step size: its gradient ``v - x / alpha`` inside the range and
``v`` outside follows from the forward).

References: Courbariaux et al., 2016, "Binarized Neural Networks" (sign activations, the clipped
straight-through estimator); Rastegari et al., 2016, "XNOR-Net"; Esser et al., 2020, "Learned Step
Size Quantization"; Ma et al., 2024, "The Era of 1-bit LLMs" (BitNet b1.58: absmax int8
activations per token).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._scales import (
    STATISTIC_FLOOR,
    ActivationScaling,
    ScaleLayout,
    bad_scale_message,
    scale_unit,
)
from .._sets import ValueSet
from .._spec import LATENT_RANGE, draws_at_random, method_options
from ._functional import Tensor
from ._methods import METHODS, LogGainGuard, Method, learned_alpha

QUANTIZE_METHODS = ("ste", "stochastic")
"""The methods of an activation quantizer: those whose input is a float latent."""


@keras.saving.register_keras_serializable(package="snapset")
class Quantize(keras.Layer):
    r"""An activation quantizer: its outputs are ``alpha * v`` with ``v`` exact members of
    ``values``.

    See the module's maths above. ``method``: ``"ste"`` or ``"stochastic"`` (draws from the
    layer's seed generator, started from ``seed``, while training); ``estimator``: ``"clip"``
    (the default: BinaryNet's clipped straight-through gradient), ``"inward"`` or
    ``"identity"``. ``scale``: ``None`` (the set's own values), ``"tensor"``, ``"token"`` (one
    scale per position: all axes but ``feature_axis``), ``"channel"`` (one per feature) or a
    positive number (static); ``scale_mode``: ``"absmax"`` (the default) or ``"learned"``
    (tensor or channel).

    A learned scale is ``alpha = scale_start * exp(scale_log_gain)``, as weight scales are.
    ``scale_start`` (not trainable, shape ``()`` for a tensor, the feature axis' size for
    channels) holds 1 until the first training call, which sets it to that batch's ``absmax``
    statistic (LSQ's and brevitas' data-dependent start; ``scale_ready`` records that it did);
    ``scale_log_gain`` (same shape, starts at 0) is what an optimizer trains, with LSQ's
    gradient times ``alpha``: in the log domain a step moves ``alpha`` by a factor and never
    past zero. Separate variables because a compiled JAX step keeps only the updates a call
    makes to non-trainable variables; the constraint ``LogGainGuard`` (which sees only the
    variable it guards) puts every log gain that a step made NaN, inf or too large for ``exp``
    back to 0, the scale back to its start, so that no scale that is not finite and > 0 is
    ever used.

    Float inputs only (an integer tensor raises ``TypeError``); ``**kwargs`` go to
    ``keras.Layer``.

    Examples:
        >>> import numpy as np, snapset
        >>> x = np.array([[-2.0, -0.3, 0.2, 0.7]], "float32")
        >>> keras.ops.convert_to_numpy(Quantize(snapset.Sign())(x)).tolist()
        [[-1.0, -1.0, 1.0, 1.0]]
        >>> int8 = Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
        >>> y = keras.ops.convert_to_numpy(int8(x))  # BitNet: round(x * 127 / max|x|)
        >>> (y / (2.0 / 127)).round().tolist()
        [[-127.0, -19.0, 13.0, 44.0]]
    """

    def __init__(
        self,
        values: ValueSet | Any,
        method: str = "ste",
        *,
        estimator: str = "clip",
        scale: Any = None,
        scale_mode: str | None = None,
        seed: int | None = None,
        feature_axis: int = -1,
        **kwargs: Any,
    ) -> None:
        value_set = ValueSet(values)
        options = quantize_options(method, estimator, seed, "snapset.keras.Quantize")
        scaling = ActivationScaling.of(scale, scale_mode)
        check_feature_axis(feature_axis)
        super().__init__(**kwargs)
        self.values = value_set
        self.method = method
        self.estimator = estimator
        self.scale = scale
        self.scale_mode = scale_mode
        self.scaling = scaling
        self.seed = seed
        self.feature_axis = feature_axis
        # keras.random draws from a generator the layer tracks (JAX needs its state).
        draws = draws_at_random(method, options)
        self.seed_generator = keras.random.SeedGenerator(seed) if draws else None
        self.scale_start: Any = None
        self.scale_log_gain: Any = None
        self.scale_ready: Any = None

    @property
    def learned(self) -> bool:
        """Whether the scale is a trained variable."""
        return self.scaling is not None and self.scaling.mode == "learned"

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        activation_layout(self.scaling, input_shape, self.feature_axis)  # refuse a bad axis now
        if not self.learned:
            return
        shape: tuple[int, ...] = ()
        if self.scaling is not None and self.scaling.granularity == "channel":
            features = input_shape[self.feature_axis]
            if features is None:
                raise ValueError(
                    f"Quantize(scale='channel', scale_mode='learned') learns one scale per "
                    f"feature and needs a known size of the input's axis {self.feature_axis} "
                    "(feature_axis)"
                )
            shape = (features,)
        self.scale_start = self.add_weight(
            name="scale_start", shape=shape, initializer="ones", trainable=False
        )
        self.scale_log_gain = self.add_weight(
            name="scale_log_gain", shape=shape, initializer="zeros", constraint=LogGainGuard()
        )
        self.scale_ready = self.add_weight(
            name="scale_ready", shape=(), initializer="zeros", dtype="bool", trainable=False
        )

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        x = float_input(inputs, "Quantize")
        rounding = rounding_method(self.values, self.method, self.estimator, dtype_of(x))
        layout = activation_layout(self.scaling, x.shape, self.feature_axis)
        alpha = None if layout is None else self._scales(x, layout, training)
        return project(x, rounding, alpha, training, self.seed_generator)

    def _scales(self, x: Tensor, layout: ScaleLayout, training: bool | None) -> Tensor:
        """The scales, broadcastable against ``x``; a learned one starts at the first training
        call's statistic."""
        scaling = self.scaling
        assert scaling is not None  # only called for a scaled quantizer
        if scaling.mode != "learned":
            return scales(x, scaling, layout, self.values)
        start = ops.convert_to_tensor(self.scale_start)
        if training:
            stat = ops.cast(
                ops.reshape(statistic(x, layout, self.values), start.shape), start.dtype
            )
            # A batch holding inf or NaN leaves the start at 1: a scale is finite and > 0.
            ready = ops.convert_to_tensor(self.scale_ready)
            fresh = ops.logical_and(ops.logical_not(ready), ops.isfinite(stat))
            start = ops.where(fresh, stat, start)
            self.scale_start.assign(start)
            self.scale_ready.assign(True)
        alpha = learned_alpha(start, self.scale_log_gain)
        return ops.cast(ops.reshape(alpha, layout.grouped_scale), x.dtype)

    @property
    def alpha(self) -> npt.NDArray[Any] | None:
        """The learned scales (``scale_start * exp(scale_log_gain)``) as numpy, or ``None``
        when not learned.

        Examples:
            >>> import numpy as np, snapset
            >>> layer = Quantize(snapset.Ternary(), scale="tensor", scale_mode="learned")
            >>> _ = layer(np.array([[0.5, -4.0]], "float32"), training=True)
            >>> float(layer.alpha)  # max|x| of the first training batch
            4.0
        """
        if self.scale_log_gain is None:
            return None
        return np.asarray(
            ops.convert_to_numpy(learned_alpha(self.scale_start, self.scale_log_gain))
        )

    def load_own_variables(self, store: Any) -> None:
        """Load the variables (``load_model``, ``load_weights``) after refusing a learned
        scale whose start or ``start * exp(log_gain)`` is zero, negative or non-finite
        (``ValueError``; the layer is unchanged)."""
        if self.scale_log_gain is not None:
            order = self._trainable_variables + self._non_trainable_variables
            keys = set(store.keys())
            held = {id(v): str(i) for i, v in enumerate(order) if str(i) in keys}
            parts = [self.scale_start, self.scale_log_gain]
            if all(id(v) in held for v in parts):
                start, log_gain = (np.asarray(store[held[id(v)]], np.float32) for v in parts)
                if start.shape == log_gain.shape:  # otherwise Keras says which shape is wrong
                    where = f"the learned scales of layer '{self.name}'"
                    check_scales(start, f"{where} (their start)")
                    alpha = ops.convert_to_numpy(learned_alpha(start, log_gain))
                    check_scales(np.asarray(alpha), where)
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            values=list(self.values.values),
            method=self.method,
            estimator=self.estimator,
            scale=self.scale,
            scale_mode=self.scale_mode,
            seed=self.seed,
            feature_axis=self.feature_axis,
        )
        return config


def quantize(
    x: Tensor,
    values: ValueSet | Any,
    method: str = "ste",
    *,
    estimator: str = "clip",
    scale: Any = None,
    scale_mode: str | None = None,
    training: bool | None = None,
    seed: int | keras.random.SeedGenerator | None = None,
    feature_axis: int = -1,
) -> Tensor:
    """The activation quantizer as a function: ``alpha * v`` with ``v`` exact members of
    ``values``, with the gradient of ``Quantize``'s ``estimator``.

    The options are ``Quantize``'s, but a learned scale needs a variable and so the layer
    (``scale_mode="learned"`` raises ``ValueError``). ``training=True`` makes ``"stochastic"``
    draw, from ``seed``: ``None`` (Keras's global generator, outside a jitted function), an int
    (the same draw every call) or a ``keras.random.SeedGenerator``.

    Examples:
        >>> import numpy as np, snapset
        >>> x = np.array([0.1, -0.4, 0.6, 3.0], "float32")
        >>> keras.ops.convert_to_numpy(quantize(x, snapset.Ternary())).tolist()
        [0.0, 0.0, 1.0, 1.0]
        >>> keras.ops.convert_to_numpy(quantize(x, snapset.Ternary(), scale=0.5)).tolist()
        [0.0, -0.5, 0.5, 0.5]
    """
    value_set = ValueSet(values)
    # A generator passes the core's check of the seed as an int would.
    given_seed = 0 if isinstance(seed, keras.random.SeedGenerator) else seed
    quantize_options(method, estimator, given_seed, "snapset.keras.quantize")
    scaling = ActivationScaling.of(scale, scale_mode)
    check_feature_axis(feature_axis)
    if scaling is not None and scaling.mode == "learned":
        raise ValueError(
            "quantize(scale_mode='learned') has no variable to hold the scale; use the layer "
            "snapset.keras.Quantize(values, scale=..., scale_mode='learned'), which learns it"
        )
    x = float_input(x, "quantize")
    rounding = rounding_method(value_set, method, estimator, dtype_of(x))
    layout = activation_layout(scaling, x.shape, feature_axis)
    alpha = None if scaling is None or layout is None else scales(x, scaling, layout, value_set)
    return project(x, rounding, alpha, training, seed)


def check_scales(alpha: npt.NDArray[Any], where: str) -> None:
    """Refuse scales that are zero, negative or non-finite, with the core's words."""
    bad = ~(np.isfinite(alpha) & (alpha > 0))
    if bad.any():
        raise ValueError(
            f"{bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} The file or "
            "arrays were damaged or written by something other than snapset; nothing was "
            "loaded and the layer is unchanged."
        )


# ----- what the layer and the function share --------------------------------------------------


def quantize_options(method: str, estimator: str, seed: int | None, front: str) -> dict[str, Any]:
    """Check the method and its options with the core's words; return them with defaults."""
    given = {"estimator": estimator, "seed": seed}
    return method_options(method, given, front=front, methods=QUANTIZE_METHODS)


def check_feature_axis(feature_axis: Any) -> None:
    """Refuse a feature axis that is not an int."""
    if isinstance(feature_axis, bool) or not isinstance(feature_axis, int):
        raise TypeError(f"Invalid feature_axis: {feature_axis!r} (must be an int)")


@lru_cache(maxsize=64)
def rounding_method(values: ValueSet, method: str, estimator: str, dtype: str) -> Method:
    """The method object that rounds latents of ``dtype`` to ``values`` (its tables in that
    dtype), cached: one per set, method, estimator and dtype."""
    return METHODS[method](values, dtype, "inputs", estimator=estimator, latent_range=LATENT_RANGE)


def float_input(x: Any, where: str) -> Tensor:
    """``x`` as a tensor; a ``TypeError`` for anything but floats."""
    x = ops.convert_to_tensor(x)
    dtype = dtype_of(x)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(
            f"{where} quantizes float activations and got a tensor of {dtype}: cast it to a "
            "float dtype first (keras.ops.cast(x, 'float32'))"
        )
    return x


def dtype_of(x: Tensor) -> str:
    """The standard name of ``x``'s dtype (``"float32"``)."""
    return str(keras.backend.standardize_dtype(x.dtype))


def activation_layout(
    scaling: ActivationScaling | None, shape: Any, feature_axis: int
) -> ScaleLayout | None:
    """The core's layout of an activation of ``shape`` (None for an unscaled quantizer).

    An activation's groups never split an axis, so only which axes a scale keeps matters: an
    axis of unknown size (the batch, while Keras traces) is laid out as size 1.
    """
    if scaling is None:
        return None
    ndim = len(shape)
    if ndim and not -ndim <= feature_axis < ndim:
        raise ValueError(
            f"feature_axis={feature_axis} is not an axis of an input of shape {tuple(shape)}"
        )
    return scaling.layout(tuple(1 if n is None else int(n) for n in shape), feature_axis)


def statistic(x: Tensor, layout: ScaleLayout, values: ValueSet) -> Tensor:
    """``max|x|`` over each group's axes divided by the set's unit, floored at
    ``STATISTIC_FLOOR``, without gradient; the groups' axes kept (size 1)."""
    peak = ops.max(ops.abs(ops.stop_gradient(x)), axis=layout.reduce_axes, keepdims=True)
    floor = ops.convert_to_tensor(STATISTIC_FLOOR, x.dtype)
    return ops.maximum(peak / ops.convert_to_tensor(scale_unit(values), x.dtype), floor)


def scales(x: Tensor, scaling: ActivationScaling, layout: ScaleLayout, values: ValueSet) -> Tensor:
    """The scales of a static or ``absmax`` quantizer, broadcastable against ``x``."""
    if scaling.mode == "static":
        return ops.convert_to_tensor(scaling.value, x.dtype)
    return statistic(x, layout, values)


def project(
    x: Tensor, rounding: Method, alpha: Tensor | None, training: bool | None, seed: Any
) -> Tensor:
    """``alpha * v`` with ``v = rounding(u)`` on the latent ``u`` of ``x / alpha`` (``v``
    when ``alpha`` is None)."""
    on_set = x if alpha is None else x / alpha
    members = rounding.value(rounding.right_inverse(on_set), training, seed)
    return members if alpha is None else members * alpha
