"""reestimate_batchnorm (Keras): moving statistics against a slow numpy reference computed from
the exact weights, channels last and first, and refusals and failures that change nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

SIZES = (5, 9, 16)  # unequal batches: each counts once in the cumulative average


def conv_bn_model(method: str) -> keras.Model:
    """Conv-BN-ReLU, dropout, Dense-BN: set-valued kernels, BatchNormalization on 4-d and 2-d
    inputs, moving statistics that training left."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            sk.Conv2D(3, 3, values=snapset.Ternary(), method=method, use_bias=False, name="conv"),
            keras.layers.BatchNormalization(name="bn2d"),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Flatten(),
            sk.Dense(4, values=snapset.Ternary(), method=method, use_bias=False, name="dense"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn1d"),
        ]
    )
    model.get_layer("bn2d").moving_mean.assign(np.full(3, 5.0, "float32"))
    model.get_layer("bn1d").moving_variance.assign(np.full(4, 7.0, "float32"))
    return model


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        (rng.normal(0.5, 1.0, (n, 6, 6, 2)).astype("float32"), np.zeros(n, "float32"))
        for n in SIZES
    ]


def numpy_of(variable: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable))


def train_mode_norm(h: np.ndarray, layer: Any) -> np.ndarray:
    """BatchNormalization as in training: the batch's mean and biased variance (last axis)."""
    axes = tuple(range(h.ndim - 1))
    scaled = (h - h.mean(axes)) / np.sqrt(h.var(axes) + layer.epsilon)
    return scaled * numpy_of(layer.gamma) + numpy_of(layer.beta)


def reference_stats(model: keras.Model, data: list[tuple[np.ndarray, np.ndarray]]) -> list:
    """The slow, obvious computation in float64: each batch through the exact weights, each
    layer's per-batch mean and biased variance, averaged over the batches."""
    exact = {key: w.astype(np.float64) for key, w in sk.exact_weights(model).items()}
    sums = [np.zeros(3), np.zeros(3), np.zeros(4), np.zeros(4)]
    for x, _ in data:
        windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (3, 3), (1, 2))
        h = np.einsum("nhwcij,ijco->nhwo", windows, exact["conv/kernel"])
        first = h.mean((0, 1, 2)), h.var((0, 1, 2))
        h = np.maximum(train_mode_norm(h, model.get_layer("bn2d")), 0).reshape(len(x), -1)
        h = h @ exact["dense/kernel"]
        for total, stat in zip(sums, (*first, h.mean(0), h.var(0)), strict=True):
            total += stat
    return [total / len(data) for total in sums]


def moving_stats(model: keras.Model) -> list[np.ndarray]:
    return [
        numpy_of(model.get_layer(name).__getattribute__(stat))
        for name in ("bn2d", "bn1d")
        for stat in ("moving_mean", "moving_variance")
    ]


def weights(model: keras.Model) -> list[np.ndarray]:
    return [numpy_of(v) for v in model.variables]


def assert_unchanged(model: keras.Model, before: list[np.ndarray]) -> None:
    for value, old in zip(weights(model), before, strict=True):
        np.testing.assert_array_equal(value, old)
    for layer in model._flatten_layers():
        assert "call" not in layer.__dict__, layer.name  # the layer's own call again


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_moving_stats_are_those_of_the_exact_weights(method: str) -> None:
    model = conv_bn_model(method)
    data = batches()
    expected = reference_stats(model, data)
    others = [numpy_of(v) for v in model.variables if "moving" not in v.path]
    returned = sk.reestimate_batchnorm(model, data)
    assert returned is model
    for value, reference in zip(moving_stats(model), expected, strict=True):
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)
    after = [numpy_of(v) for v in model.variables if "moving" not in v.path]
    for value, old in zip(after, others, strict=True):
        np.testing.assert_array_equal(value, old)
    for layer in model.layers:
        assert "call" not in layer.__dict__


def test_random_weights_would_give_other_statistics() -> None:
    # the reference is worth something: stochastic's training weights are random draws
    model = conv_bn_model("stochastic")
    x = batches()[2][0]
    conv = model.get_layer("conv")
    drawn = numpy_of(conv(x, training=True)).mean((0, 1, 2))
    exact = numpy_of(conv(x, training=False)).mean((0, 1, 2))
    assert not np.allclose(drawn, exact)


def test_batches_limits_the_data_and_dict_inputs() -> None:
    model = conv_bn_model("ste")
    data = batches()
    expected = reference_stats(model, data[:1])
    sk.reestimate_batchnorm(model, iter(data), batches=1)
    np.testing.assert_allclose(moving_stats(model)[2], expected[2], rtol=1e-5, atol=1e-5)

    named = keras.Input((2,), name="features")
    norm = keras.layers.BatchNormalization(name="bn")
    functional = keras.Model({"features": named}, norm(named))
    x = np.array([[1.0, 2.0], [3.0, 6.0]], "float32")
    sk.reestimate_batchnorm(functional, [{"features": x}])
    assert numpy_of(norm.moving_mean).tolist() == [2.0, 4.0]
    assert numpy_of(norm.moving_variance).tolist() == [1.0, 4.0]


