"""get_config / from_config and the .keras round trip, hardened models included."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

FOUR = [1, -1, 0.5, -0.5]


@pytest.mark.parametrize("method", sk.METHODS)
def test_save_and_load_give_identical_outputs(method, tmp_path, mixed_model, mixed_inputs):
    model = mixed_model(method)
    model.compile(optimizer=sk.Router(flip=sk.Bop(1e-3, 1e-2), default="adam"), loss="mse")
    x = mixed_inputs
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


@pytest.mark.parametrize("method", sk.METHODS)
def test_a_hardened_model_saves_and_loads_with_identical_outputs(
    method, tmp_path, mixed_model, mixed_inputs
):
    model = mixed_model(method)
    x = mixed_inputs
    before = model.predict(x, verbose=0)
    exact = sk.exact_weights(model)
    sk.harden_(model)
    model.save(tmp_path / "hard.keras")
    loaded = keras.saving.load_model(tmp_path / "hard.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
    assert [layer.method for layer in loaded.layers if isinstance(layer, sk.SetLayer)] == [None] * 4
    np.testing.assert_array_equal(loaded.layers[0].get_weights()[0], exact["conv1d/kernel"])
    assert sk.exact_weights(loaded) == {}
    # What is stored is what it was: the exact values, in the weights' dtype.
    for saved, restored in zip(model.get_weights(), loaded.get_weights(), strict=True):
        assert restored.dtype == saved.dtype
        np.testing.assert_array_equal(restored, saved)


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


def test_value_sets_round_trip_through_keras_serialization():
    values = snapset.ValueSet(FOUR)
    config = keras.saving.serialize_keras_object(values)
    assert config["registered_name"] == "snapset>ValueSet"
    assert keras.saving.deserialize_keras_object(config) == values
