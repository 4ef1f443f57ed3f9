"""The methods: one class each, the protocol every one answers, and the record a constrained
variable carries."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402
from snapset.keras._methods import method_of  # noqa: E402

SETS = [
    snapset.Binary(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.7, 3, 100]),
]


def test_the_keras_methods_by_name_each_with_its_spec():
    assert list(sk.METHODS) == list(_spec.METHODS)  # all of snapset's, in the same order
    assert dict(sk.METHODS) == {
        "ste": sk.STE,
        "stochastic": sk.StochasticRounding,
        "gumbel": sk.GumbelSoftmax,
        "flip": sk.Flip,
    }
    for name, cls in sk.METHODS.items():
        method = cls(snapset.Sign(), "float32", "kernel")
        assert (method.method, method.stores) == (name, _spec.METHODS[name].stores)
        assert method.options == dict(_spec.METHODS[name].options)  # the defaults


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_stored_values_come_back_exactly_with_their_codes(values, method):
    m = sk.METHODS[method](values, "float32", "kernel")
    wanted = np.asarray(values.values, "float32")[np.arange(12) % len(values)]
    stored = m.right_inverse(ops.convert_to_tensor(wanted))
    np.testing.assert_array_equal(ops.convert_to_numpy(m.hard(stored)), wanted)
    np.testing.assert_array_equal(ops.convert_to_numpy(m.codes(stored)), values.encode(wanted))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(m.decode(m.codes(stored))), ops.convert_to_numpy(m.hard(stored))
    )
    # Inference computes with the hard values; so does training, but for stochastic rounding.
    inference = m.value(stored, False, keras.random.SeedGenerator(0))
    np.testing.assert_array_equal(ops.convert_to_numpy(inference), wanted)


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_what_is_stored_and_its_name(values, method):
    m = sk.METHODS[method](values, "float32", "bias")
    x = np.linspace(values.values[0] - 1, values.values[-1] + 1, 41).astype("float32")
    stored = ops.convert_to_numpy(m.right_inverse(ops.convert_to_tensor(x)))
    if m.stores == "values":  # the nearest members, ties up
        assert m.stored_name == "bias"
        np.testing.assert_array_equal(stored, values.project(x).astype("float32"))
    elif m.stores == "logits":  # one logit per value, peaked at the nearest (ties up)
        assert m.stored_name == "bias_logits"
        assert stored.shape == (41, len(values)) == m.stored_shape((41,))
        assert m.value_shape(stored.shape) == (41,)
        table = values.tables("float32").values.astype("float32")
        scale = -_spec.GUMBEL_SHARPNESS * 0.1 / values.half_range**2
        expected = (x[:, None] - table) ** 2 * np.float32(scale)
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_array_equal(
            ops.convert_to_numpy(m.hard(stored)), values.project(x).astype("float32")
        )
    else:  # the latents: the set's range on [-latent_range, latent_range]
        assert m.stored_name == "bias_latent"
        expected = (x - values.center) * (0.1 / values.half_range)
        np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(
            ops.convert_to_numpy(m.hard(stored)), values.project(x).astype("float32")
        )


def test_the_tables_are_in_the_variables_dtype_and_refuse_one_that_merges_values():
    assert sk.STE(snapset.Ternary(), "bfloat16", "kernel").tables.dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"cannot be told apart in float16: 1.0 and 1.0001"):
        sk.Flip(snapset.ValueSet([1, 1.0001]), "float16", "kernel")


def test_options_are_checked_and_completed_and_shown():
    ste = sk.STE(snapset.Sign(), "float32", "kernel", estimator="clip")
    assert ste.options == {"estimator": "clip", "latent_range": 0.1, "dither": 0.0, "seed": None}
    assert repr(ste) == (
        "STE(ValueSet([-1, 1]), 'float32', 'kernel', estimator='clip', latent_range=0.1, "
        "dither=0.0, seed=None)"
    )
    with pytest.raises(ValueError, match="Option 'seed' does not apply to method 'ste'"):
        sk.STE(snapset.Sign(), "float32", "kernel", seed=1)
    flip = sk.Flip(snapset.Sign(), "float32", "w")
    assert repr(flip) == "Flip(ValueSet([-1, 1]), 'float32', 'w')"


def test_stochastic_rounding_draws_from_the_generator_and_rounds_to_nearest_in_inference():
    rounding = sk.StochasticRounding(snapset.Sign(), "float32", "kernel")
    u = ops.convert_to_tensor(np.full(2000, 0.05, "float32"))  # value 0.5: p_up 3/4
    first = ops.convert_to_numpy(rounding.value(u, True, keras.random.SeedGenerator(1)))
    again = ops.convert_to_numpy(rounding.value(u, True, keras.random.SeedGenerator(1)))
    np.testing.assert_array_equal(first, again)  # the generator decides
    assert set(np.unique(first)) == {-1.0, 1.0}
    assert abs(first.mean() - 0.5) < 4 * np.sqrt(0.75 / 2000)  # E[q] = w, within 4 sigma
    np.testing.assert_array_equal(ops.convert_to_numpy(rounding.value(u, False, None)), 1.0)


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_each_variable_of_a_layer_records_its_method_and_hardening_removes_it(method):
    layer = sk.Dense(3, [0, 1], method, bias_values=[-1, 1])
    layer.build((None, 4))
    kernel, bias = layer.weights
    assert (method_of(kernel).weight, method_of(bias).weight) == ("kernel", "bias")
    assert method_of(kernel).values == snapset.Binary()
    assert method_of(bias).values == snapset.Sign()
    flips = method == "flip"
    assert sk.flip_values(kernel) == (snapset.Binary() if flips else None)
    layer.harden()
    assert method_of(kernel) is None and method_of(bias) is None
    assert sk.flip_values(kernel) is None
    with pytest.raises(ValueError, match=r"Weight 'kernel' of layer '\w+' has no constraint"):
        layer.set_value_set("kernel")


@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_dither_draws_only_within_its_band_around_each_threshold(method):
    """As in PyTorch: values [-1, 0, 2], dither 0.5, a quarter of each gap on either side of
    a threshold draws at random, linearly; inference takes the nearest value."""
    rounding = sk.METHODS[method](snapset.ValueSet([-1, 0, 2]), "float32", "kernel", dither=0.5)
    point = np.array([-0.8, -0.625, 1.0, 1.6, 1.25, -0.2], np.float32)
    latent = rounding.right_inverse(ops.convert_to_tensor(np.repeat(point[None], 20000, 0)))
    draws = ops.convert_to_numpy(rounding.value(latent, True, keras.random.SeedGenerator(0)))
    up = [(draws[:, i] == high).mean() for i, high in enumerate([0, 0, 2, 2, 2, 0])]
    assert up[0] == 0 and up[3] == 1 and up[5] == 1  # outside the bands: the nearest value
    assert up[1] == pytest.approx(0.25, abs=0.02)
    assert up[2] == pytest.approx(0.5, abs=0.02)
    assert up[4] == pytest.approx(0.75, abs=0.02)
    nearest = ops.convert_to_numpy(rounding.value(latent, False, None))[0]
    assert nearest.tolist() == [-1.0, -1.0, 2.0, 2.0, 2.0, 0.0]


def test_a_layer_draws_from_a_generator_only_where_its_method_draws():
    assert sk.Dense(2, snapset.Sign()).seed_generator is None
    assert sk.Dense(2, snapset.Sign(), dither=0.25, seed=1).seed_generator is not None
    assert sk.Dense(2, snapset.Sign(), "stochastic").seed_generator is not None
    assert sk.Dense(2, snapset.Sign(), "stochastic", dither=0.0).seed_generator is None