def test_channels_first_axis_and_a_frozen_layer() -> None:
    # trainable=False: Keras's training keeps its statistics, but this call re-estimates them
    frozen = keras.layers.BatchNormalization(axis=1, trainable=False)
    model = keras.Sequential([keras.Input((3, 5)), frozen])
    rng = np.random.default_rng(2)
    data = [rng.normal(1.0, 2.0, (n, 3, 5)).astype("float32") for n in SIZES]
    sk.reestimate_batchnorm(model, data)
    norm = model.layers[0]
    means = np.mean([x.mean((0, 2), dtype=np.float64) for x in data], 0)
    variances = np.mean([x.var((0, 2), dtype=np.float64) for x in data], 0)
    np.testing.assert_allclose(numpy_of(norm.moving_mean), means, rtol=1e-6)
    np.testing.assert_allclose(numpy_of(norm.moving_variance), variances, rtol=1e-6)


def test_a_layer_no_batch_reaches_is_reset() -> None:
    class TwoNorms(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.used = keras.layers.BatchNormalization()
            self.unused = keras.layers.BatchNormalization()

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            return self.used(inputs, training=training)

    model = TwoNorms()
    x = np.ones((4, 2), "float32")
    model.unused.build((None, 2))
    model(x)
    model.unused.moving_variance.assign(np.full(2, 9.0, "float32"))
    sk.reestimate_batchnorm(model, [x])
    assert numpy_of(model.unused.moving_mean).tolist() == [0.0, 0.0]
    assert numpy_of(model.unused.moving_variance).tolist() == [1.0, 1.0]


def test_a_failure_midway_changes_nothing() -> None:
    model = conv_bn_model("gumbel")
    before = weights(model)

    def data() -> Any:
        yield from batches()
        raise RuntimeError("the loader broke")

    with pytest.raises(RuntimeError, match="the loader broke"):
        sk.reestimate_batchnorm(model, data())
    assert_unchanged(model, before)


def test_a_masked_input_is_refused() -> None:
    tokens = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(10, 3, mask_zero=True)(tokens)
    model = keras.Model(tokens, keras.layers.BatchNormalization(name="bn")(embedded))
    before = weights(model)
    with pytest.raises(ValueError, match="BatchNormalization 'bn' from a masked input"):
        sk.reestimate_batchnorm(model, [np.array([[1, 2, 0, 0]], "int32")])
    assert_unchanged(model, before)


def test_the_refusals_change_nothing() -> None:
    model = conv_bn_model("ste")
    before = weights(model)
    for data, batches_, error, message in [
        ([], None, ValueError, "got no batch from data"),
        (batches(), 0, ValueError, "Invalid batches: 0"),
        (batches(), 1.5, TypeError, "Invalid batches: 1.5"),
        ([()], None, ValueError, "empty tuple as a batch"),
    ]:
        with pytest.raises(error, match=message):
            sk.reestimate_batchnorm(model, data, batches=batches_)
        assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([keras.layers.Dense(2)], "found no BatchNorm layer in model 'm'"),
        (
            [keras.layers.BatchNormalization(renorm=True, name="bn")],
            "BatchNormalization 'bn': batch renormalization",
        ),
    ],
)
def test_models_it_cannot_reestimate(layers: list[Any], message: str) -> None:
    model = keras.Sequential([keras.Input((2,)), *layers], name="m")
    before = weights(model)
    with pytest.raises(ValueError, match=message):
        sk.reestimate_batchnorm(model, [np.ones((4, 2), "float32")])
    assert_unchanged(model, before)


def test_an_unbuilt_model_is_refused() -> None:
    model = keras.Sequential([keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ValueError, match="BatchNormalization 'bn': it is not built yet"):
        sk.reestimate_batchnorm(model, [np.ones((4, 2), "float32")])
    assert not model.built


def test_both_fronts_refuse_with_the_same_words() -> None:
    torch = pytest.importorskip("torch")
    import snapset.torch as st

    keras_model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    torch_model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    for data, batches_ in [([], None), ([np.ones((4, 2), "float32")], 0), ([[]], None)]:
        messages = []
        for front, model in ((sk, keras_model), (st, torch_model)):
            with pytest.raises(ValueError) as error:
                front.reestimate_batchnorm(model, data, batches=batches_)
            messages.append(str(error.value))
        assert messages[0] == messages[1]


def test_an_optimizer_that_averages_ends_fit_with_the_averaged_latents_in_exact_values():
    # the constant-rate recipe (the oscillation page): Keras' optimizers keep the average
    # themselves (use_ema), fit writes it into the latents, the values stay members
    model = conv_bn_model("ste")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6, 6, 2)).astype("float32"), rng.integers(0, 4, 64)
    optimizer = keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    latent = next(v for v in model.trainable_variables if v.path.endswith("kernel_latent"))
    average = optimizer._model_variables_moving_average[optimizer._get_variable_index(latent)]
    np.testing.assert_array_equal(np.asarray(latent), np.asarray(average))
    sk.reestimate_batchnorm(model, [x[:32], x[32:]])
    for name, weight in sk.exact_weights(model).items():
        assert set(np.unique(weight).tolist()) <= {-1.0, 0.0, 1.0}, name
