"""Discrete activations in Keras: Quantize and quantize, against numpy references built from
codes and scales, BinaryNet's and LSQ's gradients, BitNet's int8, compiled learned scales."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops

import snapset  # noqa: E402
from snapset._scales import STATISTIC_FLOOR, ActivationScaling, scale_unit  # noqa: E402
from snapset.keras._quantize import Quantize, quantize, statistic  # noqa: E402

INT8 = snapset.ValueSet(range(-128, 128))
SETS = [snapset.Sign(), snapset.Ternary(), snapset.Binary(), INT8, snapset.ValueSet([-1, 0.5, 2])]


def numpy_of(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def reference_scales(x, scale, feature_axis, values):
    """The scales the quantizer computes, after checking them against the statistic in float32
    (``max|x| / unit``, floored): equal, but for XLA on the CPU (JAX), which divides by a
    broadcast scalar as a product by its reciprocal, 1 ulp off at most."""
    layout = ActivationScaling.of(scale, None).layout(x.shape, feature_axis)
    peak = np.abs(x).max(axis=layout.reduce_axes, keepdims=True)
    expected = np.maximum(peak / np.float32(scale_unit(values)), np.float32(STATISTIC_FLOOR))
    alpha = numpy_of(statistic(ops.convert_to_tensor(x), layout, values))
    if keras.backend.backend() == "jax":
        np.testing.assert_array_max_ulp(alpha, expected, maxulp=1)
    else:
        np.testing.assert_array_equal(alpha, expected)
    return alpha


def assert_members_times(out, values, alpha):
    """``out`` is ``v * alpha`` with ``v`` a member of ``values``, each product in float32:
    checked without dividing, by the products of every member."""
    table = np.asarray(values.values, "float32")
    products = np.broadcast_to(alpha, out.shape)[..., None] * table
    assert (products == out[..., None]).any(-1).all()


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize(("scale", "feature_axis"), [("tensor", -1), ("token", -1), ("channel", 1)])
def test_outputs_are_exactly_scaled_members_and_the_nearest_ones(values, scale, feature_axis):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 5)) * 3).astype("float32")
    x[0, 0] = 0.0  # an all-zero token: its scale is the floor
    layer = Quantize(values, scale=scale, feature_axis=feature_axis)
    out = numpy_of(layer(x))
    alpha = reference_scales(x, scale, feature_axis, values)
    assert_members_times(out, values, alpha)
    # The nearest members (a tie goes up), but where float32's order of operations may choose
    # the other neighbour: within 1e-4 (on the set's own scale) of a boundary, not on it.
    on_set = x.astype(np.float64) / alpha
    nearest = values.project(on_set)
    distance = np.abs(on_set[..., None] - np.asarray(values.midpoints))
    near_boundary = ((distance > 0) & (distance < 1e-4)).any(-1)
    np.testing.assert_array_equal(
        (out == (nearest * alpha).astype("float32"))[~near_boundary], True
    )
    assert near_boundary.sum() <= 2


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_unscaled_and_static_outputs_are_the_members_themselves(values):
    x = np.random.default_rng(1).uniform(-3, 3, (6, 7)).astype("float32")
    out = numpy_of(quantize(x, values))
    np.testing.assert_array_equal(out, values.project(x).astype("float32"))
    static = numpy_of(quantize(x, values, scale=0.25))
    assert_members_times(static, values, np.float32(0.25))
    assert set(np.unique(static / np.float32(0.25))) <= set(values.values)


def test_sign_with_clip_has_binarynets_gradient(fgrad):
    x = np.array([-3.0, -1.0, -0.999, -0.2, 0.0, 0.4, 1.0, 1.001, 2.5], "float32")
    upstream = np.arange(1, 10, dtype="float32")
    out, grad = fgrad(lambda t: quantize(t, snapset.Sign()), x, upstream)
    np.testing.assert_array_equal(out, [-1, -1, -1, -1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(grad, upstream * (np.abs(x) <= 1))


def test_the_layer_gives_the_same_values_and_gradient(fgrad):
    x = np.random.default_rng(2).uniform(-2, 2, (3, 8)).astype("float32")
    upstream = np.random.default_rng(3).standard_normal((3, 8)).astype("float32")
    layer = Quantize(snapset.Sign())
    out, grad = fgrad(lambda t: layer(t, training=True), x, upstream)
    np.testing.assert_array_equal(out, np.where(x >= 0, 1.0, -1.0))
    # The slope 1 is float32's 10 * 0.1 (the value per latent, the latent per input): 1 ulp.
    np.testing.assert_allclose(grad, upstream * (np.abs(x) <= 1), rtol=2e-7, atol=0)


def test_int8_per_token_absmax_equals_bitnets_reference():
    """BitNet b1.58's activation quantizer, ``round(x * 127 / max|x|).clip(-128, 127) *
    max|x| / 127`` per token, in float32. snapset computes ``v * (max|x| / 127)`` with ``v``
    chosen on its latent scale; we compare the integers ``v`` exactly wherever ``x * 127 /
    max|x|`` lies more than 1e-4 from a rounding boundary (there the two orders of float32
    operations may round to the other neighbour; it happens for a handful of the 8192 entries),
    and the outputs to float32 precision (the reference multiplies before it divides)."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((8, 16, 64)) * rng.uniform(0.1, 10, (8, 16, 1))).astype("float32")
    out = numpy_of(quantize(x, INT8, scale="token"))
    alpha = reference_scales(x, "token", -1, INT8)
    peak = np.abs(x).max(-1, keepdims=True)
    scaled = x * np.float32(127) / peak
    reference_codes = np.clip(np.round(scaled), -128, 127)
    reference = reference_codes * peak / np.float32(127)
    codes = out / alpha
    boundary = np.abs(np.abs(scaled.astype(np.float64) % 1) - 0.5) < 1e-4
    np.testing.assert_array_equal(np.round(codes)[~boundary], reference_codes[~boundary])
    assert boundary.sum() < 10
    np.testing.assert_allclose(out[~boundary], reference[~boundary], rtol=3e-7, atol=0)
    assert_members_times(out, INT8, alpha)


