"""Tensor-level maths of the Keras front, written only against ``keras.ops``.

The same definitions as the PyTorch front: the tables come from
[`snapset.ValueSet.tables`][] in float64, rounded once to the weight's dtype,
so both fronts choose the same value for the same latent, ties included. Forward values are taken
from a table (by selects, or ``ops.take`` for large sets), never computed as
``w + stop_gradient(q - w)``, which rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._sets import ValueSet, round_to_dtype

Tensor = Any  # a backend tensor (tf.Tensor, torch.Tensor or jax.Array)
Float64Array = npt.NDArray[np.float64]
#: A surrogate derivative: ``(latent, upstream gradient, scale, bound) -> latent gradient``.
Surrogate = Callable[[Tensor, Tensor, float, float], Tensor]


def codes(x: Tensor, boundaries: Tensor) -> Tensor:
    """Index of each entry's value: how many of the sorted ``boundaries`` lie at or below it.

    A tie goes up. A sum of comparisons: exact and the same on every backend.

    Examples:
        >>> x = ops.convert_to_tensor([-1.0, 0.0, 0.3, 2.0])
        >>> ops.convert_to_numpy(codes(x, ops.convert_to_tensor([0.0, 1.0]))).tolist()
        [0, 1, 1, 2]
    """
    index = ops.cast(ops.greater_equal(x, boundaries[0]), "int32")
    for j in range(1, int(boundaries.shape[0])):
        index = index + ops.cast(ops.greater_equal(x, boundaries[j]), "int32")
    return index


def nearest(latent: Tensor, thresholds: Tensor, table: Tensor) -> Tensor:
    """Exact nearest values of ``latent``; one exactly on a threshold goes to the larger value.

    ``thresholds`` are the decision boundaries on the latent's scale, ``table`` the values.

    Examples:
        >>> u = ops.convert_to_tensor([-0.1, 0.0, 0.04])
        >>> thresholds = ops.convert_to_tensor([-0.05, 0.0, 0.05])
        >>> table = ops.convert_to_tensor([-1.0, -0.5, 0.5, 1.0])
        >>> ops.convert_to_numpy(nearest(u, thresholds, table)).tolist()
        [-1.0, 0.5, 0.5]
    """
    if int(table.shape[0]) > _SELECTS:
        return ops.take(table, codes(latent, thresholds))
    # One select per boundary, no gather: several times faster than ops.take on every backend
    # for the small sets of weights (a gather builds int64 indices the size of the weight).
    value = ops.where(ops.greater_equal(latent, thresholds[0]), table[1], table[0])
    for j in range(1, int(thresholds.shape[0])):
        value = ops.where(ops.greater_equal(latent, thresholds[j]), table[j + 1], value)
    return value


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]``: the values of index codes.

    Examples:
        >>> table = ops.convert_to_tensor([-1.0, 0.0, 1.0])
        >>> ops.convert_to_numpy(lookup(table, ops.convert_to_tensor([2, 0, 1]))).tolist()
        [1.0, -1.0, 0.0]
    """
    if int(table.shape[0]) > _SELECTS:
        return ops.take(table, index)
    value = ops.where(ops.greater_equal(index, 1), table[1], table[0])
    for j in range(2, int(table.shape[0])):
        value = ops.where(ops.greater_equal(index, j), table[j], value)
    return value


#: Sets up to this size are read by selects (one per value), larger ones by a gather.
_SELECTS = 16


