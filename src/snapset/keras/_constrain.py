"""Flip-constraining a weight of any Keras layer, through public attributes only."""

from __future__ import annotations

from typing import TypeVar

import keras
from keras import ops

from .._sets import ValueSet
from . import _ops
from ._layers import INITS, SetLayer, ValuesLike, flip_values

LayerT = TypeVar("LayerT", bound=keras.Layer)


def constrain(layer: LayerT, name: str, values: ValuesLike, *, init: str = "spread") -> LayerT:
    """Make ``layer.<name>``, a weight of any built Keras layer, a flip weight of ``values``.

    The variable takes exact values of the set (``init="spread"``: every value used by the
    same share of entries, order kept; ``"nearest"``: the nearest value of each entry) and is
    marked so that :class:`snapset.keras.Bop`, :class:`snapset.keras.Router`,
    :func:`snapset.keras.exact_weights` and :class:`snapset.keras.FlipRatio` see it. The
    layer's own ``call`` is untouched, so this works for any layer that exposes the weight as
    a ``keras.Variable`` attribute (``Dense.kernel``, ``Conv*.kernel``,
    ``Embedding.embeddings``, ``DepthwiseConv2D.depthwise_kernel``, ...), and only with the
    ``flip`` method: ``ste`` and ``stochastic`` change what ``call`` computes with, which needs
    snapset's own layers (:class:`Dense`, :class:`Conv1D`, :class:`Conv2D`,
    :class:`Multiplier`). The mark is not saved: after ``load_model``, call ``constrain``
    again with ``init="nearest"`` (the saved values are already members of the set).

    Example:
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
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; valid inits: " + ", ".join(map(repr, INITS)))
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
    already = flip_values(variable)
    if already is not None:
        raise ValueError(
            f"Weight '{name}' of {kind} '{layer.name}' is already constrained to {already!r}"
        )
    if not variable.trainable:
        raise ValueError(f"Weight '{name}' of {kind} '{layer.name}' is not trainable")
    t = _ops.tables(value_set, variable.dtype)  # refuses a dtype that merges values
    current = ops.convert_to_tensor(variable)
    wanted = _ops.spread(current, value_set) if init == "spread" else current
    variable.assign(_ops.stored_from_values(wanted, t, "flip"))
    variable._snapset_flip_values = value_set
    return layer