def test_int8_codes_are_integers_in_range_and_the_peak_reaches_127():
    x = np.array([[0.5, -4.0, 2.0, 0.0]], "float32")
    out = numpy_of(quantize(x, INT8, scale="token"))
    np.testing.assert_array_equal(out / np.float32(4.0 / 127), [[16, -127, 64, 0]])


def test_stochastic_draws_neighbours_while_training_and_the_nearest_in_inference():
    layer = Quantize(snapset.Ternary(), "stochastic", seed=3)
    x = np.full((4000,), 0.25, "float32")
    drawn = numpy_of(layer(x, training=True))
    assert set(np.unique(drawn)) == {0.0, 1.0}
    assert abs(drawn.mean() - 0.25) < 0.03  # unbiased: E[v] = x inside the range
    np.testing.assert_array_equal(numpy_of(layer(x, training=False)), np.zeros(4000))
    again = Quantize(snapset.Ternary(), "stochastic", seed=3)
    np.testing.assert_array_equal(numpy_of(again(x, training=True)), drawn)


def test_float16_inputs_give_float16_members():
    x = np.array([[-0.7, 0.2, 3.0]], "float16")
    out = quantize(x, snapset.Ternary(), scale="tensor")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_array_equal(numpy_of(out) / np.float16(3.0), [[0.0, 0.0, 1.0]])


# ----- learned scales ----------------------------------------------------------------------------


def test_a_learned_scale_holds_one_until_the_first_training_call_sets_its_statistic():
    layer = Quantize(snapset.Ternary(), scale="channel", scale_mode="learned")
    x = np.array([[0.5, -4.0, 1.0], [2.0, 1.0, -0.25]], "float32")
    layer(x)  # inference: no start yet
    np.testing.assert_array_equal(layer.alpha, [1.0, 1.0, 1.0])
    out = numpy_of(layer(x, training=True))
    np.testing.assert_array_equal(layer.alpha, [2.0, 4.0, 1.0])
    np.testing.assert_array_equal(out, [[0.0, -4.0, 1.0], [2.0, 0.0, -0.0]])
    layer(x * 10, training=True)  # only the first training call starts it
    np.testing.assert_array_equal(layer.alpha, [2.0, 4.0, 1.0])