def stochastic_round(
    latent: Tensor, levels: Tensor, table: Tensor, seed: Any, dither: float = 1.0
) -> Tensor:
    """Round at random to one of the two neighbouring values, unbiased on the latent scale.

    ``levels`` are the values on the latent's scale. A latent between levels
    ``l_j <= u < l_{j+1}`` (gap ``g``) becomes value ``j + 1`` with probability
    ``(u - l_j) / g`` and value ``j`` otherwise; latents outside the range are clipped first.
    ``dither < 1`` narrows the random band to that share of the gap, centred on the
    threshold: the probability ``(u - l_j - (1 - dither) g / 2) / (dither g)`` is 0 below the
    band and 1 above it (as PyTorch's). ``seed`` is a ``keras.random.SeedGenerator`` (or an
    int). Gupta et al., 2015, "Deep Learning with Limited Numerical Precision".

    Examples:
        >>> levels, table = ops.convert_to_tensor([-0.1, 0.1]), ops.convert_to_tensor([0.0, 1.0])
        >>> u = ops.convert_to_tensor([-0.3, 0.1, 0.5])
        >>> ops.convert_to_numpy(stochastic_round(u, levels, table, seed=0)).tolist()
        [0.0, 1.0, 1.0]
    """
    last = int(levels.shape[0]) - 1
    clipped = ops.clip(latent, levels[0], levels[last])
    low = ops.clip(codes(clipped, levels) - 1, 0, last - 1)
    below, above = ops.take(levels, low), ops.take(levels, low + 1)
    gap = above - below
    p_up = (clipped - below - (1 - dither) / 2 * gap) / (dither * gap)
    draw = keras.random.uniform(ops.shape(latent), dtype=latent.dtype, seed=seed)
    up = ops.cast(ops.less(draw, p_up), "int32")
    return ops.take(table, low + up)


def argmax_ties_up(scores: Tensor) -> Tensor:
    """Index of the largest score along the last axis; a tie goes to the larger index (value).

    Examples:
        >>> scores = ops.convert_to_tensor([[0.3, 0.1, 0.0], [0.0, 0.2, 0.2]])
        >>> ops.convert_to_numpy(argmax_ties_up(scores)).tolist()
        [0, 2]
    """
    last = int(scores.shape[-1]) - 1
    # -0.0 and 0.0 tie: JAX's argmax orders them, so both become 0.0 first.
    scores = ops.where(ops.equal(scores, 0.0), ops.zeros_like(scores), scores)
    return last - ops.cast(ops.argmax(ops.flip(scores, axis=-1), axis=-1), "int32")


def gumbel_sample(logits: Tensor, table: Tensor, temperature: float, seed: Any) -> Tensor:
    """Straight-through Gumbel-softmax (Jang et al., 2017; Maddison et al., 2017).

    Draws one category per entry (the last axis of ``logits``) from ``softmax(logits)`` with the
    Gumbel-max trick, ``argmax(logits + g)``, and returns its exact value from ``table`` with the
    gradient of ``gumbel_straight_through``. ``seed`` is a ``keras.random.SeedGenerator`` (or an
    int).

    Examples:
        >>> table = ops.convert_to_tensor([-1.0, 1.0])
        >>> logits = ops.convert_to_tensor([[-50.0, 50.0], [50.0, -50.0]])  # all but certain
        >>> ops.convert_to_numpy(gumbel_sample(logits, table, 1.0, seed=0)).tolist()
        [1.0, -1.0]
    """
    dtype = keras.backend.standardize_dtype(logits.dtype)
    info = np.finfo(dtype)
    uniform = keras.random.uniform(
        ops.shape(logits), minval=float(info.tiny), maxval=1.0, dtype=dtype, seed=seed
    )
    return gumbel_straight_through(logits - ops.log(-ops.log(uniform)), table, temperature)


