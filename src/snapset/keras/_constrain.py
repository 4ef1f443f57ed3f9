"""Constraining a weight of any Keras layer, reading a model's exact weights, and hardening.

Every function here walks a model's constrained variables with ``constrained_variables``,
which reads the record each variable carries (``snapset.keras._methods``): snapset's layers
and weights marked by ``constrain`` are found the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import keras
import numpy.typing as npt
from keras import ops

from .._sets import ValueSet
from .._spec import check_init, check_temperature
from ._layers import SetLayer, ValuesLike
from ._methods import (
    Flip,
    Method,
    attach,
    checked_numpy,
    exact_numpy,
    harden_variable,
    method_of,
    scaled_numpy,
)

LayerT = TypeVar("LayerT", bound=keras.Layer)


def constrain(layer: LayerT, name: str, values: ValuesLike, *, init: str = "spread") -> LayerT:
    """Make ``layer.<name>``, a weight of any built Keras layer, a flip weight of ``values``.

    The variable takes exact values of the set (``init="spread"``: every value used by the same
    share of entries, order kept; ``"nearest"``: the nearest value of each entry) and is marked so
    that [`snapset.keras.Bop`][], [`snapset.keras.Router`][],
    [`snapset.keras.exact_weights`][] and
    [`snapset.keras.FlipRatio`][] see it. The layer's own ``call`` is
    untouched, so this works for any layer that exposes the weight as a ``keras.Variable`` attribute
    (``Dense.kernel``, ``Conv*.kernel``, ``Embedding.embeddings``,
    ``DepthwiseConv2D.depthwise_kernel``, ...), and only with the ``flip`` method: ``ste``,
    ``stochastic`` and ``gumbel`` change what ``call`` computes with, which needs snapset's own
    layers (``Dense``, ``Conv1D``, ``Conv2D``, ``Multiplier``); so does a scaled set
    (``scale=``, ``w = alpha * v``), which those layers take. The mark is not saved: after
    ``load_model``, call ``constrain`` again with ``init="nearest"`` (the saved values are already
    members of the set). ``harden_`` removes it.

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> embedding = keras.layers.Embedding(10, 4)
        >>> embedding.build((None,))
        >>> embedding = sk.constrain(embedding, "embeddings", [0, 1])
        >>> sorted(np.unique(embedding.get_weights()[0]).tolist())
        [0.0, 1.0]
        >>> sk.flip_values(embedding.embeddings)
        ValueSet([0, 1])
    """
    value_set = ValueSet(values)
    check_init(init)
    kind = type(layer).__name__
    if isinstance(layer, SetLayer):
        raise ValueError(
            f"{kind} '{layer.name}' is a snapset layer already; choose its values and method "
            "when you create it"
        )
    if not layer.built:
        raise ValueError(
            f"{kind} '{layer.name}' is not built yet, so it has no weights: call it on a batch "
            "(or layer.build(input_shape)) first"
        )
    variable = getattr(layer, name, None)
    if not isinstance(variable, keras.Variable):
        names = ", ".join(f"'{v.name}'" for v in layer.weights)
        raise ValueError(
            f"{kind} '{layer.name}' has no weight attribute named '{name}' holding a "
            f"keras.Variable" + (f"; its weights are {names}" if names else " (it has no weights)")
        )
    already = method_of(variable)
    if already is not None:
        raise ValueError(
            f"Weight '{name}' of {kind} '{layer.name}' is already constrained to {already.values!r}"
        )
    if not variable.trainable:
        raise ValueError(f"Weight '{name}' of {kind} '{layer.name}' is not trainable")
    if variable.constraint is not None:
        raise ValueError(
            f"Weight '{name}' of {kind} '{layer.name}' has a constraint "
            f"({variable.constraint!r}), which would move it off its value set after each step; "
            "create the layer without it"
        )
    method = Flip(value_set, variable.dtype, variable.name)  # refuses a dtype that merges values
    variable.assign(method.start(ops.convert_to_tensor(variable), init))
    attach(variable, method)
    return layer


def _layers(model: keras.Layer) -> Iterator[keras.Layer]:
    """Every layer in ``model`` (itself included), each once, sublayers before their container."""
    seen: set[int] = set()

    def visit(layer: keras.Layer) -> Iterator[keras.Layer]:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        for sublayer in getattr(layer, "layers", []):
            yield from visit(sublayer)
        yield layer

    yield from visit(model)


def constrained_variables(model: keras.Layer) -> Iterator[tuple[str, Any, Method]]:
    """``(key, variable, method object)`` of every constrained variable in ``model``, in order.

    Keys are ``"<layer name>/<weight name>"``, the layer being the innermost one that holds
    the variable. Refuses a snapset layer that is not built yet (it has no variables to show).

    Examples:
        >>> import keras, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [0, 1], "flip", name="d")])
        >>> [(key, variable.name, method.method) for key, variable, method in
        ...  constrained_variables(model)]
        [('d/kernel', 'kernel', 'flip')]
    """
    seen: set[int] = set()
    for layer in _layers(model):
        if isinstance(layer, SetLayer) and layer.method is not None and not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' is not built yet, so it has no weights: call the model "
                "on a batch (or build it with an input shape) first"
            )
        for variable in layer.weights:
            method = method_of(variable)
            if method is not None and id(variable) not in seen:
                seen.add(id(variable))
                yield f"{layer.name}/{method.weight}", variable, method


def exact_weights(model: keras.Layer) -> dict[str, npt.NDArray[Any]]:
    """The exact values of every constrained weight of ``model``, as numpy arrays.

    Keys are ``"<layer name>/<weight name>"`` (``kernel``, ``bias`` with ``bias_values``); weights
    of other layers marked by [`snapset.keras.constrain`][] come too. These
    are the values the layers compute with in inference, not the latents or logits that
    ``model.get_weights()`` returns for ``ste``, ``stochastic`` and ``gumbel`` layers: members
    of the set, or for a scaled set ``alpha * v`` in the weight's dtype (the members and the
    scales apart: [`snapset.keras.scaled_parts`][]). Warns (``RuntimeWarning``) about learned
    scales that the scale constraint clamped since the last report.

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [0, 1], name="d")])
        >>> weights = sk.exact_weights(model)
        >>> list(weights), sorted(np.unique(weights["d/kernel"]).tolist())
        (['d/kernel'], [0.0, 1.0])
    """
    weights = {
        key: exact_numpy(variable, method) for key, variable, method in constrained_variables(model)
    }
    for layer in _layers(model):
        if isinstance(layer, SetLayer):
            layer.warn_scale_clamps()
    return weights


def scaled_parts(model: keras.Layer) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """``(members, scales)`` of every scaled weight of ``model``, as numpy arrays.

    Keys as [`snapset.keras.exact_weights`][], which gives the weights the layers compute with,
    ``alpha * v``; here the two factors come apart: the exact members ``v`` of the set (the
    weight's shape) and the scales ``alpha`` (the layout's ``scale_shape``: ``(1, units)``
    for ``scale="channel"`` on a ``Dense``, ``(in / g, units)`` for a group size ``g``).
    ``scales`` expanded over the groups times ``members`` is the weight, bit for bit.
    Weights without a scale are left out.

    Examples:
        >>> import keras, numpy as np, snapset, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((4,)),
        ...     sk.Dense(2, snapset.Ternary(), scale=2, scale_mode="absmean", name="d")])
        >>> members, scales = sk.scaled_parts(model)["d/kernel"]
        >>> set(np.unique(members)) <= {-1.0, 0.0, 1.0}, scales.shape
        (True, (2, 2))
        >>> weight = sk.exact_weights(model)["d/kernel"]
        >>> np.array_equal(weight, members * np.repeat(scales, 2, axis=0))
        True
    """
    return {
        key: scaled_numpy(variable, method)
        for key, variable, method in constrained_variables(model)
        if method.scale is not None
    }


def harden_(model: LayerT) -> LayerT:
    """Remove every constraint of ``model``, in place, leaving its exact values; return it.

    Each constrained variable is assigned its exact values and becomes a plain weight with no
    constraint, and snapset's layers become ``method=None``: the Keras counterpart of
    [`snapset.torch.harden_`][]. Inference outputs stay the same, bit for bit;
    ``get_weights``, ``save`` and ``save_weights`` hold only set members; ``exact_weights``,
    ``flip_values``, ``Router`` and ``FlipRatio`` no longer see those weights.
    A compiled model's cached train/predict functions are dropped so that they are traced
    again; compile it again to train it further (as a plain float model).

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [-1, 1])])
        >>> x = np.ones((1, 3), "float32")
        >>> before = model.predict(x, verbose=0)
        >>> model = sk.harden_(model)
        >>> np.array_equal(model.predict(x, verbose=0), before)
        True
        >>> sorted(np.unique(model.layers[0].get_weights()[0]).tolist())
        [-1.0, 1.0]
        >>> model.layers[0].method, sk.exact_weights(model)
        (None, {})
    """
    # The walk refuses an unbuilt layer before anything changes.
    variables = [variable for _, variable, _ in constrained_variables(model)]
    for variable in variables:
        checked_numpy(variable)  # all of them, before anything changes
    # snapset's layers first: a gumbel weight changes shape, which only its layer can do.
    for layer in _layers(model):
        if isinstance(layer, SetLayer):
            layer.harden()
    for variable in variables:
        harden_variable(variable)  # what is left: weights marked by constrain
    for function in ("train_function", "test_function", "predict_function"):
        if getattr(model, function, None) is not None:
            setattr(model, function, None)
    return model


def set_temperature(model: keras.Layer, temperature: float) -> int:
    """Set the temperature of every ``gumbel`` weight in ``model``; return how many.

    As [`snapset.torch.set_temperature`][]: ``temperature`` (tau, a finite number > 0) shapes
    the Gumbel-softmax gradient from the next step on, and is saved with each layer's config.
    A compiled model's train function is traced again with it (also from a callback during
    ``fit``, so that ``on_epoch_begin`` can anneal it).

    Examples:
        >>> import keras, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [-1, 1], "gumbel")])
        >>> sk.set_temperature(model, 0.5), model.layers[0].get_config()["temperature"]
        (1, 0.5)
    """
    check_temperature(temperature)
    # The methods that have a temperature (gumbel) say so in their options.
    tempered = [m for _, _, m in constrained_variables(model) if "temperature" in m.options]
    for method in tempered:
        method.options["temperature"] = float(temperature)
    for layer in _layers(model):
        if isinstance(layer, SetLayer) and "temperature" in layer.options:
            layer.options["temperature"] = float(temperature)
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    return len(tempered)
