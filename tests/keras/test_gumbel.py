"""The ``gumbel`` method of the Keras front: sampling, its gradient, temperature, hardening (the
stored logits have one axis more than the values), saving and loading."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402
from snapset.keras._functional import gumbel_sample  # noqa: E402


def test_training_draws_each_value_as_often_as_its_softmax_says():
    values = snapset.ValueSet([-1, 0.5, 2])
    logits = ops.convert_to_tensor(np.float32([[1.0, 0.0, -1.0]] * 20_000))
    table = ops.convert_to_tensor(np.float32(values.values))
    draws = ops.convert_to_numpy(gumbel_sample(logits, table, 1.0, keras.random.SeedGenerator(7)))
    shares = [(draws == v).mean() for v in np.float32(values.values)]
    expected = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    np.testing.assert_allclose(shares, expected, atol=0.015)  # ~4 standard deviations


def test_a_seeded_layer_draws_the_same_values_and_inference_draws_none():
    x = np.ones((1, 64), "float32")

    def draws(seed):
        keras.utils.set_random_seed(0)
        layer = sk.Multiplier(snapset.Ternary(), "gumbel", seed=seed)
        return ops.convert_to_numpy(layer(x, training=True)), layer

    first, layer = draws(5)
    np.testing.assert_array_equal(first, draws(5)[0])
    assert not np.array_equal(first, draws(6)[0])
    hard = layer.exact_weights()["kernel"]
    for _ in range(2):
        np.testing.assert_array_equal(ops.convert_to_numpy(layer(x))[0], hard)


def test_non_finite_gradient_entries_are_zeroed_before_the_logits(grads):
    layer = sk.Multiplier(snapset.Sign(), "gumbel")
    x = np.ones((2, 3), "float32")
    layer(x)
    upstream = np.float32([[np.nan, 1.0, np.inf], [1.0, 1.0, 1.0]])
    (grad,) = grads(layer, x, upstream, training=True)
    assert grad.shape == (3, 2) and np.isfinite(grad).all()


def test_set_temperature_sets_every_gumbel_weight_and_the_saved_config(grads):
    def model(**options):
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((4,)),
                sk.Multiplier([-1, 1], "gumbel", name="m", seed=1, **options),
                sk.Dense(2, [0, 1], "ste", name="d"),
            ]
        )

    annealed, reference = model(), model(temperature=0.25)
    assert sk.set_temperature(annealed, 0.25) == 1
    assert annealed.layers[0].get_config() == reference.layers[0].get_config()
    x, upstream = np.ones((3, 4), "float32"), np.ones((3, 2), "float32")
    for ours, theirs in zip(
        grads(annealed, x, upstream, training=True),
        grads(reference, x, upstream, training=True),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
    for bad in (0.0, float("nan"), "1"):
        with pytest.raises((ValueError, TypeError)) as ours:
            sk.set_temperature(annealed, bad)
        with pytest.raises(type(ours.value)) as core:
            _spec.check_temperature(bad)
        assert str(ours.value) == str(core.value)


def test_set_temperature_anneals_from_a_callback_during_fit():
    model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], "gumbel")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    anneal = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: sk.set_temperature(model, 1.0 / (epoch + 1))
    )
    x = np.random.default_rng(0).standard_normal((32, 4)).astype("float32")
    model.fit(x, x, epochs=3, batch_size=8, verbose=0, callbacks=[anneal])
    assert model.layers[0].get_config()["temperature"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("harden", ["layer", "model"])
@pytest.mark.parametrize("bias_values", [None, [-1, 1]], ids=["float bias", "set bias"])
def test_hardening_leaves_plain_weights_of_the_values_shape_in_the_same_order(
    harden, bias_values, tmp_path
):
    layer = sk.Conv1D(3, 2, snapset.Ternary(), "gumbel", bias_values=bias_values, name="c")
    model = keras.Sequential([keras.Input((5, 2)), layer, keras.layers.Flatten()])
    x = np.random.default_rng(1).standard_normal((4, 5, 2)).astype("float32")
    exact, before = sk.exact_weights(model), model.predict(x, verbose=0)
    exact.setdefault("c/bias", layer.get_weights()[1])  # a float bias stays as it is
    paths = [v.path.removesuffix("_logits") for v in model.weights]
    layer.harden() if harden == "layer" else sk.harden_(model)
    assert [v.path for v in model.weights] == paths
    assert [tuple(v.shape) for v in model.weights] == [(2, 2, 3), (3,)]
    np.testing.assert_array_equal(layer.get_weights()[0], exact["c/kernel"])
    np.testing.assert_array_equal(layer.get_weights()[1], exact["c/bias"])
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert layer.method is None and sk.exact_weights(model) == {}
    # Its file loads as the plain layer it now is; the hardened model trains as a float one.
    path = tmp_path / "hard.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).predict(x, verbose=0), before)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, np.zeros_like(before), epochs=1, verbose=0)


def test_a_refused_harden_changes_nothing():
    layer = sk.Dense(2, [0, 1], "gumbel", bias_values=[0, 1])
    layer.build((None, 3))
    kernel, bias = layer.weights
    bias.assign(np.float32([[0.0, np.nan], [0.1, 0.2]]))
    with pytest.raises(snapset.OutsideSetError, match=r"non-finite \(NaN or inf\) logits"):
        layer.harden()
    assert layer.weights == [kernel, bias] and layer.method == "gumbel"
    assert tuple(kernel.shape) == (3, 2, 2)


def test_a_file_with_values_in_place_of_logits_does_not_load(tmp_path, archive):
    model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], "gumbel", name="m")])
    path = tmp_path / "m.keras"
    model.save(path)
    file = archive(path)
    (key,) = [k for k in file.weights if k.endswith("multiplier/vars/0")]
    file.weights[key] = np.float32([1, -1, 1, 1])  # what a hardened layer would hold
    with pytest.raises(ValueError, match=r"has shape \(4, 2\); the incoming array has shape"):
        keras.saving.load_model(file.write(tmp_path / "bad.keras"))


def test_flip_ratio_counts_the_changes_of_the_values():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), sk.Multiplier([-1, 1], "gumbel", name="m")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = np.random.default_rng(0).standard_normal((64, 8)).astype("float32")
    flips = sk.FlipRatio()
    model.fit(x, -x, epochs=2, verbose=0, callbacks=[flips])
    assert list(flips.flip_ratios) == ["m/kernel"] and len(flips.flip_ratios["m/kernel"]) == 2
    assert [int(h.sum()) for h in flips.histograms["m/kernel"]] == [8, 8, 8]
