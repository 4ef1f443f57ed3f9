"""Keras layers whose weights are exact members of a value set, on every Keras 3 backend."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._scales import Scaling
from .._sets import ValueSet
from .._spec import check_init, draws_at_random
from ._functional import Tensor
from ._methods import (
    METHODS,
    SCALE_FIX,
    LogGainGuard,
    attach,
    check_options,
    checked_numpy,
    exact_numpy,
    harden_variable,
    mark_hardened,
    method_of,
    release,
    scaled_numpy,
    scales_numpy,
)

ValuesLike = ValueSet | Sequence[float]


class SetLayer(keras.Layer):
    """Base of snapset's Keras layers: some weights are stored, the layer sees exact set values.

    Each constrained weight ``name`` has one stored variable, and a method object
    ([`snapset.keras.METHODS`][]) that says what it stores and how it becomes
    exact values: for ``ste`` and ``stochastic`` a float latent ``u`` named ``<name>_latent``, on
    the scale where the set's range is ``[-latent_range, latent_range]``; for ``gumbel`` logits
    (times ``latent_range``) with one more axis, over the set, named ``<name>_logits``; for
    ``flip`` the set values themselves, named ``<name>``. ``exact_weights`` reads the values the
    layer computes with; ``harden`` bakes them into plain variables and removes the constraints.

    The maths is that of the PyTorch front ([`snapset.torch.constrain`][]):
    nearest value with ties to the larger value, the straight-through gradient shaped by
    ``estimator`` (``"inward"``, ``"clip"`` or ``"identity"``), stochastic rounding between
    neighbours while training, Gumbel-softmax sampling at ``temperature`` for ``gumbel``, and
    ``init="spread"`` (every value used by the same share of entries)
    or ``"nearest"``. ``method=None`` means no constraint, what ``harden`` leaves: the weights are
    plain variables, drawn by their initializer and used as they are.

    ``scale`` makes a scaled set ``w = alpha * v`` (``v`` exact members): ``"tensor"``,
    ``"channel"`` (per output channel, the kernel's last axis) or an int group size along the
    input axis (the axis before the last), with ``scale_mode`` ``"learned"`` (the default:
    ``alpha = start * exp(log_gain)``, the non-trainable ``<name>_scale_start`` at the drawn
    kernel's ``absmean`` times the exponential of the trained ``<name>_scale_log_gain``, 0 at
    first, whose constraint ``LogGainGuard`` counts its resets in ``scale_clamps``),
    ``"absmean"`` or ``"absmax"`` (statistics of the stored float kernel, recomputed at every
    call; ``ste`` and ``stochastic`` only, whose ``estimator`` then defaults to
    ``"identity"``, BitNet's), as [`snapset.torch.constrain`][]'s ``scale=``.
    ``exact_weights`` gives ``alpha * v``, [`snapset.keras.scaled_parts`][] the two apart.

    ``input_quantizer`` is a Keras layer applied to the inputs (cast to the compute dtype)
    before the layer's own arithmetic, as larq's ``input_quantizer`` (for example
    ``Quantize(snapset.Sign())``); it is saved with the layer.

    A layer of your own gets set-valued weights from ``add_set_weight`` in ``build`` and
    reads them with ``set_value`` in ``call``; register it with
    ``keras.saving.register_keras_serializable`` to save it.

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> class Scale(sk.SetLayer):  # y = x * s, one s in {0.5, 1, 2} for the whole input
        ...     def build(self, input_shape):
        ...         self.add_set_weight("scale", (1,), "ones")
        ...     def call(self, inputs, training=None):
        ...         return inputs * self.set_value("scale", training)
        >>> layer = Scale([0.5, 1, 2], init="nearest")
        >>> keras.ops.convert_to_numpy(layer(np.full((1, 2), 3.0, "float32"))).tolist()
        [[3.0, 3.0]]
        >>> layer.exact_weights()
        {'scale': array([1.], dtype=float32)}
    """

    def __init__(
        self,
        values: ValuesLike,
        method: str | None = "ste",
        *,
        estimator: str | None = None,
        latent_range: float | None = None,
        temperature: float | None = None,
        dither: float | None = None,
        init: str = "spread",
        seed: int | None = None,
        scale: str | int | None = None,
        scale_mode: str | None = None,
        input_quantizer: keras.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        value_set = ValueSet(values)
        given = {
            "estimator": estimator,
            "latent_range": latent_range,
            "temperature": temperature,
            "dither": dither,
            "seed": seed,
        }
        if method is None:
            _refuse_options({**given, "scale": scale, "scale_mode": scale_mode})
        #: The scale of the layer's scaled weights (``w = alpha * v``), or None.
        self.scaling = None if method is None else Scaling.of(scale, scale_mode, method=method)
        if self.scaling is not None:  # a statistic scale has its own default estimator
            given["estimator"] = self.scaling.estimator(estimator)
        #: The method's options, defaults filled in (what ``get_config`` saves).
        self.options: dict[str, Any] = {} if method is None else check_options(method, given)
        check_init(init)
        if input_quantizer is not None and not isinstance(input_quantizer, keras.Layer):
            raise TypeError(
                f"input_quantizer must be a keras.Layer (such as snapset.keras.Quantize), not "
                f"{type(input_quantizer).__name__}"
            )
        # Latents and scales are read in their own dtype (a float16 copy could round across a
        # boundary, or give another statistic than harden stores); call() casts the exact
        # values to the compute dtype itself. A mixed call autocasts variables even so, unless
        # they are made with autocast=False (add_set_weight's are).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.values = value_set
        self.method = method
        self.init = init
        # keras.random draws from a generator the layer tracks (JAX needs its state).
        draws = method is not None and draws_at_random(method, self.options)
        self.seed_generator = keras.random.SeedGenerator(self.options["seed"]) if draws else None
        self._set_weights: dict[str, Any] = {}
        # weight name -> (start, log_gain, clamp count), for learned scales
        self._scale_variables: dict[str, tuple[Any, Any, Any]] = {}
        self._clamps_reported: dict[str, int] = {}
        self.input_quantizer = input_quantizer

    # ----- building ---------------------------------------------------------------------------

    def add_set_weight(
        self,
        name: str,
        shape: tuple[int, ...],
        initializer: Any,
        values: ValueSet | None = None,
        *,
        scaled: bool = True,
    ) -> Any:
        """Create the stored variable of weight ``name``; its values come from ``values``.

        ``initializer`` draws the starting point, which ``init`` then maps onto the set. Returns
        the variable (the latent for ``ste`` and ``stochastic``, the logits for ``gumbel``; with
        ``method=None``, a plain variable drawn by ``initializer``). With the layer's ``scale``
        and ``scaled=True`` the weight is a scaled set, laid out as a Keras kernel (inputs on
        the axis before the last, outputs on the last); a learned scale adds the variables
        ``<name>_scale_start``, ``<name>_scale_log_gain`` and ``<name>_scale_clamps``. A
        scale that does not fit ``shape`` is refused (``ValueError``) before any variable is
        made.
        """
        vs = values if values is not None else self.values
        vs.tables(self.compute_dtype)  # the values must survive the cast to the compute dtype
        base = keras.initializers.get(initializer)
        if self.method is None:
            variable = self.add_weight(name=name, shape=shape, initializer=base, autocast=False)
            self._set_weights[name] = variable
            return variable
        method = METHODS[self.method](vs, self.variable_dtype, name, **self.options)
        scale = method.scaled(self.scaling if scaled else None, shape).scale
        # The stored variable and a learned scale start from one draw (the scale at its
        # absmean, the stored values at draw / scale), so the two initializers share it.
        drawn: list[Tensor] = []

        def draw(dtype: Any) -> Tensor:
            # In keras.ops: Keras may run this while build() is traced. The draw has the
            # weight's shape (its fans), not the stored one.
            if not drawn:
                drawn.append(ops.cast(base(shape, dtype=dtype), dtype))
            return drawn[0] if scale is not None and scale.learned else drawn.pop()

        def start(stored_shape: tuple[int, ...], dtype: Any = None) -> Tensor:
            return method.start(draw(dtype), self.init)

        variable = self.add_weight(
            name=method.stored_name,
            shape=method.stored_shape(shape),
            initializer=start,
            autocast=False,
        )
        if scale is not None and scale.learned:

            def absmean(scale_shape: tuple[int, ...], dtype: Any = None) -> Tensor:
                weight = draw(dtype)
                drawn.clear()
                return scale.start_of(weight)

            scale.start = self.add_weight(
                name=f"{name}_scale_start",
                shape=scale.layout.scale_shape,
                initializer=absmean,
                trainable=False,
                autocast=False,
            )
            clamps = self.add_weight(
                name=f"{name}_scale_clamps",
                shape=(),
                initializer="zeros",
                dtype="int32",
                trainable=False,
            )
            scale.log_gain = self.add_weight(
                name=f"{name}_scale_log_gain",
                shape=scale.layout.scale_shape,
                initializer="zeros",
                constraint=LogGainGuard(clamps),
                autocast=False,
            )
            self._scale_variables[name] = (scale.start, scale.log_gain, clamps)
            self._clamps_reported[name] = 0
        attach(variable, method)
        self._set_weights[name] = variable
        return variable

    def _quantized(self, inputs: Tensor) -> Tensor:
        """The inputs cast to the compute dtype, through ``input_quantizer`` if there is one."""
        inputs = ops.cast(inputs, self.compute_dtype)
        return inputs if self.input_quantizer is None else self.input_quantizer(inputs)

    def _build_input_quantizer(self, input_shape: tuple[int | None, ...]) -> None:
        # Built with the layer, so that load_model finds its variables where it saved them.
        if self.input_quantizer is not None and not self.input_quantizer.built:
            self.input_quantizer.build(input_shape)

    # ----- reading ----------------------------------------------------------------------------

    def set_value(self, name: str, training: bool | None = None) -> Tensor:
        """The exact values of weight ``name`` as the forward pass uses them, with gradient."""
        variable = self._set_weights[name]
        method = method_of(variable)
        if method is not None:
            variable = method.value(variable, training, self.seed_generator)
        return ops.cast(variable, self.compute_dtype)

    @property
    def scale_clamps(self) -> dict[str, int]:
        """How many entries of each learned scale's ``log_gain`` its constraint reset to 0
        after an optimizer step made them NaN, inf or too large for ``exp``, by weight name
        (see ``LogGainGuard``).

        Examples:
            >>> import numpy as np, snapset, snapset.keras as sk
            >>> layer = sk.Dense(2, snapset.Sign(), scale="channel")
            >>> _ = layer(np.ones((1, 3), "float32"))
            >>> layer.scale_clamps
            {'kernel': 0}
        """
        return {
            name: int(ops.convert_to_numpy(clamps))
            for name, (_, _, clamps) in self._scale_variables.items()
        }

    def warn_scale_clamps(self) -> None:
        """Warn (``RuntimeWarning``) about clamps of learned scales not reported yet."""
        for name, count in self.scale_clamps.items():
            new = count - self._clamps_reported[name]
            if new > 0:
                self._clamps_reported[name] = count
                warnings.warn(
                    f"Layer '{self.name}': optimizer steps made {new} entries of the log gains "
                    f"of the learned scales of '{name}' NaN, inf or too large for exp(); their "
                    "constraint reset them to 0, each scale to its start (w = alpha * v needs "
                    "a finite alpha > 0). Lower the learning rate of the scales if this "
                    "repeats.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def exact_weights(self) -> dict[str, npt.NDArray[Any]]:
        """The deterministic weights of each constrained weight, as numpy arrays.

        These are what the layer computes with in inference (and, except for ``stochastic``
        while training, in training): members of the value set, never the latents; for a
        scaled set ``alpha * v`` (the members and scales apart: ``scaled_parts``). Warns about
        learned scales clamped since the last report (``scale_clamps``).

        Examples:
            >>> import numpy as np, snapset.keras as sk
            >>> layer = sk.Dense(3, values=[-1, 1])
            >>> _ = layer(np.ones((1, 4), "float32"))
            >>> sorted(np.unique(layer.exact_weights()["kernel"]).tolist())
            [-1.0, 1.0]
        """
        self.warn_scale_clamps()
        return {
            name: exact_numpy(variable, method)
            for name, variable in self._set_weights.items()
            if (method := method_of(variable)) is not None
        }

    def scaled_parts(self) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
        """``(members, scales)`` of each scaled weight, as numpy arrays: the exact members
        ``v`` of the set (the weight's shape) and the scales ``alpha`` (shape
        ``Scaling.layout(...).scale_shape``), whose product is the weight.

        Examples:
            >>> import numpy as np, snapset, snapset.keras as sk
            >>> layer = sk.Dense(2, snapset.Ternary(), scale="channel")
            >>> _ = layer(np.ones((1, 4), "float32"))
            >>> members, scales = layer.scaled_parts()["kernel"]
            >>> set(np.unique(members)) <= {-1.0, 0.0, 1.0}, scales.shape
            (True, (1, 2))
        """
        return {
            name: scaled_numpy(variable, method)
            for name, variable in self._set_weights.items()
            if (method := method_of(variable)) is not None and method.scale is not None
        }

    def _hard(self, name: str) -> Tensor:
        variable = self._set_weights[name]
        method = method_of(variable)
        return ops.convert_to_tensor(variable) if method is None else method.exact(variable)

    def set_value_set(self, name: str) -> ValueSet:
        """The value set of constrained weight ``name``."""
        method = method_of(self._set_weights[name])
        if method is None:
            raise ValueError(f"Weight '{name}' of layer '{self.name}' has no constraint")
        return method.values

    # ----- hardening ----------------------------------------------------------------------------

    def harden(self) -> None:
        """Store the exact values in place of the latents and remove the constraints.

        Each constrained variable is assigned its exact values (``alpha * v`` for a scaled set,
        the product the forward pass computes) and becomes a plain weight, the variables of
        learned scales go, and the layer becomes ``method=None`` with no scale (as
        [`snapset.torch.harden_`][] leaves plain parameters). The outputs in inference stay
        the same, bit for bit; the stored variables (and what ``get_weights``, ``save`` and
        ``save_weights`` write) hold only set members, or their products with the scales;
        ``exact_weights``, [`snapset.keras.Router`][] and [`snapset.keras.FlipRatio`][] no
        longer see them. Warns about learned scales clamped since the last report. Recompile a
        compiled model before training it further ([`snapset.keras.harden_`][]
        drops its compiled functions).

        Examples:
            >>> import numpy as np, snapset.keras as sk
            >>> layer = sk.Multiplier([1, -1, 0.5, -0.5])
            >>> _ = layer(np.ones((1, 8), "float32"))
            >>> layer.harden()
            >>> layer.method, sorted(set(layer.get_weights()[0].tolist())) == [-1, -0.5, 0.5, 1]
            (None, True)
        """
        for variable in self._set_weights.values():
            checked_numpy(variable)  # all of them, before any changes
        self.warn_scale_clamps()
        for name, variable in self._set_weights.items():
            method = method_of(variable)
            if method is not None and method.value_shape(variable.shape) != variable.shape:
                alpha = scales_numpy(variable, method)
                self._set_weights[name] = self._replace(variable, method.exact(variable))
                release(variable)
                mark_hardened(self._set_weights[name], method.values, method.scale, alpha)
            else:
                harden_variable(variable)
        # the scales are in the weights now: a method=None layer has no such variables
        for variables in self._scale_variables.values():
            for variable in variables:
                self._untrack_variable(variable)
        self._scale_variables, self._clamps_reported = {}, {}
        self.method = None
        self.options = {}
        self.scaling = None

    def _replace(self, old: Any, values: Tensor) -> Any:
        """A plain variable holding ``values`` in place of ``old`` (whose shape differs), at
        ``old``'s position among the layer's variables: the order a ``method=None`` layer of the
        same config builds, which ``save`` and ``get_weights`` follow."""
        store = self._trainable_variables if old.trainable else self._non_trainable_variables
        position = next(i for i, v in enumerate(store) if v is old)
        self._untrack_variable(old)
        locked = self._tracker.locked  # a built layer locks its tracker; add_weight needs it open
        self._tracker.unlock()
        try:
            new = self.add_weight(
                name=method_of(old).weight,  # type: ignore[union-attr]
                shape=tuple(values.shape),
                initializer="zeros",
                dtype=old.dtype,
                trainable=old.trainable,
                autocast=False,
            )
        finally:
            if locked:
                self._tracker.lock()
        store.insert(position, store.pop())  # add_weight appended it
        new.assign(values)
        return new

    # ----- saving and loading -------------------------------------------------------------------

    def _meaning(self) -> dict[str, Any]:
        """What the stored variables mean, weight by weight: method, set, latent scale, dtype,
        and for a scaled set its scale and scale mode (``None`` for a plain weight); saved
        beside them and compared when they load."""
        meaning: dict[str, Any] = {}
        for name, variable in self._set_weights.items():
            method = method_of(variable)
            if method is None:
                meaning[name] = None
                continue
            meaning[name] = [
                method.method,
                list(method.values.values),
                method.options.get("latent_range"),
                method.dtype,
            ]
            if method.scale is not None:  # unscaled records stay as files before scales had them
                meaning[name] += [method.scale.scaling.granularity, method.scale.scaling.mode]
        read_back: dict[str, Any] = json.loads(json.dumps(meaning))  # lists, not tuples
        return read_back

    def save_own_variables(self, store: Any) -> None:
        """Save the variables (``model.save``, ``save_weights``) and what they mean; refuse a
        flip variable outside its set or a non-finite latent (``snapset.OutsideSetError``)."""
        for variable in self._set_weights.values():
            checked_numpy(variable)
        super().save_own_variables(store)
        store[_MEANING] = np.frombuffer(json.dumps(self._meaning()).encode(), np.uint8)

    def load_own_variables(self, store: Any) -> None:
        """Load the variables (``load_model``, ``load_weights``) after checking all of them.

        Refused, with the layer unchanged: a file whose record of what the weights mean (method,
        set, latent scale, dtype) differs from this layer's config, a variable of the wrong
        shape, a flip variable holding anything but members of its set (in the variable's
        dtype), a latent holding NaN or infinity (``snapset.OutsideSetError``), a learned
        scale whose ``start`` or ``start * exp(log_gain)`` is not finite and > 0
        (``ValueError``). Files saved before snapset recorded
        the meaning are checked without it.
        """
        variables = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        if _MEANING in keys:
            self._check_meaning(np.asarray(store[_MEANING]))
        arrays = _Without(store, _MEANING)
        names = [f"{i}" for i in range(len(variables))]
        if set(arrays) == set(names):  # otherwise Keras says what is missing
            self._check_incoming(variables, [np.asarray(arrays[name]) for name in names])
        super().load_own_variables(arrays)

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        """Set the variables from numpy arrays, as ``keras.Layer.set_weights``, after the checks
        of ``load_own_variables``: the layer changes whole or not at all."""
        if len(weights) == len(self.weights):  # otherwise Keras says what is wrong
            self._check_incoming(self.weights, [np.asarray(w) for w in weights])
        super().set_weights(weights)

    def _check_meaning(self, saved_bytes: npt.NDArray[Any]) -> None:
        try:
            saved = json.loads(saved_bytes.astype(np.uint8).tobytes().decode())
        except (ValueError, TypeError, RecursionError) as error:  # a damaged or hostile record
            raise ValueError(
                f"Layer '{self.name}': the file's record of what its weights mean is damaged "
                f"({error}); the layer is unchanged"
            ) from None
        current = self._meaning()
        if saved != current:
            raise ValueError(
                f"Layer '{self.name}': its weights were saved as {saved} (weight: [method, "
                f"values, latent_range, dtype(, scale, scale_mode)]), but its config now makes "
                f"them {current}. Loading would reinterpret the stored numbers, so nothing was "
                "loaded; the config was edited after saving: restore its values, method, "
                "latent_range, dtype, scale and scale_mode, or load into the layer it was saved "
                "from and convert with harden()."
            )

    def _check_incoming(self, variables: Sequence[Any], arrays: list[npt.NDArray[Any]]) -> None:
        """Refuse arrays that do not fit the variables they are meant for."""
        incoming = {id(variable): array for variable, array in zip(variables, arrays, strict=True)}
        for variable, array in zip(variables, arrays, strict=True):
            where = f"'{self.name}/{variable.name}'"
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Variable {where} has shape {tuple(variable.shape)}; the incoming array has "
                    f"shape {tuple(array.shape)}. Nothing was loaded."
                )
            method = method_of(variable)
            if method is not None:
                held = ops.convert_to_numpy(ops.convert_to_tensor(array, variable.dtype))
                method.check(held, f"{where} as loaded", _LOADED_FIX)
        for name, (start, log_gain, _) in self._scale_variables.items():
            scale = method_of(self._set_weights[name]).scale  # type: ignore[union-attr]
            assert scale is not None  # only learned scales are listed
            start_held = ops.convert_to_tensor(incoming[id(start)], start.dtype)
            where = f"the scales '{self.name}/{start.name}'"
            scale.check(ops.convert_to_numpy(start_held), f"{where} as loaded", SCALE_FIX)
            gain = ops.exp(ops.convert_to_tensor(incoming[id(log_gain)], log_gain.dtype))
            alpha = np.asarray(ops.convert_to_numpy(start_held * gain))
            scale.check(alpha, f"{where} * exp(log_gain) as loaded", SCALE_FIX)

    # ----- config ---------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(values=list(self.values.values), method=self.method, init=self.init)
        config.update(self.options)
        scaling = self.scaling
        config.update(
            scale=None if scaling is None else scaling.granularity,
            scale_mode=None if scaling is None else scaling.mode,
            input_quantizer=None
            if self.input_quantizer is None
            else keras.saving.serialize_keras_object(self.input_quantizer),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        config = dict(config)
        if config.get("input_quantizer") is not None:
            config["input_quantizer"] = keras.saving.deserialize_keras_object(
                config["input_quantizer"]
            )
        return super().from_config(config)


_MEANING = "snapset_meaning"  # the store key of what a layer's stored variables mean
_LOADED_FIX = (
    "The file or arrays were damaged or written by something other than snapset; nothing was "
    "loaded and the layer is unchanged."
)


class _Without(Mapping[str, Any]):
    """A weights store seen without one key (Keras's loader counts every key it sees)."""

    def __init__(self, store: Any, hidden: str) -> None:
        self._store, self._hidden = store, hidden

    def __getitem__(self, key: str) -> Any:
        if key == self._hidden:
            raise KeyError(key)
        return self._store[key]

    def __iter__(self) -> Iterator[str]:
        # Keras's stores have keys() but no __iter__.
        return (key for key in self._store.keys() if key != self._hidden)  # noqa: SIM118

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _refuse_options(given: dict[str, Any]) -> None:
    for name, value in given.items():
        if value is not None:
            raise ValueError(
                f"Option {name!r} needs a method; method=None means no constraint, and no options"
            )


@keras.saving.register_keras_serializable(package="snapset")
class Multiplier(SetLayer):
    """``y = x * w``: a learned per-feature multiplier whose entries lie in a value set.

    The forum's ``LearnableMultiplier``, done right: ``w`` has one entry per feature (the
    input's last axis), always an exact member of ``values``, trained through ``method``
    (``"ste"``, ``"stochastic"``, ``"gumbel"`` or ``"flip"``; see ``SetLayer`` for the options).

    Examples:
        >>> import numpy as np, snapset.keras as sk
        >>> layer = sk.Multiplier(values=[1, -1, 0.5, -0.5])
        >>> y = layer(np.ones((2, 4), "float32"))
        >>> sorted(layer.exact_weights()["kernel"].tolist())
        [-1.0, -0.5, 0.5, 1.0]
    """

    def __init__(
        self,
        values: ValuesLike,
        method: str | None = "ste",
        *,
        kernel_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(values, method, **kwargs)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            if kernel_initializer is not None
            else keras.initializers.RandomUniform(-1.0, 1.0)
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        features = input_shape[-1]
        if features is None:
            raise ValueError("Multiplier needs a known size of the input's last axis")
        self._build_input_quantizer(input_shape)
        self.add_set_weight("kernel", (features,), self.kernel_initializer)

    @property
    def kernel(self) -> Tensor:
        """The exact multiplier (deterministic values, no gradient)."""
        return self._hard("kernel")

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        return ops.multiply(self._quantized(inputs), self.set_value("kernel", training))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["kernel_initializer"] = keras.initializers.serialize(self.kernel_initializer)
        return config


class _KernelBiasLayer(SetLayer):
    """Shared parts of Dense and Conv: a set-valued kernel and a bias, float unless asked."""

    def __init__(
        self,
        values: ValuesLike,
        method: str | None = "ste",
        *,
        activation: Any = None,
        use_bias: bool = True,
        bias_values: ValuesLike | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(values, method, **kwargs)
        if bias_values is not None and not use_bias:
            raise ValueError("bias_values needs use_bias=True")
        self.bias_values = ValueSet(bias_values) if bias_values is not None else None
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.bias: Any = None

    def _build_kernel_bias(self, kernel_shape: tuple[int, ...], units: int) -> None:
        self.add_set_weight("kernel", kernel_shape, self.kernel_initializer)
        if self.use_bias and self.bias_values is not None:
            # A zero init would spread to nothing useful: draw it like the kernel instead.
            self.add_set_weight(
                "bias", (units,), self.kernel_initializer, self.bias_values, scaled=False
            )
        elif self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(units,), initializer=self.bias_initializer
            )

    @property
    def kernel(self) -> Tensor:
        """The exact kernel (deterministic values, no gradient)."""
        return self._hard("kernel")

    def _bias(self, training: bool | None) -> Tensor | None:
        if self.bias_values is not None:
            return self.set_value("bias", training)
        return None if self.bias is None else ops.cast(self.bias, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias,
            bias_values=list(self.bias_values.values) if self.bias_values is not None else None,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="snapset")
class Dense(_KernelBiasLayer):
    """``y = activation(x @ W + b)`` with ``W`` (and, with ``bias_values``, ``b``) in a set.

    The bias stays a float weight unless ``bias_values`` gives it a set of its own; it is then
    trained by the same method, unscaled (``scale`` scales the kernel). Options as
    ``SetLayer``.

    Examples:
        >>> import numpy as np, snapset, snapset.keras as sk
        >>> layer = sk.Dense(4, values=snapset.Ternary())
        >>> tuple(layer(np.ones((2, 8), "float32")).shape)
        (2, 4)
        >>> sorted(np.unique(layer.exact_weights()["kernel"]).tolist())
        [-1.0, 0.0, 1.0]
    """

    def __init__(
        self, units: int, values: ValuesLike, method: str | None = "ste", **kwargs: Any
    ) -> None:
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"Invalid units: {units!r} (must be an int >= 1)")
        super().__init__(values, method, **kwargs)
        self.units = units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        features = input_shape[-1]
        if features is None:
            raise ValueError("Dense needs a known size of the input's last axis")
        self._build_input_quantizer(input_shape)
        self._build_kernel_bias((features, self.units), self.units)

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        outputs = ops.matmul(self._quantized(inputs), self.set_value("kernel", training))
        bias = self._bias(training)
        if bias is not None:
            outputs = ops.add(outputs, bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["units"] = self.units
        return config


class _Conv(_KernelBiasLayer):
    """An N-d convolution with a set-valued kernel, through ``keras.ops.conv``."""

    rank: int

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        values: ValuesLike,
        method: str | None = "ste",
        *,
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        **kwargs: Any,
    ) -> None:
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"Invalid filters: {filters!r} (must be an int >= 1)")
        if padding not in ("valid", "same"):
            raise ValueError(f"Invalid padding: {padding!r} (must be 'valid' or 'same')")
        super().__init__(values, method, **kwargs)
        self.filters = filters
        self.kernel_size = self._tuple(kernel_size, "kernel_size")
        self.strides = self._tuple(strides, "strides")
        self.dilation_rate = self._tuple(dilation_rate, "dilation_rate")
        self.padding = padding
        data_format = data_format if data_format is not None else keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"Invalid data_format: {data_format!r} (must be 'channels_last' or "
                "'channels_first')"
            )
        self.data_format = data_format

    def _tuple(self, value: int | Sequence[int], name: str) -> tuple[int, ...]:
        items = (value,) * self.rank if isinstance(value, int) else tuple(value)
        if len(items) != self.rank or not all(isinstance(i, int) and i >= 1 for i in items):
            raise ValueError(
                f"Invalid {name}: {value!r} (must be an int >= 1 or {self.rank} of them)"
            )
        return items

    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[self._channel_axis()]
        if channels is None:
            raise ValueError(f"{type(self).__name__} needs a known number of input channels")
        self._build_input_quantizer(input_shape)
        self._build_kernel_bias((*self.kernel_size, channels, self.filters), self.filters)

    def call(self, inputs: Tensor, training: bool | None = None) -> Tensor:
        outputs = ops.conv(
            self._quantized(inputs),
            self.set_value("kernel", training),
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        bias = self._bias(training)
        if bias is not None:
            if self.data_format == "channels_first":
                bias = ops.reshape(bias, (1, self.filters) + (1,) * self.rank)
            outputs = ops.add(outputs, bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        spatial_axes = (
            range(1, self.rank + 1)
            if self.data_format == "channels_last"
            else range(2, self.rank + 2)
        )
        spatial: list[int | None] = []
        for size, k, s, d in zip(
            (input_shape[i] for i in spatial_axes),
            self.kernel_size,
            self.strides,
            self.dilation_rate,
            strict=True,
        ):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - d * (k - 1) - 1) // s + 1)
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        return config


@keras.saving.register_keras_serializable(package="snapset")
class Conv1D(_Conv):
    """A 1-d convolution whose kernel (and, with ``bias_values``, bias) lies in a value set.

    Arguments as ``keras.layers.Conv1D`` (no ``groups``), then the set options of
    ``SetLayer``.

    Examples:
        >>> import numpy as np, snapset.keras as sk
        >>> layer = sk.Conv1D(4, 3, values=[0, 1], padding="same")
        >>> tuple(layer(np.ones((2, 10, 2), "float32")).shape)
        (2, 10, 4)
    """

    rank = 1


@keras.saving.register_keras_serializable(package="snapset")
class Conv2D(_Conv):
    """A 2-d convolution whose kernel (and, with ``bias_values``, bias) lies in a value set.

    Arguments as ``keras.layers.Conv2D`` (no ``groups``), then the set options of
    ``SetLayer``.

    Examples:
        >>> import numpy as np, snapset.keras as sk
        >>> layer = sk.Conv2D(4, 3, values=[-1, 1], strides=2)
        >>> tuple(layer(np.ones((2, 9, 9, 3), "float32")).shape)
        (2, 4, 4, 4)
    """

    rank = 2
