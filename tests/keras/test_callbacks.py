"""FlipRatio: flips, oscillations and value counts of the exact weights over training."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402


def test_flip_ratio_counts_changed_values_exactly():
    model = keras.Sequential([keras.Input((8,)), sk.Multiplier(snapset.Sign(), "flip", name="m")])
    variable = model.layers[0].weights[0]
    variable.assign(np.array([1, 1, -1, -1, 1, -1, 1, -1], "float32"))
    flips = sk.FlipRatio()
    flips.set_model(model)
    flips.on_train_begin()
    variable.assign(np.array([-1, -1, -1, -1, 1, -1, 1, -1], "float32"))  # two of eight
    logs = {}
    flips.on_epoch_end(0, logs)
    assert logs["flip_ratio"] == 0.25
    assert flips.flip_ratios == {"m/kernel": [0.25]}
    assert [h.tolist() for h in flips.histograms["m/kernel"]] == [[4, 4], [6, 2]]


def fit_with_flip_ratios(lr, epochs, batch_size):
    """A ternary Dense fitted with Adam at ``lr``; its history and two FlipRatio callbacks,
    one recording every epoch and one every batch."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), sk.Dense(3, [-1, 0, 1], name="d")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    per_epoch, per_batch = sk.FlipRatio(), sk.FlipRatio(every="batch")
    history = model.fit(
        x, -x[:, :3], epochs=epochs, batch_size=batch_size, verbose=0,
        callbacks=[per_epoch, per_batch],
    )  # fmt: skip
    return history, per_epoch, per_batch


def test_flip_ratio_is_logged_by_fit_every_epoch_or_every_batch():
    history, per_epoch, per_batch = fit_with_flip_ratios(0.05, epochs=3, batch_size=16)
    assert len(history.history["flip_ratio"]) == 3
    assert len(per_batch.flip_ratios["d/kernel"]) == 12
    assert sum(per_epoch.flip_ratios["d/kernel"]) > 0  # latents crossed boundaries
    assert all(0.0 <= r <= 1.0 for r in history.history["flip_ratio"])
    assert all(h.sum() == 18 for h in per_epoch.histograms["d/kernel"])


def test_oscillation_ratio_counts_values_going_back_against_their_last_change():
    """Ternary codes by hand: ups that keep going up are flips, not oscillations; an entry
    that falls after it rose (or rises after it fell) oscillates; its first change never."""
    model = keras.Sequential(
        [keras.Input((4,)), sk.Multiplier(snapset.Ternary(), "flip", name="m")]
    )
    variable = model.layers[0].weights[0]
    variable.assign(np.array([-1, -1, 0, 1], "float32"))
    flips = sk.FlipRatio(every="batch")
    flips.set_model(model)
    flips.on_train_begin()
    records = []
    for values in ([0, -1, 0, 0], [1, -1, 0, 0], [1, -1, 0, 0], [0, 0, 0, 1]):
        variable.assign(np.array(values, "float32"))
        logs = {}
        flips.on_train_batch_end(0, logs)
        records.append((logs["flip_ratio"], logs["oscillation_ratio"]))
    # entry 0 goes up, up, then down (back); entry 3 goes down, then up (back); 1 goes up once
    assert records == [(0.5, 0.0), (0.25, 0.0), (0.0, 0.0), (0.75, 0.5)]
    assert flips.oscillation_ratios == {"m/kernel": [0.0, 0.0, 0.0, 0.5]}
    assert flips.flip_ratios == {"m/kernel": [0.5, 0.25, 0.0, 0.75]}


def test_oscillation_ratio_is_logged_by_fit_and_never_exceeds_the_flip_ratio():
    history, per_epoch, per_batch = fit_with_flip_ratios(0.2, epochs=4, batch_size=8)
    assert history.history["oscillation_ratio"] == per_epoch.oscillation_ratios["d/kernel"]
    oscillations = np.array(per_batch.oscillation_ratios["d/kernel"])
    assert oscillations.shape == (32,) and oscillations.sum() > 0  # a high constant rate
    assert oscillations[0] == 0  # a first change never oscillates
    assert np.all(oscillations <= np.array(per_batch.flip_ratios["d/kernel"]))