def gumbel_straight_through(noisy: Tensor, table: Tensor, temperature: float) -> Tensor:
    """The value of the largest of the ``noisy`` logits (ties up), with the gradient of the
    expected value ``E = sum_j softmax(noisy / temperature)_j v_j``.

    In closed form ``dE/dy_i = s_i (v_i - E) / temperature``, as PyTorch's
    ``gumbel_expectation_grad``; its non-finite entries are set to 0 (one would make its
    logits NaN for good under Adam).

    Examples:
        >>> table = ops.convert_to_tensor([-1.0, 1.0])
        >>> noisy = ops.convert_to_tensor([[0.0, 0.0], [2.0, 1.0]])
        >>> ops.convert_to_numpy(gumbel_straight_through(noisy, table, 1.0)).tolist()
        [1.0, -1.0]
    """

    @ops.custom_gradient  # type: ignore[untyped-decorator]
    def forward(y: Tensor) -> tuple[Tensor, Callable[..., Tensor]]:
        def grad(*args: Tensor, upstream: Tensor | None = None) -> Tensor:
            # TensorFlow and JAX pass the upstream gradient positionally, torch by keyword.
            if upstream is None:
                (upstream,) = args
            probs = ops.softmax(y / temperature, axis=-1)
            expectation = ops.sum(probs * table, axis=-1, keepdims=True)
            dy = ops.expand_dims(upstream, -1) * probs * (table - expectation) / temperature
            return ops.where(ops.isfinite(dy), dy, ops.zeros_like(dy))

        return ops.take(table, argmax_ties_up(y)), grad

    return forward(noisy)


def straight_through(
    latent: Tensor, hard: Tensor, surrogate: Surrogate, scale: float, bound: float
) -> Tensor:
    """Return ``hard`` exactly, with the ``surrogate``'s gradient flowing to ``latent``.

    ``scale`` is the slope of value against latent inside ``[-bound, bound]`` (see
    ``snapset.keras._estimators`` for the surrogates). Non-finite (NaN or infinite) entries
    of the upstream gradient become 0 before the surrogate sees them: one would otherwise make
    its latent NaN for good under Adam, its value pinned to the set's smallest member while
    the outputs stay finite.

    Examples:
        >>> from snapset.keras._estimators import identity
        >>> u = ops.convert_to_tensor([-0.05, 0.0, 0.2])
        >>> q = ops.convert_to_tensor([0.0, 1.0, 1.0])
        >>> ops.convert_to_numpy(straight_through(u, q, identity, 5.0, 0.1)).tolist()
        [0.0, 1.0, 1.0]
    """

    @ops.custom_gradient  # type: ignore[untyped-decorator]
    def forward(u: Tensor, q: Tensor) -> tuple[Tensor, Callable[..., tuple[Tensor, Tensor]]]:
        def grad(*args: Tensor, upstream: Tensor | None = None) -> tuple[Tensor, Tensor]:
            # TensorFlow and JAX pass the upstream gradient positionally, torch by keyword.
            if upstream is None:
                (upstream,) = args
            upstream = ops.where(ops.isfinite(upstream), upstream, ops.zeros_like(upstream))
            return surrogate(u, upstream, scale, bound), ops.zeros_like(q)

        return ops.copy(q), grad

    # Copies, so that TensorFlow sees tensors rather than the variable they were read from.
    return forward(ops.copy(latent), hard)


def spread(weight: Tensor, values: ValueSet) -> Tensor:
    """[`snapset.ValueSet.spread`][] of ``weight``, in its dtype, bit for
    bit.

    Entries keep their order and every value is used by the same share of them. The spread
    depends on the entries only through their ranks, so the core computes it once for the ranks
    ``0 .. n-1`` (in float64, rounded once to the weight's dtype) and each entry takes the number
    of its rank. Written in ``keras.ops`` because Keras may initialise a weight while ``build``
    is traced (TensorFlow, JAX, and torch's symbolic build), where no numpy value exists.

    Examples:
        >>> import snapset
        >>> w = spread(ops.convert_to_tensor([0.3, -0.2, 0.1, 0.0]), snapset.Sign())
        >>> ops.convert_to_numpy(w).tolist()
        [0.75, -0.75, 0.25, -0.25]
    """
    dtype = keras.backend.standardize_dtype(weight.dtype)
    flat = ops.reshape(weight, (-1,))
    n = int(flat.shape[0])
    by_rank = round_to_dtype(values.spread(np.arange(n, dtype=np.float64)), dtype)
    # argsort is stable on every backend, so tied entries keep their index order as in the core.
    ranks = ops.argsort(ops.argsort(flat))
    return ops.reshape(ops.take(ops.convert_to_tensor(by_rank, dtype), ranks), ops.shape(weight))
