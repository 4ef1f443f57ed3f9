"""The layers: exact values, Keras' own arithmetic, gradients, inits, configs, bad input."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])


def as_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize("method", sk.METHODS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_computes_what_keras_dense_computes_with_the_exact_kernel(method, use_bias):
    x = np.random.default_rng(0).standard_normal((5, 7)).astype("float32")
    ours = sk.Dense(4, FOUR, method, activation="tanh", use_bias=use_bias)
    y = as_numpy(ours(x))
    reference = keras.layers.Dense(4, activation="tanh", use_bias=use_bias)
    reference.build((None, 7))
    exact = ours.exact_weights()["kernel"]
    reference.set_weights([exact, ours.get_weights()[1]] if use_bias else [exact])
    np.testing.assert_array_equal(y, as_numpy(reference(x)))
    assert tuple(ours.compute_output_shape((None, 7))) == (None, 4)


CONVS = [
    (sk.Conv1D, keras.layers.Conv1D, (2, 11, 3), dict(kernel_size=3)),
    (sk.Conv1D, keras.layers.Conv1D, (2, 11, 3), dict(kernel_size=4, strides=2, padding="same")),
    (sk.Conv1D, keras.layers.Conv1D, (2, 11, 3), dict(kernel_size=2, dilation_rate=3)),
    (sk.Conv2D, keras.layers.Conv2D, (2, 9, 8, 3), dict(kernel_size=(3, 2))),
    (sk.Conv2D, keras.layers.Conv2D, (2, 9, 8, 3), dict(kernel_size=3, strides=2, padding="same")),
    (
        sk.Conv2D,
        keras.layers.Conv2D,
        (2, 3, 9, 8),
        dict(kernel_size=3, data_format="channels_first"),
    ),
]


@pytest.mark.parametrize(("ours_cls", "keras_cls", "shape", "options"), CONVS)
def test_conv_computes_what_keras_conv_computes_with_the_exact_kernel(
    ours_cls, keras_cls, shape, options
):
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ours = ours_cls(5, values=FOUR, **options)
    y = as_numpy(ours(x))
    reference = keras_cls(5, **options)
    reference.build(shape)
    reference.set_weights([ours.exact_weights()["kernel"], ours.get_weights()[1]])
    np.testing.assert_allclose(y, as_numpy(reference(x)), rtol=1e-6, atol=1e-6)
    assert tuple(ours.compute_output_shape(shape)) == y.shape


def test_a_flip_weight_passes_its_gradient_unchanged(grads):
    layer = sk.Multiplier(FOUR, "flip")
    x = np.random.default_rng(2).standard_normal((3, 6)).astype("float32")
    upstream = np.ones((3, 6), "float32")
    (grad,) = grads(layer, x, upstream) if layer.built else grads(_built(layer, 6), x, upstream)
    np.testing.assert_allclose(grad, x.sum(0), rtol=1e-6)


def _built(layer, features):
    layer.build((None, features))
    return layer


def test_stochastic_rounding_is_unbiased_between_neighbours_and_nearest_in_inference():
    layer = _built(sk.Multiplier(FOUR, "stochastic", seed=7), 3)
    # Values 0.75, -0.625 and 1.0 on the value scale, as latents (range 0.1 maps to [-1, 1]).
    layer.weights[0].assign(np.array([0.075, -0.0625, 0.1], "float32"))
    ones = np.ones((1, 3), "float32")
    # One draw per forward pass, as in the PyTorch front.
    draws = np.concatenate([as_numpy(layer(ones, training=True)) for _ in range(300)])
    assert set(np.unique(draws[:, 0])) == {0.5, 1.0}
    assert set(np.unique(draws[:, 1])) == {-1.0, -0.5}
    assert set(np.unique(draws[:, 2])) == {1.0}
    np.testing.assert_allclose(draws.mean(0), [0.75, -0.625, 1.0], atol=0.06)  # 4 sigma
    np.testing.assert_array_equal(as_numpy(layer(ones)), [[1.0, -0.5, 1.0]])


@pytest.mark.parametrize("values", [snapset.Binary(), snapset.Ternary(), FOUR], ids=repr)
def test_spread_init_uses_every_value_equally_and_nearest_keeps_the_values(values):
    layer = sk.Dense(6, values)
    layer.build((None, 10))
    counts = np.unique(layer.exact_weights()["kernel"], return_counts=True)[1]
    assert len(counts) == len(values) and counts.max() - counts.min() <= 1
    start = keras.initializers.Constant(values.values[-1])
    kept = _built(sk.Multiplier(values, init="nearest", kernel_initializer=start), 5)
    assert kept.exact_weights()["kernel"].tolist() == [values.values[-1]] * 5


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: sk.Dense(2, [0, 1], "stee"),
            ValueError,
            r"Unknown method 'stee'; valid methods: 'ste', 'stochastic', 'gumbel', 'flip'",
        ),
        (lambda: sk.Dense(0, [0, 1]), ValueError, r"Invalid units: 0"),
        (
            lambda: sk.Dense(2, [0, 1], use_bias=False, bias_values=[0, 1]),
            ValueError,
            "bias_values needs use_bias=True",
        ),
        (
            lambda: sk.Dense(2, [0, 1], "ste", seed=1),
            ValueError,
            r"Option 'seed' does not apply to method 'ste'",
        ),
        (
            lambda: sk.Conv2D(2, 3, [0, 1], padding="causal"),
            ValueError,
            r"Invalid padding: 'causal'",
        ),
        (lambda: sk.Conv2D(2, (3, 3, 3), [0, 1]), ValueError, r"Invalid kernel_size: \(3, 3, 3\)"),
        (
            lambda: sk.Conv1D(2, 3, [0, 1], data_format="nhwc"),
            ValueError,
            r"Invalid data_format: 'nhwc'",
        ),
        (lambda: sk.FlipRatio(every="step"), ValueError, r"Invalid every: 'step'"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 1.0001], r"ValueSet\(\[1, 1.0001\]\) cannot be told apart in float16: 1.0 and 1.0001"),
        ([0, 1e5], r"does not fit in float16: a value overflows"),
    ],
)
def test_a_dtype_that_merges_values_is_refused_and_nothing_is_built(values, message):
    layer = sk.Dense(2, values, dtype="float16")
    with pytest.raises(ValueError, match=message):
        layer.build((None, 3))
    assert layer.weights == []


def test_an_unknown_feature_count_is_refused():
    with pytest.raises(ValueError, match="Multiplier needs a known size of the input's last axis"):
        sk.Multiplier([0, 1]).build((None, None))


@pytest.mark.parametrize("method", sk.METHODS)
def test_mixed_precision_computes_in_float16_with_exact_values_and_float32_storage(method):
    layer = sk.Dense(3, FOUR, method, dtype="mixed_float16")
    x = np.random.default_rng(3).standard_normal((4, 5)).astype("float32")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert [w.dtype for w in layer.weights] == ["float32", "float32"]
    exact = layer.exact_weights()["kernel"]
    assert set(np.unique(exact)) == {-1.0, -0.5, 0.5, 1.0}
    expected = x.astype("float16") @ exact.astype("float16") + layer.get_weights()[1].astype(
        "float16"
    )
    np.testing.assert_allclose(as_numpy(y).astype("float32"), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", sk.METHODS)
def test_a_subclassed_model_builds_its_layers_inside_fit(method):
    # TensorFlow and JAX build such a model while tracing: the init must not need numpy.
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = sk.Dense(3, FOUR, method)
            self.multiplier = sk.Multiplier([-1, 1], method)

        def call(self, inputs, training=None):
            return self.multiplier(self.dense(inputs, training=training), training=training)

    model = Model()
    optimizer = sk.Router(flip=sk.Bop(), default="adam") if method == "flip" else "adam"
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(4).standard_normal((32, 4)).astype("float32")
    model.fit(x, x[:, :3], epochs=1, verbose=0)
    weights = sk.exact_weights(model)
    dense, multiplier = model.dense.name, model.multiplier.name
    assert set(np.unique(weights[f"{dense}/kernel"])) <= {-1.0, -0.5, 0.5, 1.0}
    assert weights[f"{dense}/kernel"].shape == (4, 3)
    assert set(np.unique(weights[f"{multiplier}/kernel"])) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    ("method", "given", "options"),
    [
        ("ste", {}, {"estimator": "inward", "latent_range": 0.1, "dither": 0.0, "seed": None}),
        (
            "stochastic",
            {"estimator": "clip", "seed": 4},
            {"estimator": "clip", "latent_range": 0.1, "dither": 1.0, "seed": 4},
        ),
        ("flip", {}, {}),
        (None, {}, {}),
    ],
)
def test_the_config_holds_the_method_and_its_options_with_their_defaults(method, given, options):
    layer = sk.Multiplier(FOUR, method, init="nearest", **given)
    config = layer.get_config()
    assert {k: config[k] for k in ("values", "method", "init")} == {
        "values": [-1.0, -0.5, 0.5, 1.0],
        "method": method,
        "init": "nearest",
    }
    keys = ("estimator", "latent_range", "dither", "seed")
    assert {k: config[k] for k in keys if k in config} == options
    assert layer.options == options


def test_a_layer_with_method_none_has_plain_weights_used_as_they_are():
    start = keras.initializers.Constant(0.3)  # not in the set, and left so
    layer = sk.Dense(2, FOUR, None, kernel_initializer=start, bias_initializer="ones")
    x = np.random.default_rng(5).standard_normal((3, 4)).astype("float32")
    y = as_numpy(layer(x))
    assert [v.name for v in layer.weights] == ["kernel", "bias"]
    np.testing.assert_array_equal(layer.get_weights()[0], np.full((4, 2), 0.3, "float32"))
    np.testing.assert_allclose(y, x @ np.full((4, 2), 0.3, "float32") + 1, rtol=1e-6)
    assert layer.exact_weights() == {} and sk.exact_weights(layer) == {}
    np.testing.assert_array_equal(as_numpy(layer.kernel), layer.get_weights()[0])
    clone = sk.Dense.from_config(layer.get_config())
    assert clone.method is None and clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Option 'estimator' needs a method; method=None"):
        sk.Dense(2, FOUR, None, estimator="clip")
