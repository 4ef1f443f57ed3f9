"""Lightning integration: a callback that logs flip ratios and value histograms.

Needs Lightning (``pip install "snapset[lightning]"``); ``import snapset.torch`` does not import
this module.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised only without lightning
    raise ImportError(
        "snapset.torch.lightning needs Lightning 2.2 or newer: pip install 'snapset[lightning]' "
        "(or pip install lightning). The rest of snapset.torch works without it."
    ) from error

from ._diagnostics import FlipTracker

__all__ = ["FlipMonitor"]


class FlipMonitor(pl.Callback):
    """Log the flip ratio and the value histogram of every constrained tensor while training.

    Every ``every_n_steps`` training batches it writes to the trainer's loggers (at step
    ``trainer.global_step``), for each tensor constrained by snapset (``name`` as
    [`snapset.torch.named_constraints`][] gives it):

    * ``flip_ratio/<name>``: the share of entries whose exact value changed since the previous
      log (larq's ``FlipRatio``), and ``flip_ratio/all`` over all constrained entries;
    * ``oscillation_ratio/<name>``: the share of entries whose value changed back the way it
      came (see [`FlipTracker.oscillation_ratios`][snapset.torch.FlipTracker.oscillation_ratios]);
    * ``values/<name>/<value>``: the share of entries that hold each value of the set (the
      value histogram), when ``histograms`` is true.

    The counting is [`snapset.torch.FlipTracker`][]'s: one byte per entry
    between logs, never a float copy. Under DDP every replica holds the same values, so each rank
    logs the same numbers (Lightning's loggers write on rank 0).

    Args:
        every_n_steps: log after every this many training batches (default 1).
        histograms: also log the value shares (default True).

    Examples:
        >>> import lightning, snapset.torch.lightning as sl
        >>> monitor = sl.FlipMonitor(every_n_steps=10)
        >>> trainer = lightning.Trainer(callbacks=[monitor], max_epochs=1, logger=False,
        ...                             enable_progress_bar=False, enable_model_summary=False,
        ...                             enable_checkpointing=False)
        >>> monitor.every_n_steps
        10
    """

    def __init__(self, every_n_steps: int = 1, histograms: bool = True) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise TypeError(f"Invalid every_n_steps: {every_n_steps!r} (must be an int >= 1)")
        if every_n_steps < 1:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps} (must be >= 1)")
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self._tracker: FlipTracker | None = None
        self._batches = 0
        #: The numbers last logged (empty before the first log).
        self.last_metrics: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker = FlipTracker(pl_module)  # refuses a module with nothing constrained
        self._batches = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Counted here, not from trainer.global_step: under manual optimization with a flip
        # optimizer and a gradient optimizer, global_step advances once per optimizer step.
        self._batches += 1
        if self._tracker is None or self._batches % self.every_n_steps:
            return
        self._tracker.update()
        self.last_metrics = _read(self._tracker, self.histograms)
        # Straight to the loggers, as Lightning's LearningRateMonitor does: each log is written
        # once, at this step (self.log would repeat it at the following steps).
        for logger in trainer.loggers:
            logger.log_metrics(self.last_metrics, step=trainer.global_step)
        # Memory stays bounded over a long fit (a tracker keeps every update's counts); the
        # values and directions stay, so that oscillations across logs are counted.
        self._tracker.forget()


def _read(tracker: FlipTracker, histograms: bool) -> dict[str, float]:
    """The flip ratios and value shares of ``tracker``'s last update, as metric names."""
    ratios, counts_by_name = tracker.flip_ratios(), tracker.histograms()
    oscillations = tracker.oscillation_ratios()
    metrics: dict[str, float] = {}
    changed = total = 0.0
    for name, values in tracker.value_sets.items():
        counts = counts_by_name[name][-1]
        entries = float(counts.sum())
        metrics[f"flip_ratio/{name}"] = ratios[name][-1]
        metrics[f"oscillation_ratio/{name}"] = oscillations[name][-1]
        changed += ratios[name][-1] * entries
        total += entries
        if histograms:
            for value, count in zip(values.values, counts.tolist(), strict=True):
                metrics[f"values/{name}/{value:g}"] = count / entries
    metrics["flip_ratio/all"] = changed / total
    return metrics
