"""Flip and oscillation ratios and value histograms of a Keras model's set-valued weights over
training."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops

from .._oscillation import changes
from ._constrain import constrained_variables
from ._methods import checked_numpy

EVERY = ("epoch", "batch")


class FlipRatio(keras.callbacks.Callback):
    """Records the flip and oscillation ratios of a model's set-valued weights over
    ``model.fit``.

    After every epoch (or every batch, ``every="batch"``) it compares each snapset weight's
    exact values with the previous record: the fraction of entries whose value changed is
    that weight's flip ratio (larq's ``FlipRatio`` metric; whatever the method, latent or
    flip), and the fraction whose value changed against the direction of its previous change
    (to a smaller value after it last grew, or the reverse; a first change never counts) is
    its oscillation ratio (Nagel et al., 2022: near the end of training, latent weights whose
    gradient is only noise go back and forth across a threshold). The ratios over all
    set-valued entries go into the logs as ``"flip_ratio"`` and ``"oscillation_ratio"``, so
    ``History`` keeps them per epoch. ``flip_ratios``, ``oscillation_ratios`` and
    ``histograms`` (entries per value, one row per record, row 0 at the start) hold the
    per-weight numbers.

    Examples:
        >>> import keras, numpy as np, snapset.keras as sk
        >>> keras.utils.set_random_seed(0)
        >>> model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], name="m")])
        >>> model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        >>> x = np.random.randn(64, 4).astype("float32")
        >>> flips = sk.FlipRatio()
        >>> history = model.fit(x, -x, epochs=2, verbose=0, callbacks=[flips])
        >>> len(history.history["flip_ratio"]), list(flips.flip_ratios)
        (2, ['m/kernel'])
        >>> len(flips.oscillation_ratios["m/kernel"])
        2
    """

    def __init__(self, every: str = "epoch") -> None:
        if every not in EVERY:
            raise ValueError(f"Invalid every: {every!r} (valid: 'epoch', 'batch')")
        super().__init__()
        self.every = every
        self.flip_ratios: dict[str, list[float]] = {}
        self.oscillation_ratios: dict[str, list[float]] = {}
        self.histograms: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._previous: dict[str, npt.NDArray[np.int64]] = {}
        # each entry's last change: went up, went down (snapset._oscillation.changes)
        self._last: dict[str, tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]] = {}
        self._sizes: dict[str, int] = {}

    def _codes(self) -> dict[str, npt.NDArray[np.int64]]:
        codes = {}
        for key, variable, method in constrained_variables(self.model):
            self._sizes[key] = len(method.values)
            checked_numpy(variable)  # codes of values outside the set would count false flips
            codes[key] = np.asarray(ops.convert_to_numpy(method.codes(variable)), np.int64)
        return codes

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._previous = self._codes()
        if not self._previous:
            raise ValueError(
                "FlipRatio found no set-valued weight in the model: build it with "
                "snapset.keras layers (Multiplier, Dense, Conv1D, Conv2D) or mark a weight "
                "with snapset.keras.constrain"
            )
        self.flip_ratios = {key: [] for key in self._previous}
        self.oscillation_ratios = {key: [] for key in self._previous}
        self._last = {
            key: (np.zeros(c.shape, bool), np.zeros(c.shape, bool))
            for key, c in self._previous.items()
        }
        self.histograms = {key: [self._histogram(key, c)] for key, c in self._previous.items()}

    def _histogram(self, key: str, codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.bincount(codes.reshape(-1), minlength=self._sizes[key])

    def _record(self, logs: dict[str, Any] | None) -> None:
        current = self._codes()
        changed = oscillated = total = 0
        for key, codes in current.items():
            flipped, oscillating = changes(self._previous[key], codes, self._last[key])
            flips, oscillations = np.count_nonzero(flipped), np.count_nonzero(oscillating)
            self.flip_ratios[key].append(flips / codes.size)
            self.oscillation_ratios[key].append(oscillations / codes.size)
            self.histograms[key].append(self._histogram(key, codes))
            changed, oscillated = changed + flips, oscillated + oscillations
            total += codes.size
        self._previous = current
        if logs is not None:
            logs["flip_ratio"] = changed / total
            logs["oscillation_ratio"] = oscillated / total

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.every == "batch":
            self._record(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.every == "epoch":
            self._record(logs)