def test_a_learned_scale_gets_lsqs_gradient(grads):
    # LSQ: d out / d alpha = v - x / alpha inside the range, v outside, summed over the group;
    # the trained log gain gets it times alpha (alpha = start * exp(log_gain)).
    layer = Quantize(snapset.Ternary(), scale="tensor", scale_mode="learned")
    x = np.array([[0.3, -1.4, 2.0, 5.0, -0.6]], "float32")
    layer(x / 2.5, training=True)  # starts at max|x / 2.5| = 2
    upstream = np.array([[1.0, 2.0, -1.0, 0.5, 3.0]], "float32")
    (grad,) = grads(layer, x, upstream)
    on_set = x / 2.0
    v = np.clip(np.round(on_set), -1, 1)
    expected = np.where(np.abs(on_set) <= 1, v - on_set, v)
    np.testing.assert_allclose(grad, 2.0 * (upstream * expected).sum(), rtol=1e-6)


def test_learned_channel_scales_start_and_train_in_compiled_fit():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 6)).astype("float32") * np.arange(1, 7, dtype="float32")
    y = rng.standard_normal((64, 2)).astype("float32")
    quantizer = Quantize(snapset.Ternary(), scale="channel", scale_mode="learned", name="q")
    model = keras.Sequential([keras.Input((6,)), quantizer, keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile="auto")
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(quantizer.scale_start), np.abs(x[:32]).max(0)
    )
    log_gain = ops.convert_to_numpy(quantizer.scale_log_gain)
    assert np.all(log_gain != 0)  # trained from the first step on
    model.fit(x[32:], y[32:], batch_size=32, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(quantizer.scale_start), np.abs(x[:32]).max(0)
    )
    assert np.all(ops.convert_to_numpy(quantizer.scale_log_gain) != log_gain)


def test_a_step_moves_a_learned_scale_by_a_factor_and_a_bad_one_puts_it_back_to_its_start():
    layer = Quantize(snapset.Sign(), scale="channel", scale_mode="learned")
    layer(np.array([[1.0, -3.0]], "float32"), training=True)
    optimizer = keras.optimizers.SGD(1.0)
    # a step of 5 on alpha itself would have made the first scale 1 - 5 = -4
    optimizer.apply([ops.convert_to_tensor([5.0, -0.5])], [layer.scale_log_gain])
    np.testing.assert_allclose(layer.alpha, [np.exp(-5.0), 3.0 * np.exp(0.5)], rtol=1e-6)
    assert np.all(layer.alpha > 0)
    # NaN, inf, and a log gain whose exp() overflows float32 go back to 0: alpha to its start
    step = ops.convert_to_tensor([np.nan, -100.0])
    optimizer.apply([step], [layer.scale_log_gain])
    np.testing.assert_array_equal(layer.alpha, [1.0, 3.0])
    optimizer.apply([ops.convert_to_tensor([np.inf, 0.0])], [layer.scale_log_gain])
    np.testing.assert_array_equal(layer.alpha, [1.0, 3.0])


def test_save_and_load_give_identical_outputs(tmp_path):
    x = np.random.default_rng(6).standard_normal((5, 4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            Quantize(INT8, scale="token", name="int8"),
            Quantize(snapset.Ternary(), scale="channel", scale_mode="learned", name="learned"),
            Quantize(snapset.Sign(), "stochastic", seed=2, name="sign"),
        ]
    )
    model(x, training=True)
    model.get_layer("learned").scale_log_gain.assign([-0.5, 0.25, 2.0, 0.0])
    model.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(numpy_of(loaded(x)), numpy_of(model(x)))
    np.testing.assert_array_equal(
        loaded.get_layer("learned").alpha, model.get_layer("learned").alpha
    )
    config = loaded.get_layer("sign").get_config()
    assert (config["method"], config["seed"], config["values"]) == ("stochastic", 2, [-1.0, 1.0])


