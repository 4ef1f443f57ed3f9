"""FlipRatio: flips and value counts of the exact weights over training."""

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


def test_flip_ratio_is_logged_by_fit_every_epoch_or_every_batch():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), sk.Dense(3, [-1, 0, 1], name="d")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    per_epoch, per_batch = sk.FlipRatio(), sk.FlipRatio(every="batch")
    history = model.fit(
        x, -x[:, :3], epochs=3, batch_size=16, verbose=0, callbacks=[per_epoch, per_batch]
    )
    assert len(history.history["flip_ratio"]) == 3
    assert len(per_batch.flip_ratios["d/kernel"]) == 12
    assert sum(per_epoch.flip_ratios["d/kernel"]) > 0  # latents crossed boundaries
    assert all(0.0 <= r <= 1.0 for r in history.history["flip_ratio"])
    assert all(h.sum() == 18 for h in per_epoch.histograms["d/kernel"])
