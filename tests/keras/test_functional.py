"""The tensor-level maths: codes, nearest values, stochastic rounding,
the straight-through wrapper and the spread init, against the core's float64 definitions."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
from snapset._sets import round_to_dtype  # noqa: E402
from snapset.keras import _functional as F  # noqa: E402
from snapset.keras._estimators import SURROGATES  # noqa: E402

SETS = [
    snapset.Binary(),
    snapset.Sign(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.7, 3, 100]),  # uneven gaps
]


def as_float64(tensor):
    if keras.backend.standardize_dtype(tensor.dtype) not in ("float32", "float64"):
        tensor = ops.cast(tensor, "float32")  # exact: float16 and bfloat16 fit in float32
    return np.asarray(ops.convert_to_numpy(tensor), np.float64)


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_codes_and_nearest_values_agree_with_the_core_ties_included(values):
    t = values.tables("float32", latent_range=0.1)
    rng = np.random.default_rng(1)
    latents = np.concatenate(
        [rng.uniform(-0.2, 0.2, 300), t.levels, t.thresholds, -t.thresholds]
    ).astype("float32")
    thresholds = ops.convert_to_tensor(t.thresholds, "float32")
    table = ops.convert_to_tensor(t.values, "float32")
    u = ops.convert_to_tensor(latents)
    expected_codes = np.searchsorted(t.thresholds, latents.astype(np.float64), side="right")
    np.testing.assert_array_equal(ops.convert_to_numpy(F.codes(u, thresholds)), expected_codes)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(F.nearest(u, thresholds, table)),
        values.decode(expected_codes).astype("float32"),
    )


def test_stochastic_rounding_draws_only_neighbours_with_the_right_frequency():
    values = snapset.ValueSet([1, -1, 0.5, -0.5])
    t = values.tables("float32", latent_range=0.1)
    levels = ops.convert_to_tensor(t.levels, "float32")
    table = ops.convert_to_tensor(t.values, "float32")
    # 0.75 between 0.5 and 1 (p_up 1/2), -0.875 between -1 and -0.5 (p_up 1/4), both ends,
    # and two latents outside the range, which are clipped first.
    latent = np.array([0.075, -0.0875, 0.1, -0.1, 0.3, -0.3], "float32")
    u = ops.convert_to_tensor(np.tile(latent, (2000, 1)))
    draws = ops.convert_to_numpy(F.stochastic_round(u, levels, table, seed=5))
    assert set(np.unique(draws[:, 0])) == {0.5, 1.0}
    assert set(np.unique(draws[:, 1])) == {-1.0, -0.5}
    np.testing.assert_array_equal(draws[:, 2:], np.tile([1.0, -1.0, 1.0, -1.0], (2000, 1)))
    # Mean within 4 standard deviations of a mean of 2000 draws.
    np.testing.assert_allclose(draws[:, :2].mean(0), [0.75, -0.875], atol=0.03)


@pytest.mark.parametrize("estimator", list(SURROGATES))
def test_straight_through_returns_the_hard_values_and_the_surrogate_gradient(estimator, fgrad):
    rng = np.random.default_rng(2)
    u = rng.uniform(-0.3, 0.3, 50).astype("float32")
    hard = np.sign(u).astype("float32")
    upstream = rng.standard_normal(50).astype("float32")
    surrogate = SURROGATES[estimator]

    def fn(x):
        return F.straight_through(x, ops.convert_to_tensor(hard), surrogate, 10.0, 0.1)

    forward, grad = fgrad(fn, u, upstream)
    np.testing.assert_array_equal(forward, hard)
    expected = ops.convert_to_numpy(
        surrogate(ops.convert_to_tensor(u), ops.convert_to_tensor(upstream), 10.0, 0.1)
    )
    np.testing.assert_array_equal(grad, expected)


def with_ties(shape, seed):
    """Random numbers of which a third are copies of others and a tenth equal: ties, which
    spread orders by index."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).reshape(-1)
    x[rng.integers(0, x.size, x.size // 3)] = x[rng.integers(0, x.size, x.size // 3)]
    x[: x.size // 10] = 0.25
    return x.reshape(shape)


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(7,), (13, 5), (3, 4, 5, 2)], ids=str)
def test_spread_is_the_core_spread_bit_for_bit(values, dtype, shape):
    array = with_ties(shape, seed=len(shape))
    if dtype == "float64":
        x = ops.convert_to_tensor(array)  # JAX without x64 holds it as float32
    else:
        x = ops.cast(ops.convert_to_tensor(array.astype("float32")), dtype)
    held = keras.backend.standardize_dtype(x.dtype)
    inputs = as_float64(x)
    assert len(np.unique(inputs)) < inputs.size  # ties
    ours = F.spread(x, values)
    assert keras.backend.standardize_dtype(ours.dtype) == held
    expected = round_to_dtype(values.spread(inputs), held)
    np.testing.assert_array_equal(as_float64(ours), expected)
    assert set(np.unique(values.project(expected))) == set(values.values)