@pytest.mark.parametrize(
    ("part", "bad"),
    [
        ("start", -1.0),
        ("start", 0.0),
        ("start", np.nan),
        ("start", np.inf),
        ("log_gain", np.nan),
        ("log_gain", 100.0),  # exp() overflows
        ("log_gain", -120.0),  # exp() vanishes
    ],
)
def test_a_file_with_a_bad_learned_scale_is_refused_and_the_layer_kept(
    part, bad, tmp_path, archive
):
    x = np.array([[0.5, -2.0]], "float32")
    model = keras.Sequential(
        [keras.Input((2,)), Quantize(snapset.Sign(), scale="channel", scale_mode="learned")]
    )
    model(x, training=True)
    model.save(tmp_path / "good.keras")
    edited = archive(tmp_path / "good.keras")
    # the trainable log gain is saved first, then the start
    index = {"log_gain": 0, "start": 1}[part]
    (held,) = [name for name in edited.weights if name.endswith(f"vars/{index}")]
    edited.weights[held] = np.array([1.0, bad], "float32")
    edited.write(tmp_path / "bad.keras")
    with pytest.raises(ValueError, match=r"hold 1 entry that (is|are) not finite and > 0"):
        model.load_weights(tmp_path / "bad.keras")
    np.testing.assert_array_equal(model.layers[0].alpha, [0.5, 2.0])


def test_a_functional_model_with_an_unknown_batch_size_builds_and_runs():
    inputs = keras.Input((3, 4))
    outputs = Quantize(snapset.Ternary(), scale="token")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(7).standard_normal((2, 3, 4)).astype("float32")
    assert_members_times(
        numpy_of(model(x)), snapset.Ternary(), reference_scales(x, "token", -1, snapset.Ternary())
    )


# ----- refusals ----------------------------------------------------------------------------------


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match=r"got a tensor of int32: cast it to a float dtype"):
        quantize(np.array([1, 2], "int32"), snapset.Sign())
    with pytest.raises(TypeError, match=r"Quantize quantizes float activations"):
        Quantize(snapset.Sign())(np.array([[1, 2]], "int64"))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"method": "gumbel"}, ValueError, r"Method 'gumbel' is not available in snapset\.keras"),
        ({"method": "nope"}, ValueError, r"Unknown method 'nope'"),
        ({"estimator": "nope"}, ValueError, r"Unknown estimator 'nope'"),
        ({"seed": 3}, ValueError, r"Option 'seed' does not apply to method 'ste'"),
        ({"scale": "token", "scale_mode": "learned"}, ValueError, r"no parameter can hold"),
        ({"scale_mode": "absmax"}, ValueError, r"needs a scale"),
        ({"scale": "row"}, ValueError, r"Unknown scale 'row'"),
        ({"scale": -1.0}, ValueError, r"not finite and > 0"),
        ({"scale": 0.5, "scale_mode": "absmax"}, ValueError, r"static scale"),
        ({"feature_axis": 1.0}, TypeError, r"Invalid feature_axis"),
    ],
)
def test_bad_options_are_refused_with_the_cores_words(options, error, message):
    with pytest.raises(error, match=message):
        Quantize(snapset.Sign(), **options)
    with pytest.raises(error, match=message):
        quantize(np.ones(2, "float32"), snapset.Sign(), **options)


def test_the_function_refuses_a_learned_scale_and_names_the_layer():
    with pytest.raises(ValueError, match=r"use the layer snapset\.keras\.Quantize"):
        quantize(np.ones(2, "float32"), snapset.Sign(), scale="tensor", scale_mode="learned")


def test_a_feature_axis_outside_the_input_is_refused():
    with pytest.raises(ValueError, match=r"feature_axis=2 is not an axis of an input of shape"):
        quantize(np.ones((2, 3), "float32"), snapset.Sign(), scale="channel", feature_axis=2)


def test_learned_channels_need_a_known_feature_size():
    layer = Quantize(snapset.Sign(), scale="channel", scale_mode="learned")
    with pytest.raises(ValueError, match=r"needs a known size of the input's axis -1"):
        layer.build((None, None))
