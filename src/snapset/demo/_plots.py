"""The demo's PNGs: loss and accuracy curves, flip ratios and value shares, weight histograms."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import snapset.torch as st

from ._models import SET_LABELS, SETS
from ._train import Run


def plot_demo(
    runs: Mapping[str, Run],
    models: Mapping[str, nn.Module],
    tracker: st.FlipTracker,
    folder: str | Path,
) -> list[Path]:
    """Write the demo's PNGs to ``folder``: loss and accuracy curves, the tracked model's flip
    ratios and value shares, and histograms of the final weights; return their paths.

    ``runs`` and ``models`` are keyed by the names of [`SETS`][snapset.demo.SETS]; needs
    matplotlib.

    Examples:
        >>> import tempfile
        >>> from snapset.demo import Recipe, Split, build, digits, train
        >>> d = digits()
        >>> small = Split("digits", d.x_train[:128], d.y_train[:128], d.x_test, d.y_test)
        >>> model = build("digits", "sign")
        >>> tracker = st.FlipTracker(model)
        >>> run = train(model, small, Recipe(epochs=1), tracker=tracker)
        >>> paths = plot_demo({"sign": run}, {"sign": model}, tracker, tempfile.mkdtemp())
        >>> [path.name for path in paths]
        ['loss.png', 'flips.png', 'values.png']
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "snapset demo draws its plots with matplotlib: pip install 'snapset[plot]'"
        ) from error
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for name, run in runs.items():
        epochs = range(1, len(run.losses) + 1)
        loss_axis.plot(epochs, run.losses, marker=".", label=SET_LABELS[name])
        accuracy_axis.plot(epochs, run.test_accuracies, marker=".", label=SET_LABELS[name])
    accuracy_axis.axhline(0.94, color="grey", linestyle="--", label="paper's float CNN (94%)")
    loss_axis.set(xlabel="epoch", ylabel="train loss", yscale="log", title="MNIST-1D CNN: loss")
    accuracy_axis.set(xlabel="epoch", ylabel="test accuracy", title="MNIST-1D CNN: test accuracy")
    accuracy_axis.set_ylim(0.5, 1.0)
    loss_axis.legend(fontsize="small")
    accuracy_axis.legend(fontsize="small", loc="lower right")
    loss_path = folder / "loss.png"
    canvas.print_png(str(loss_path))

    flips_path = tracker.plot(folder / "flips.png", max_tensors=2)

    figure = Figure(figsize=(9, 2.8), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(models), squeeze=False)[0]
    for axis, (name, model) in zip(axes, models.items(), strict=True):
        weights = torch.cat(
            [
                module.weight.detach().flatten()
                for module in model.modules()
                if isinstance(module, nn.Conv1d | nn.Linear)
            ]
        )
        values = SETS[name]
        if values is None:
            axis.hist(weights.numpy(), bins=80)
        else:
            counts = [int((weights == v).sum()) for v in values.values]
            axis.bar([f"{v:g}" for v in values.values], counts)
        axis.set(title=f"{SET_LABELS[name]} weights", xlabel="value", ylabel="count")
    values_path = folder / "values.png"
    canvas.print_png(str(values_path))
    return [loss_path, flips_path, values_path]
