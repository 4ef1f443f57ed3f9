"""Re-estimating BatchNormalization's moving statistics with the exact weights a model infers
with.

The moving statistics average over training steps in which the weights kept moving (and, for
``stochastic`` and ``gumbel``, were random draws), so they do not belong to the exact weights
that inference computes with (Nagel et al., ICML 2022, "Overcoming Oscillations in
Quantization-Aware Training", BatchNorm re-estimation). Calling the model with
``training=True`` would draw random weights again: here the model runs with
``training=False``, and only its BatchNormalization layers compute as in training.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._spec import batch_inputs, batchnorm_refused, check_batches

__all__ = ["reestimate_batchnorm"]

LayerT = TypeVar("LayerT", bound=keras.Layer)


def reestimate_batchnorm(model: LayerT, data: Iterable[Any], batches: int | None = None) -> LayerT:
    """Recompute the moving statistics of every ``BatchNormalization`` in ``model`` from
    ``data``, with the exact weights; return ``model``.

    The batches of ``data`` run through ``model(inputs, training=False)``, so that snapset's
    layers and [`Quantize`][snapset.keras.Quantize] show their exact, deterministic values and
    dropout is off, while each ``BatchNormalization`` layer (trainable or not) normalizes with
    its batch's own statistics, as in training. Each layer's ``moving_mean`` becomes the
    average of its batches' means and its ``moving_variance`` that of their biased variances
    (what Keras's moving average follows), each batch counting once whatever its size, along
    the layer's ``axis`` (channels last or first), accumulated in float64: the cumulative
    average that [`snapset.torch.reestimate_batchnorm`][] computes (where torch keeps unbiased
    variances). A layer that no batch reaches gets mean 0 and variance 1, as in PyTorch. Call
    it after training, before inference, ``harden_``, ``save`` or an export.

    ``data``: an iterable of batches (a list of arrays, a ``tf.data.Dataset``, a torch
    ``DataLoader``). A batch is the model's input, or a tuple or list ``(inputs, targets,
    ...)`` whose first element is (a dict input is the model's named inputs). ``batches``: use
    at most that many (None: all of them).

    Raises ``ValueError`` (the model unchanged) for a model without ``BatchNormalization``, a
    layer not built yet, a layer with ``renorm=True``, a masked input to a layer, data that
    gives no batch, or ``batches`` <= 0 (``TypeError`` if not an int or None). The moving
    statistics are written only once every batch has run: a failed call (its error propagates)
    changes nothing.

    Examples:
        >>> import keras, numpy as np, snapset, snapset.keras as sk
        >>> keras.utils.set_random_seed(0)
        >>> dense = sk.Dense(4, values=snapset.Sign(), method="stochastic", use_bias=False)
        >>> model = keras.Sequential([keras.Input((3,)), dense, keras.layers.BatchNormalization()])
        >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
        >>> model = sk.reestimate_batchnorm(model, [x])
        >>> exact = x @ sk.exact_weights(model)[f"{dense.name}/kernel"]  # the Sign weights
        >>> mean = keras.ops.convert_to_numpy(model.layers[1].moving_mean)
        >>> bool(np.allclose(mean, exact.mean(0), atol=1e-6))
        True
    """
    check_batches(batches)
    norms = _batchnorms(model)
    averages = [_Average(norm) for norm in norms]
    with _batch_statistics(norms, averages):
        count = _run(model, data, batches)
    if count == 0:
        raise batchnorm_refused("empty")
    for norm, average in zip(norms, averages, strict=True):
        mean, variance = average.result()
        norm.moving_mean.assign(mean.astype(norm.moving_mean.dtype))
        norm.moving_variance.assign(variance.astype(norm.moving_variance.dtype))
    return model


class _Average:
    """The cumulative average of one layer's per-batch means and biased variances."""

    def __init__(self, norm: keras.layers.BatchNormalization) -> None:
        size = int(norm.moving_mean.shape[0])
        self.means = np.zeros(size)
        self.variances = np.zeros(size)
        self.count = 0

    def add(self, values: npt.NDArray[np.float64], axis: int) -> tuple[Any, Any]:
        """Add a batch's moments along ``axis`` (the features); return them."""
        reduce = tuple(a for a in range(values.ndim) if a != axis)
        mean, variance = values.mean(reduce), values.var(reduce)
        self.means += mean
        self.variances += variance
        self.count += 1
        return mean, variance

    def result(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        if self.count == 0:  # no batch reached the layer: reset, as torch's BatchNorm does
            return np.zeros_like(self.means), np.ones_like(self.variances)
        return self.means / self.count, self.variances / self.count


def _batchnorms(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of ``model``, each once; refuses those it cannot
    re-estimate."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        where = f"BatchNormalization '{layer.name}'"
        if not layer.built:
            raise batchnorm_refused("unbuilt", where)
        if layer.renorm:
            raise batchnorm_refused("renorm", where)
        found.append(layer)
    if not found:
        raise batchnorm_refused("none", f"model '{model.name}'")
    return found


@contextlib.contextmanager
def _batch_statistics(
    norms: list[keras.layers.BatchNormalization], averages: list[_Average]
) -> Iterator[None]:
    """Make each layer normalize with its batch's statistics and add them to its average,
    for the duration; each layer's own ``call`` is back afterwards."""
    wrapped: list[tuple[keras.layers.BatchNormalization, Any]] = []
    try:
        for norm, average in zip(norms, averages, strict=True):
            wrapped.append((norm, norm.__dict__.get("call")))
            # object's setattr: Keras would track the function as the layer's state
            object.__setattr__(norm, "call", _call_with_batch_statistics(norm, average))
        yield
    finally:
        for norm, own in wrapped:
            if own is None:
                object.__delattr__(norm, "call")
            else:
                object.__setattr__(norm, "call", own)


def _call_with_batch_statistics(
    norm: keras.layers.BatchNormalization, average: _Average
) -> Callable[..., Any]:
    def call(inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if mask is not None:
            raise batchnorm_refused("masked", f"BatchNormalization '{norm.name}'")
        # in float32 at least, as Keras's BatchNormalization computes
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        values = np.asarray(ops.convert_to_numpy(x), np.float64)
        mean, variance = average.add(values, norm.axis % values.ndim)
        outputs = ops.batch_normalization(
            x,
            mean=ops.convert_to_tensor(mean, x.dtype),
            variance=ops.convert_to_tensor(variance, x.dtype),
            axis=norm.axis,
            offset=None if norm.beta is None else ops.cast(norm.beta, x.dtype),
            scale=None if norm.gamma is None else ops.cast(norm.gamma, x.dtype),
            epsilon=norm.epsilon,
        )
        return ops.cast(outputs, norm.compute_dtype)

    return call


def _run(model: keras.Layer, data: Iterable[Any], batches: int | None) -> int:
    """Run ``model`` in inference on the inputs of ``data``'s first ``batches`` batches;
    their number."""
    count = 0
    with _no_gradient():
        for batch in itertools.islice(data, batches):
            model(batch_inputs(batch).inputs, training=False)
            count += 1
    return count


def _no_gradient() -> contextlib.AbstractContextManager[Any]:
    """No autograd graph on the torch backend (the others record none outside a tape)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
