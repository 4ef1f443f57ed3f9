"""constrain, exact_weights and harden_: the walk over a model's constrained variables."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset.keras._methods import method_of  # noqa: E402

FOUR = [1, -1, 0.5, -0.5]


@pytest.mark.parametrize("method", sk.METHODS)
def test_exact_weights_are_set_members_and_what_the_layers_compute_with(
    method, mixed_model, mixed_inputs
):
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
    x = mixed_inputs
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), head.predict(x, verbose=0) * weights["multiplier/kernel"]
    )


@pytest.mark.parametrize("method", sk.METHODS)
def test_harden_leaves_plain_weights_with_the_exact_values_and_identical_outputs(
    method, mixed_model, mixed_inputs
):
    model = mixed_model(method)
    model.compile(optimizer=sk.Router(flip=sk.Bop(), default="adam"), loss="mse")
    x = mixed_inputs
    model.fit(x, np.ones((16, 5), "float32"), epochs=1, verbose=0)
    assert model.train_function is not None
    before = model.predict(x, verbose=0)
    exact = sk.exact_weights(model)
    variables = {id(v): v.name for v in model.weights}
    assert sk.harden_(model) is model
    assert model.train_function is None and model.predict_function is None
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    set_layers = [layer for layer in model.layers if isinstance(layer, sk.SetLayer)]
    assert [layer.method for layer in set_layers] == [None] * 4
    assert all(layer.get_config()["method"] is None for layer in set_layers)
    # The same variables, now plain, holding the exact values; gumbel's logits have one axis
    # more than the values, so their layer puts a variable of the values' shape in their place.
    if method == "gumbel":
        assert [v.name for v in model.weights] == [
            name.removesuffix("_logits") for name in variables.values()
        ]
    else:
        assert {id(v): v.name for v in model.weights} == variables
    assert all(method_of(v) is None and sk.flip_values(v) is None for v in model.weights)
    assert sk.exact_weights(model) == {}
    for key, value in exact.items():
        layer, weight = key.split("/")
        stored = model.get_layer(layer).get_weights()[0 if weight == "kernel" else 1]
        np.testing.assert_array_equal(stored, value)


def test_harden_removes_the_mark_of_constrain_too():
    dense = keras.layers.Dense(3)
    model = keras.Sequential([keras.Input((4,)), dense])
    sk.constrain(dense, "kernel", snapset.Ternary())
    kernel = dense.get_weights()[0]
    sk.harden_(model)
    assert sk.flip_values(dense.kernel) is None and sk.exact_weights(model) == {}
    np.testing.assert_array_equal(dense.get_weights()[0], kernel)


def test_a_hardened_model_is_a_plain_model_that_any_optimizer_trains(mixed_model, mixed_inputs):
    model = mixed_model("flip")
    x, y = mixed_inputs, np.ones((16, 5), "float32")
    sk.harden_(model)
    router = sk.Router(flip=sk.Bop(), default=keras.optimizers.SGD(0.1))
    model.compile(optimizer=router, loss="mse")
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, verbose=0)
    assert router.flip_variables == []  # nothing is constrained any more
    assert len(router.default_variables) == len(model.trainable_variables)
    moved = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert all(moved)
    assert not np.isin(model.get_layer("conv1d").get_weights()[0], FOUR).all()  # off the set


def test_exact_weights_and_harden_refuse_an_unbuilt_layer():
    with pytest.raises(ValueError, match=r"Layer 'm' is not built yet.*call the model on a batch"):
        sk.exact_weights(sk.Multiplier([0, 1], name="m"))
    layer = sk.Dense(2, [0, 1], name="d")
    with pytest.raises(ValueError, match="not built yet"):
        sk.harden_(layer)


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
