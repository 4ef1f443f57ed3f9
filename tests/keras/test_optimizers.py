"""Bop's rule on Keras variables, its refusals, and Router's routing."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])


def flip_layer(values, start):
    layer = sk.Multiplier(values, "flip")
    layer.build((None, len(start)))
    layer.weights[0].assign(np.asarray(start, "float32"))
    return layer


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
        ValueError, match=r"holds 1 values outside ValueSet\(\[0, 1\]\), for example 0.3"
    ):
        bop.build(layer.trainable_variables)
    assert not bop.built


def test_bop_refuses_options_that_would_leave_the_set():
    with pytest.raises(ValueError, match="Bop does not support weight_decay"):
        sk.Bop(weight_decay=1e-4)


def test_router_refuses_one_optimizer_for_both_and_options_of_its_own():
    bop = sk.Bop()
    with pytest.raises(ValueError, match="two distinct optimizers"):
        sk.Router(flip=bop, default=bop)
    with pytest.raises(ValueError, match="Router takes no optimizer options of its own"):
        sk.Router(flip=bop, default="adam", clipnorm=1.0)


def test_router_splits_the_variables_and_counts_its_steps():
    model = keras.Sequential(
        [keras.Input((3,)), sk.Dense(4, [0, 1], "flip"), sk.Dense(2, [-1, 1], "ste")]
    )
    router = sk.Router(flip=sk.Bop(threshold=0.0, gamma=1.0), default=keras.optimizers.SGD(0.1))
    router.build(model.trainable_variables)
    assert [v.path.split("/")[-1] for v in router.flip_variables] == ["kernel"]
    assert [v.path.split("/")[-1] for v in router.default_variables] == [
        "bias",
        "kernel_latent",
        "bias",
    ]
    flip_before = model.layers[0].get_weights()[0]
    grads = [ops.ones(v.shape) for v in model.trainable_variables]
    router.apply(grads, model.trainable_variables)
    # Bop stepped every {0, 1} entry down (to 0); SGD moved the floats by -0.1.
    assert model.layers[0].get_weights()[0].tolist() == np.zeros_like(flip_before).tolist()
    np.testing.assert_allclose(model.layers[0].get_weights()[1], -0.1)
    assert int(router.iterations.numpy()) == 1
    assert float(router.learning_rate.numpy()) == pytest.approx(0.1)


def test_a_model_without_flip_layers_trains_through_router_alone():
    model = keras.Sequential([keras.Input((3,)), sk.Dense(2, [-1, 1])])
    model.compile(optimizer=sk.Router(flip=sk.Bop(), default="adam"), loss="mse")
    x = np.random.default_rng(0).standard_normal((32, 3)).astype("float32")
    before = model.get_weights()[0].copy()
    model.fit(x, x[:, :2], epochs=1, verbose=0)
    assert not np.array_equal(model.get_weights()[0], before)


def test_a_weight_of_a_keras_layer_is_flip_trained_through_router():
    keras.utils.set_random_seed(0)
    planted = np.random.default_rng(5).choice(np.float32([-1, 1]), (6, 3))
    x = np.random.default_rng(6).standard_normal((512, 6)).astype("float32")
    dense = keras.layers.Dense(3, use_bias=False)
    model = keras.Sequential([keras.Input((6,)), dense])
    sk.constrain(dense, "kernel", snapset.Sign())
    assert list(sk.exact_weights(model)) == [f"{dense.name}/kernel"]
    model.compile(optimizer=sk.Router(flip=sk.Bop(1e-3, 1e-2), default="adam"), loss="mse")
    flips = sk.FlipRatio()
    model.fit(x, x @ planted, epochs=3, batch_size=32, verbose=0, callbacks=[flips])
    np.testing.assert_array_equal(dense.get_weights()[0], planted)
    assert sum(flips.flip_ratios[f"{dense.name}/kernel"]) > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sk.constrain(keras.layers.Dense(2), "kernel", [0, 1]), "is not built yet"),
        (
            lambda: sk.constrain(_built_dense(), "kernal", [0, 1]),
            r"no weight attribute named 'kernal'.*'kernel', 'bias'",
        ),
        (
            lambda: sk.constrain(_built_dense(), "kernel", [0, 1], init="zeros"),
            "Unknown init 'zeros'",
        ),
        (
            lambda: sk.constrain(sk.constrain(_built_dense(), "kernel", [0, 1]), "kernel", [0, 1]),
            r"already constrained to ValueSet\(\[0, 1\]\)",
        ),
        (
            lambda: sk.constrain(_built(sk.Dense(2, [0, 1])), "kernel", [0, 1]),
            "is a snapset layer already",
        ),
    ],
)
def test_constrain_refuses_what_it_cannot_do_and_leaves_the_layer_alone(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _built_dense():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    return layer


def _built(layer):
    layer.build((None, 3))
    return layer
