"""The estimators: each surrogate derivative against its closed form, alone and in a layer."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402
from snapset.keras._estimators import SURROGATES  # noqa: E402


def closed_form(estimator, u, g, scale, bound):
    """The surrogate derivative, written out in numpy from its definition."""
    inside = np.abs(u) <= bound
    if estimator == "identity":
        keep = np.ones_like(inside)
    elif estimator == "clip":
        keep = inside
    else:  # inward: inside, or outside with a gradient whose descent step leads back in
        keep = inside | ((u > bound) & (g >= 0)) | ((u < -bound) & (g <= 0))
    return keep * g * u.dtype.type(scale)


def test_one_surrogate_per_estimator_of_the_shared_contract_in_its_order():
    assert tuple(SURROGATES) == _spec.ESTIMATORS
    assert sk.ESTIMATORS is _spec.ESTIMATORS


@pytest.mark.parametrize("estimator", _spec.ESTIMATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_surrogate_is_its_closed_form(estimator, dtype):
    rng = np.random.default_rng(0)
    bound, scale = 0.1, 7.5
    # On the bounds and a hair outside them (in float64; float32 cannot tell the two apart).
    edges = [bound, -bound, 0.0, bound * (1 + 2**-40), -bound * (1 + 2**-40)] * 2
    u = np.concatenate([rng.uniform(-0.4, 0.4, 500), edges])
    g = np.concatenate([rng.standard_normal(500), [1.0] * 5 + [-1.0] * 5])
    # As the backend holds them (JAX without x64 holds float64 as float32).
    tu, tg = ops.convert_to_tensor(u.astype(dtype)), ops.convert_to_tensor(g.astype(dtype))
    u, g = ops.convert_to_numpy(tu), ops.convert_to_numpy(tg)
    ours = ops.convert_to_numpy(SURROGATES[estimator](tu, tg, scale, bound))
    assert ours.dtype == u.dtype
    np.testing.assert_array_equal(ours, closed_form(estimator, u, g, scale, u.dtype.type(bound)))


@pytest.mark.parametrize("estimator", _spec.ESTIMATORS)
def test_the_latent_gradient_is_the_straight_through_closed_form(estimator, grads):
    values = snapset.Binary()  # half range 0.5, latent range 0.1: slope 5
    layer = sk.Multiplier(values, estimator=estimator)
    layer.build((None, 4))
    latent = np.array([-0.05, 0.08, 0.15, -0.2], "float32")  # two inside, two outside
    layer.weights[0].assign(latent)
    x = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]], "float32")
    upstream = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 9.0]], "float32")
    (grad,) = grads(layer, x, upstream)
    through = (x * upstream).sum(0) * 5.0  # [10, 15, 20, 65]
    if estimator == "identity":
        expected = through
    elif estimator == "clip":
        expected = through * [1, 1, 0, 0]
    else:  # inward: latent 0.15 with grad +20 moves back down, -0.2 with +65 further out
        expected = through * [1, 1, 1, 0]
    np.testing.assert_array_equal(grad, expected.astype("float32"))
