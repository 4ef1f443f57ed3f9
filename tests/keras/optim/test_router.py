"""Router: one optimizer that gives Bop the flip variables and another the rest."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset.keras as sk  # noqa: E402


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


def test_router_round_trips_through_its_config():
    bop = sk.Bop(1e-3, 0.05, threshold_mode="rel", momentum_reset="never")
    router = sk.Router(flip=bop, default=keras.optimizers.SGD(0.1, momentum=0.9))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(router))
    assert isinstance(restored, sk.Router)
    assert restored.flip.get_config() == bop.get_config()
    assert restored.default.get_config() == router.default.get_config()
    assert float(restored.learning_rate.numpy()) == pytest.approx(0.1)
