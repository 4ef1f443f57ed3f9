"""The model summary of the Keras front: the table of [`snapset.torch.summary`][], for Keras 3.

The rows, their numbers and the text are the core's (``snapset._summary``); this module only
finds, in a Keras model, which variable is which kind of weight.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import ml_dtypes
import numpy as np

from .._files import HARDENED
from .._summary import PLAIN, Summary, SummaryRow, with_scale
from ._constrain import _layers, constrained_variables
from ._layers import SetLayer
from ._methods import Method, checked_numpy, hardened_parts


def summary(model: keras.Layer) -> Summary:
    """A per-weight table of ``model``'s parameters: set, method, count, bits, packed size.

    The table of [`snapset.torch.summary`][], with the same numbers and text for the same
    architecture, rows in the order of ``model.weights``. A constrained weight (of a
    snapset layer, or marked by [`snapset.keras.constrain`][]) is named as
    [`snapset.keras.exact_weights`][] names it, ``"<layer>/<weight>"``, and shows its set,
    method, the bits a weight needs once packed and its packed size; ``count`` is the
    weight's entries (for ``gumbel``, not its logits'). A scaled set's row names its scale
    (``{-1, 0, 1} x channel``) and counts the scales in its bits a weight and its packed
    size, each the width of the dtype it is held in (a learned scale's variables have no row
    of their own). A weight that ``harden_`` made plain (or a snapset file loaded into a
    plain layer) shows the method ``"hardened"`` while it holds members of its set (times
    its scales, for a scaled one, which its row counts). Every other weight the
    model trains (or would train, were its layer not frozen: ``layer.trainable = False``) is
    a plain row, named
    ``"<layer>/<variable>"``, with its actual size; variables Keras creates as not trainable
    (``BatchNormalization``'s moving statistics, seed and counter state, a scale's start) are
    left out, as the PyTorch front lists parameters and not buffers. An input quantizer's
    learned ``scale_log_gain`` is a plain row, as PyTorch's ``Quantize.log_gain`` is.

    Raises ``ValueError`` for a model that is not built (it has no weights yet), and
    [`snapset.OutsideSetError`][] for a ``flip`` variable that left its set (its values are
    in no set) or a latent that is not finite; the model is unchanged.

    Examples:
        >>> import keras, snapset, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((4,)),
        ...     sk.Dense(3, snapset.Binary(), "flip", name="d"), keras.layers.Dense(2, name="out")])
        >>> print(sk.summary(model))
        | tensor     | set    | method | count | bits/weight | packed | float32 |  ratio |
        |------------|--------|--------|------:|------------:|-------:|--------:|-------:|
        | d/kernel   | {0, 1} | flip   |    12 |           1 |    2 B |    48 B | 24.00x |
        | d/bias     | -      | -      |     3 |          32 |   12 B |    12 B |  1.00x |
        | out/kernel | -      | -      |     6 |          32 |   24 B |    24 B |  1.00x |
        | out/bias   | -      | -      |     2 |          32 |    8 B |     8 B |  1.00x |
        | total      |        |        |    23 |             |   46 B |    92 B |  2.00x |
        12 of 23 weights (52.2%) in a value set; 46 B packed, 2.00x smaller than float32.
        >>> [(row.name, row.method) for row in sk.summary(sk.harden_(model)).rows][:2]
        [('d/kernel', 'hardened'), ('d/bias', '-')]
        >>> scaled = keras.Sequential([keras.Input((512,)),
        ...     sk.Dense(1, snapset.Ternary(), scale=256, name="d")])
        >>> row = sk.summary(scaled).rows[0]
        >>> row.scale, round(row.bits_per_weight, 3)  # 1.586 a code, 2 float32 scales / 512
        ('256', 1.711)
    """
    _check_built(model)
    constrained = {id(entry[1]): entry for entry in constrained_variables(model)}
    for _, variable, _ in constrained.values():
        checked_numpy(variable)  # a flip variable off its set is in no set: refused, as in torch
    # a learned scale is counted in the row of the weight it scales
    scale_parts = {
        id(part)
        for _, _, method in constrained.values()
        if method.scale is not None and method.scale.learned
        for part in (method.scale.start, method.scale.log_gain)
    }
    # a snapset layer's set weight keeps its name after hardening ("d/kernel", not the
    # stored variable's "d/kernel_latent")
    set_weights = {
        id(variable): f"{layer.name}/{name}"
        for layer in _layers(model)
        if isinstance(layer, SetLayer)
        for name, variable in layer._set_weights.items()
    }
    # Freezing a layer clears its variables' `trainable`; Keras keeps the variables made
    # trainable (the parameters, as opposed to state) in each layer's `_trainable_variables`.
    parameters = {
        id(variable) for layer in model._flatten_layers() for variable in layer._trainable_variables
    }
    rows = []
    for variable in model.weights:
        key = id(variable)
        if key in constrained:
            rows.append(_constrained_row(*constrained[key]))
        elif key in parameters and key not in scale_parts:
            # "<layer>/<variable>"
            name = set_weights.get(key) or "/".join(variable.path.split("/")[-2:])
            rows.append(_plain_row(name, variable))
    return Summary(tuple(rows))


def _check_built(model: keras.Layer) -> None:
    for layer in [model, *_layers(model)]:
        if not layer.built:
            raise ValueError(
                f"{type(layer).__name__} '{layer.name}' is not built yet, so it has no weights "
                "to count: call the model on a batch (or build it with an input shape) first"
            )


def _constrained_row(key: str, variable: Any, method: Method) -> SummaryRow:
    values = method.values
    count = math.prod(method.value_shape(tuple(variable.shape)))
    row = SummaryRow(key, values, method.method, count, values.bits)
    scale = method.scale
    if scale is None:
        return row
    # a statistic scale is computed in the stored variable's dtype
    held_in = scale.log_gain if scale.learned else variable
    return with_scale(row, scale.scaling, scale.layout.count, _bits(held_in.dtype))


def _plain_row(name: str, variable: Any) -> SummaryRow:
    """The row of a plain variable: ``"hardened"`` (with its scales) while it holds what
    ``harden_`` or a loaded file marked it with, else its actual size."""
    count = math.prod(variable.shape)
    parts = hardened_parts(variable)
    if parts is None:
        return SummaryRow(name, None, PLAIN, count, _bits(variable.dtype))
    row = SummaryRow(name, parts.values, HARDENED, count, parts.values.bits)
    if parts.scale is None or parts.alpha is None:
        return row
    scale = parts.scale
    return with_scale(row, scale.scaling, scale.layout.count, 8 * parts.alpha.dtype.itemsize)


def _bits(dtype: Any) -> int:
    """The width of a Keras dtype (``"bfloat16"`` is not numpy's: ``ml_dtypes`` has it)."""
    name = keras.backend.standardize_dtype(dtype)
    return 8 * int(np.dtype(getattr(ml_dtypes, name, name)).itemsize)
