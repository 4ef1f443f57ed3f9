"""Bop's rule on Keras variables, its defaults and its refusals."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


from tests.keras.conftest import flip_layer  # noqa: E402

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])


def test_bop_moves_one_level_against_a_strong_average_and_stops_at_the_ends():
    layer = flip_layer(FOUR, [-1.0, -0.5, 0.5, 1.0, 0.5])
    bop = sk.Bop(threshold=1e-3, gamma=1.0)  # gamma 1: m is the last gradient
    grad = np.array([1.0, 1.0, -1.0, -1.0, 1e-4], "float32")  # down, down, up, up, too weak
    bop.apply([grad], layer.trainable_variables)
    assert layer.get_weights()[0].tolist() == [-1.0, -1.0, 1.0, 1.0, 0.5]
    bop.apply([grad], layer.trainable_variables)
    assert layer.get_weights()[0].tolist() == [-1.0, -1.0, 1.0, 1.0, 0.5]


def test_interior_moves_restart_their_momentum_and_end_moves_keep_it():
    layer = flip_layer(FOUR, [0.5, -0.5])
    bop = sk.Bop(threshold=1e-3, gamma=0.5)
    bop.apply([np.array([-1.0, 1.0], "float32")], layer.trainable_variables)
    assert layer.get_weights()[0].tolist() == [1.0, -1.0]  # both land on an end
    np.testing.assert_array_equal(ops.convert_to_numpy(bop._momentums[0]), [-0.5, 0.5])
    layer.weights[0].assign(np.array([-0.5, 0.5], "float32"))
    bop.apply([np.array([-1.0, 1.0], "float32")], layer.trainable_variables)
    assert layer.get_weights()[0].tolist() == [0.5, -0.5]  # interior landings
    np.testing.assert_array_equal(ops.convert_to_numpy(bop._momentums[0]), [0.0, 0.0])


def test_a_step_with_a_non_finite_gradient_changes_nothing():
    layer = flip_layer(snapset.Sign(), [1.0, -1.0, 1.0])
    bop = sk.Bop(threshold=1e-3, gamma=0.5)
    bop.apply([np.array([0.1, 0.1, 0.1], "float32")], layer.trainable_variables)
    weights, momentum = layer.get_weights()[0], ops.convert_to_numpy(bop._momentums[0])
    bop.apply([np.array([1.0, np.nan, 1.0], "float32")], layer.trainable_variables)
    np.testing.assert_array_equal(layer.get_weights()[0], weights)
    np.testing.assert_array_equal(ops.convert_to_numpy(bop._momentums[0]), momentum)
    assert bop.nonfinite_steps == 1


def test_bop_refuses_a_latent_variable_and_says_what_to_do():
    layer = sk.Dense(2, [0, 1], "ste")
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"not a flip variable.*method='flip'.*Router"):
        sk.Bop().build(layer.trainable_variables)


def test_bop_refuses_values_outside_the_set():
    layer = flip_layer(snapset.Binary(), [0.0, 1.0])
    layer.weights[0].assign(np.array([0.0, 0.3], "float32"))
    bop = sk.Bop()
    with pytest.raises(
        snapset.OutsideSetError,
        match=r"holds 1 value outside ValueSet\(\[0, 1\]\) \(for example 0.3\)\. Something",
    ):
        bop.build(layer.trainable_variables)
    assert not bop.built


def test_bop_refuses_options_that_would_leave_the_set():
    with pytest.raises(ValueError, match="Bop does not support weight_decay"):
        sk.Bop(weight_decay=1e-4)


def test_the_defaults_are_the_shared_ones_and_the_config_round_trips():
    config = sk.Bop().get_config()
    assert {k: config[k] for k in _spec.BOP_DEFAULTS} == dict(_spec.BOP_DEFAULTS)
    assert "learning_rate" not in config
    bop = sk.Bop(1e-3, 0.05, threshold_mode="rel", momentum_reset="never")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(bop))
    assert isinstance(restored, sk.Bop) and restored.get_config() == bop.get_config()


def holds_float64():
    return keras.backend.standardize_dtype(ops.convert_to_tensor(np.zeros(1)).dtype) == "float64"


@pytest.mark.skipif(not holds_float64(), reason="JAX holds float64 only with jax_enable_x64")
def test_a_float64_variable_meets_the_threshold_in_float64():
    layer = sk.Multiplier(snapset.Sign(), "flip", dtype="float64")
    layer.build((None, 2))
    layer.weights[0].assign(np.array([1.0, 1.0]))
    bop = sk.Bop(threshold=1e-3, gamma=1.0)  # gamma 1: m is the last gradient
    # Above the threshold in float64, not above it rounded to float32 (1.00000005e-3).
    bop.apply([np.array([1e-3 * (1 + 2**-40), 1e-3])], layer.trainable_variables)
    assert layer.get_weights()[0].tolist() == [-1.0, 1.0]
