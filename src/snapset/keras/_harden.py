"""Reading the exact set-valued weights of a Keras model, and baking them in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import keras
import numpy as np
import numpy.typing as npt

from .._sets import ValueSet
from ._layers import SetLayer, flip_values

LayerT = TypeVar("LayerT", bound=keras.Layer)


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


def set_layers(model: keras.Layer) -> Iterator[SetLayer]:
    """Every snapset layer in ``model`` (itself included), each once, in model order."""
    for layer in _layers(model):
        if isinstance(layer, SetLayer):
            yield layer


def set_weights(model: keras.Layer) -> Iterator[tuple[str, ValueSet, npt.NDArray[Any]]]:
    """``(name, value set, exact values)`` of every set-valued weight in ``model``.

    The weights of snapset's layers, and the weights of other layers marked by
    :func:`snapset.keras.constrain`; names are ``"<layer name>/<weight name>"``.
    """
    seen: set[int] = set()
    for layer in _layers(model):
        if isinstance(layer, SetLayer):
            for name, value in _built(layer).exact_weights().items():
                yield f"{layer.name}/{name}", layer.set_value_set(name), value
            seen.update(id(v) for v in layer.weights)
            continue
        for variable in layer.trainable_weights:
            values = flip_values(variable)
            if values is not None and id(variable) not in seen:
                seen.add(id(variable))
                yield f"{layer.name}/{variable.name}", values, np.asarray(variable.numpy())


def _built(layer: SetLayer) -> SetLayer:
    if not layer.built:
        raise ValueError(
            f"Layer '{layer.name}' is not built yet, so it has no weights: call the model on "
            "a batch (or build it with an input shape) first"
        )
    return layer


def exact_weights(model: keras.Layer) -> dict[str, npt.NDArray[Any]]:
    """The exact set-valued weights of every snapset layer of ``model``, as numpy arrays.

    Keys are ``"<layer name>/<weight name>"`` (``kernel``, ``bias`` with ``bias_values``);
    weights of other layers marked by :func:`snapset.keras.constrain` come too. These are the
    values the layers compute with in inference, not the latents that ``model.get_weights()``
    returns for ``ste`` and ``stochastic`` layers.

    Example:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [0, 1], name="d")])
        >>> weights = sk.exact_weights(model)
        >>> list(weights), sorted(np.unique(weights["d/kernel"]).tolist())
        (['d/kernel'], [0.0, 1.0])
    """
    return {name: value for name, _, value in set_weights(model)}


def harden_(model: LayerT) -> LayerT:
    """Bake the exact values into every snapset layer of ``model``, in place; return it.

    Each layer's stored variables then hold its exact values (so ``get_weights``, ``save``
    and ``save_weights`` write only set members) and the layer becomes ``method="flip"``:
    inference outputs stay the same, bit for bit. The Keras counterpart of
    :func:`snapset.torch.harden_`. A compiled model's cached train/predict functions are
    dropped so that they are traced again; to train further, compile again with a
    :class:`snapset.keras.Router` (Bop moves the hardened weights).

    Example:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [-1, 1])])
        >>> x = np.ones((1, 3), "float32")
        >>> before = model.predict(x, verbose=0)
        >>> model = sk.harden_(model)
        >>> np.array_equal(model.predict(x, verbose=0), before)
        True
        >>> sorted(np.unique(model.layers[0].get_weights()[0]).tolist())
        [-1.0, 1.0]
    """
    layers = [_built(layer) for layer in set_layers(model)]
    for layer in layers:
        layer.harden()
    for function in ("train_function", "test_function", "predict_function"):
        if getattr(model, function, None) is not None:
            setattr(model, function, None)
    return model
