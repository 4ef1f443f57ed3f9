"""Plots of training diagnostics (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._diagnostics import FlipTracker


def plot_training(tracker: FlipTracker, path: str | Path, max_tensors: int = 8) -> Path:
    """Draw a ``FlipTracker``'s flip and oscillation ratios and value shares over training to
    a PNG.

    The top panel shows each tensor's flip ratio per update (a solid line) and its
    oscillation ratio (a dashed line of the same colour: the entries that went back against
    their previous change, see
    [`oscillation_ratios`][snapset.torch.FlipTracker.oscillation_ratios]) on a symmetric log
    scale: linear from 0 up to the smallest ratio that occurred, logarithmic above, so an
    update without a flip sits at 0 (a log scale would have to hide it or draw it as a small
    flip) and every flip that happened stays on the log part. Where the dashed line meets the
    solid one, every flip was an entry going back. Below, one panel per tensor (the first
    ``max_tensors``) shows the share of entries holding each value of its set, stacked, from
    the start to the last update. Update numbers are whole; legends sit right of the data.
    Needs matplotlib (``pip install snapset[plot]``); it draws off screen and changes no global
    matplotlib setting. Returns the path written.

    Examples:
        >>> import tempfile, pathlib, torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Ternary(), "flip")
        >>> tracker = st.FlipTracker(layer)
        >>> tracker.update()
        >>> out = st.plot_training(tracker, pathlib.Path(tempfile.mkdtemp()) / "flips.png")
        >>> out.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as error:
        raise ImportError(
            "snapset.torch.plot_training needs matplotlib: pip install 'snapset[plot]' "
            "(or pip install matplotlib)"
        ) from error
    figure = training_figure(tracker, max_tensors)
    out = Path(path)
    FigureCanvasAgg(figure).print_png(str(out))
    return out


def training_figure(tracker: FlipTracker, max_tensors: int = 8) -> Any:
    """The matplotlib ``Figure`` that ``plot_training`` draws, not yet written anywhere.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), "flip")
        >>> tracker = st.FlipTracker(layer)
        >>> tracker.update()  # no flip
        >>> top = training_figure(tracker).axes[0]
        >>> top.get_lines()[0].get_ydata().tolist(), top.get_yscale()
        ([0.0], 'symlog')
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if max_tensors < 1:
        raise ValueError(f"Invalid max_tensors: {max_tensors} (must be >= 1)")
    ratios, oscillations = tracker.flip_ratios(), tracker.oscillation_ratios()
    histograms = tracker.histograms()
    names = tracker.names[:max_tensors]
    figure = Figure(figsize=(9, 2.2 * (1 + len(names))), layout="constrained")
    axes: list[Any] = list(figure.subplots(1 + len(names), 1, squeeze=False)[:, 0])
    top = axes[0]
    for name in tracker.names:
        updates = np.arange(1, len(ratios[name]) + 1)
        [line] = top.plot(updates, ratios[name], marker=".", label=name)
        # one legend entry a tensor: the title says what the dashed line is
        top.plot(updates, oscillations[name], linestyle="--", color=line.get_color(), label="_")
    every = [r for series in (*ratios.values(), *oscillations.values()) for r in series]
    top.set_yscale("symlog", linthresh=min([r for r in every if r > 0], default=1.0), linscale=0.5)
    top.set_ylim(bottom=0)
    top.set_xlabel("update")
    top.set_ylabel("flip / oscillation ratio")
    top.set_title(
        "Share of entries whose value changed (solid; 0: no flip) and went back (dashed: "
        "oscillation)"
    )
    if len(tracker.names) <= 12:
        top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    for axis, name in zip(axes[1:], names, strict=True):
        counts = histograms[name].astype(np.float64)
        shares = counts / counts.sum(axis=1, keepdims=True)
        labels = [f"{v:g}" for v in tracker.value_sets[name]]
        axis.stackplot(np.arange(len(shares)), shares.T, labels=labels)
        axis.set_xlim(0, max(len(shares) - 1, 1))
        axis.set_ylim(0, 1)
        axis.set_ylabel("share")
        axis.set_title(f"{name}: entries per value")
        columns = -(-len(labels) // 8)  # at most 8 rows: a large set's legend stays short
        axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), ncols=columns)
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("update")
    return figure
