"""Exact weights, harden_, get_config / from_config and the .keras round trip."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

FOUR = [1, -1, 0.5, -0.5]


def mixed_model(method):
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((12, 3)),
            sk.Conv1D(4, 3, FOUR, method, padding="same", name="conv1d"),
            keras.layers.Reshape((6, 2, 4)),
            sk.Conv2D(3, 2, snapset.Ternary(), method, name="conv2d"),
            keras.layers.Flatten(),
            sk.Dense(5, snapset.Binary(), method, bias_values=[-1, 1], name="dense"),
            sk.Multiplier(snapset.Sign(), method, name="multiplier"),
        ]
    )


def data(n=16):
    return np.random.default_rng(0).standard_normal((n, 12, 3)).astype("float32")


@pytest.mark.parametrize("method", sk.METHODS)
def test_exact_weights_are_set_members_and_what_the_layers_compute_with(method):
    model = mixed_model(method)
    weights = sk.exact_weights(model)
    assert list(weights) == [
        "conv1d/kernel",
        "conv2d/kernel",
        "dense/kernel",
        "dense/bias",
        "multiplier/kernel",
    ]
    sets = {
        "conv1d/kernel": FOUR,
        "conv2d/kernel": [-1, 0, 1],
        "dense/kernel": [0, 1],
        "dense/bias": [-1, 1],
        "multiplier/kernel": [-1, 1],
    }
    for name, value in weights.items():
        assert sorted(np.unique(value)) == sorted(sets[name]), name  # all of the set, nothing else
    # The multiplier's output is its input times the exact weight.
    head = keras.Model(model.inputs, model.layers[-2].output)
    x = data()
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), head.predict(x, verbose=0) * weights["multiplier/kernel"]
    )


@pytest.mark.parametrize("method", sk.METHODS)
def test_save_and_load_give_identical_outputs(method, tmp_path):
    model = mixed_model(method)
    model.compile(optimizer=sk.Router(flip=sk.Bop(1e-3, 1e-2), default="adam"), loss="mse")
    x = data()
    model.fit(x, np.ones((16, 5), "float32"), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for name, value in sk.exact_weights(model).items():
        np.testing.assert_array_equal(sk.exact_weights(loaded)[name], value)
    assert isinstance(loaded.optimizer, sk.Router)
    assert loaded.optimizer.flip.get_config() == model.optimizer.flip.get_config()
    saved_state = [np.asarray(v.numpy()) for v in model.optimizer.variables]
    loaded_state = [np.asarray(v.numpy()) for v in loaded.optimizer.variables]
    assert len(loaded_state) == len(saved_state) > 3
    for saved, restored in zip(saved_state, loaded_state, strict=True):
        np.testing.assert_array_equal(restored, saved)
    # Training goes on from the saved optimizer state.
    loaded.fit(x, np.ones((16, 5), "float32"), epochs=1, verbose=0)


@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_harden_stores_exact_values_with_identical_outputs(method, tmp_path):
    model = mixed_model(method)
    x = data()
    before = model.predict(x, verbose=0)
    exact = sk.exact_weights(model)
    assert model.get_weights()[0].dtype == np.float32
    assert not np.isin(model.layers[0].get_weights()[0], FOUR).all()  # latents before
    assert sk.harden_(model) is model
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert all(layer.method == "flip" for layer in model.layers if isinstance(layer, sk.SetLayer))
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], exact["conv1d/kernel"])
    model.save(tmp_path / "hard.keras")
    loaded = keras.saving.load_model(tmp_path / "hard.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
    assert np.isin(loaded.layers[0].get_weights()[0], FOUR).all()


@pytest.mark.parametrize(
    "layer",
    [
        sk.Multiplier(FOUR, "stochastic", seed=3, estimator="clip", latent_range=0.2),
        sk.Dense(3, [0, 1], "flip", activation="relu", use_bias=False),
        sk.Conv1D(2, 3, [-1, 1], strides=2, dilation_rate=1, init="nearest"),
        sk.Conv2D(
            2, (2, 3), [-1, 0, 1], padding="same", data_format="channels_first", bias_values=[0, 1]
        ),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_every_layer_round_trips_through_its_config(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_optimizers_round_trip_through_their_config():
    bop = sk.Bop(1e-3, 0.05, threshold_mode="rel", momentum_reset="never")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(bop))
    assert isinstance(restored, sk.Bop) and restored.get_config() == bop.get_config()
    router = sk.Router(flip=bop, default=keras.optimizers.SGD(0.1, momentum=0.9))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(router))
    assert isinstance(restored, sk.Router)
    assert restored.flip.get_config() == bop.get_config()
    assert restored.default.get_config() == router.default.get_config()
    assert float(restored.learning_rate.numpy()) == pytest.approx(0.1)


def test_exact_weights_and_harden_refuse_an_unbuilt_layer():
    with pytest.raises(ValueError, match=r"Layer 'm' is not built yet.*call the model on a batch"):
        sk.exact_weights(sk.Multiplier([0, 1], name="m"))
    layer = sk.Dense(2, [0, 1], name="d")
    with pytest.raises(ValueError, match="not built yet"):
        sk.harden_(layer)


def test_a_hardened_model_trains_on_with_router():
    model = mixed_model("ste")
    x, y = data(), np.ones((16, 5), "float32")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    sk.harden_(model)
    router = sk.Router(flip=sk.Bop(0.0, 0.5), default="adam")
    model.compile(optimizer=router, loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert len(router.flip_variables) == 5  # every set-valued weight went to Bop
    assert int(router.flip.iterations.numpy()) == 1
    for name, value in sk.exact_weights(model).items():
        layer = model.get_layer(name.split("/")[0])
        assert np.isin(value, np.float32(layer.set_value_set(name.split("/")[1]).values)).all()


def test_value_sets_round_trip_through_keras_serialization():
    values = snapset.ValueSet(FOUR)
    config = keras.saving.serialize_keras_object(values)
    assert config["registered_name"] == "snapset>ValueSet"
    assert keras.saving.deserialize_keras_object(config) == values
