"""Real-data experiments shared by ``snapset demo`` and ``snapset bench accuracy``.

Data: MNIST-1D (generated offline by the ``mnist1d`` package, default split 4000/1000, seed 42)
and scikit-learn's 8x8 digits (a fixed stratified split). Models: a CNN for MNIST-1D and an MLP
for digits, the same architecture in float and with every convolution and linear weight in a
value set. One training loop serves float, ``ste`` and ``flip`` (Bop) runs.

Why the models look the way they do: a layer whose weights are all in ``{0, 1}`` can only add
its inputs, never subtract them, so ``W h = (S h + 1^T h) / 2`` with ``S`` in ``{-1, 1}`` carries
a common term ``1^T h`` that drowns the signal. :class:`Center` subtracts the mean over channels
before every constrained layer, which makes ``1^T h = 0``: a ``{0, 1}`` layer then computes what a
``{-1, 1}`` layer computes, up to a factor that BatchNorm absorbs. The input is fed as
``[x, -x]`` (:class:`PlusMinus`) for the same reason. Neither adds a parameter, and every
variant (float included) uses the same architecture.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._sets import Binary, Sign, Ternary, ValueSet
from ._constrain import constrain_
from ._diagnostics import FlipTracker, summary
from ._groups import param_groups
from .optim import Bop, HyperparameterSchedule

SETS: dict[str, ValueSet | None] = {
    "float": None,
    "sign": Sign(),
    "binary": Binary(),
    "ternary": Ternary(),
    "four": ValueSet([1, -1, 0.5, -0.5]),
}
"""The weight sets the experiments compare, by short name (``None``: float weights)."""

SET_LABELS = {
    "float": "float32",
    "sign": "Sign {-1, 1}",
    "binary": "Binary {0, 1}",
    "ternary": "Ternary {-1, 0, 1}",
    "four": "[1, -1, 0.5, -0.5]",
}


@dataclass(frozen=True)
class Split:
    """A data set's train and test tensors; ``x`` is ``(N, 1, 40)`` or ``(N, 64)`` float32."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def mnist1d(seed: int = 42) -> Split:
    """MNIST-1D, generated offline by the ``mnist1d`` package (paper defaults: 4000/1000, 42).

    Example:
        >>> data = mnist1d()
        >>> tuple(data.x_train.shape), tuple(data.x_test.shape)
        ((4000, 1, 40), (1000, 1, 40))
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(
            "MNIST-1D needs the mnist1d package: pip install 'snapset[data]' (or pip install "
            "mnist1d); it generates the data locally, nothing is downloaded"
        ) from error
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)  # generated here, never downloaded
    return Split(
        "MNIST-1D",
        torch.tensor(data["x"], dtype=torch.float32).unsqueeze(1),
        torch.tensor(data["y"], dtype=torch.long),
        torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(1),
        torch.tensor(data["y_test"], dtype=torch.long),
    )


def digits(seed: int = 0) -> Split:
    """scikit-learn's 8x8 digits scaled to [0, 1]: a fixed stratified 1437/360 split.

    Example:
        >>> data = digits()
        >>> tuple(data.x_train.shape), tuple(data.x_test.shape)
        ((1437, 64), (360, 64))
    """
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
        from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(
            "the digits data needs scikit-learn: pip install 'snapset[data]' "
            "(or pip install scikit-learn); the data ships with it"
        ) from error
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=360, random_state=seed, stratify=y
    )
    return Split(
        "digits",
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train, dtype=torch.long),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test, dtype=torch.long),
    )


class Center(nn.Module):
    """Subtract the mean over channels (dimension 1): ``h - mean_c(h)``; no parameters.

    Example:
        >>> float(Center()(torch.tensor([[1.0, 2.0, 6.0]])).sum())
        0.0
    """

    def forward(self, h: Tensor) -> Tensor:
        return h - h.mean(dim=1, keepdim=True)


class PlusMinus(nn.Module):
    """Feed ``[x, -x]`` along the channels, so that ``{0, 1}`` weights can subtract inputs.

    Example:
        >>> PlusMinus()(torch.tensor([[1.0, 2.0]])).tolist()
        [[1.0, 2.0, -1.0, -2.0]]
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, -x], dim=1)


def cnn(width: int = 64, kernel: int = 5, length: int = 40, classes: int = 10) -> nn.Sequential:
    """The MNIST-1D CNN: three convolutions (stride 1, 2, 2), BatchNorm, ReLU, a linear head.

    The MNIST-1D paper's CNN has 25 channels; this one is wider (``width``), normalised, and
    has no biases (BatchNorm follows every weight).

    Example:
        >>> tuple(cnn()(torch.zeros(2, 1, 40)).shape)
        (2, 10)
    """
    pad = kernel // 2
    layers: list[nn.Module] = [PlusMinus()]
    channels = 2
    for stride in (1, 2, 2):
        layers += [
            nn.Conv1d(channels, width, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            Center(),
        ]
        channels = width
    out_length = math.ceil(math.ceil(length / 2) / 2)  # two stride-2 convolutions
    layers += [
        nn.Flatten(),
        nn.Linear(width * out_length, classes, bias=False),
        nn.BatchNorm1d(classes),
    ]
    return nn.Sequential(*layers)


def mlp(features: int = 64, hidden: int = 256, classes: int = 10) -> nn.Sequential:
    """The digits MLP: two hidden layers with BatchNorm and ReLU, a linear head.

    Example:
        >>> tuple(mlp()(torch.zeros(2, 64)).shape)
        (2, 10)
    """
    layers: list[nn.Module] = [PlusMinus()]
    width = 2 * features
    for _ in range(2):
        layers += [
            nn.Linear(width, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            Center(),
        ]
        width = hidden
    layers += [nn.Linear(width, classes, bias=False), nn.BatchNorm1d(classes)]
    return nn.Sequential(*layers)


ARCHITECTURES: dict[str, Callable[[], nn.Sequential]] = {"MNIST-1D": cnn, "digits": mlp}


@dataclass(frozen=True)
class Recipe:
    """How a model trains: Adam with a one-cycle schedule for float and latent tensors, and Bop
    for flip tensors, whose ``gamma`` decays linearly to ``gamma_floor * gamma`` over the run so
    that flips settle at the end (as the learning rate's decay does for the others).

    Example:
        >>> Recipe(epochs=0)
        Traceback (most recent call last):
        ValueError: Invalid epochs for a Recipe: 0
    """

    epochs: int = 20
    lr: float = 1e-2
    batch: int = 64
    threshold: float = 1e-6
    gamma: float = 1e-3
    gamma_floor: float = 0.01

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch": self.batch >= 1,
            "threshold": self.threshold >= 0,
            "gamma": 0 < self.gamma <= 1,
            "gamma_floor": 0 <= self.gamma_floor <= 1,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"Invalid {name} for a Recipe: {getattr(self, name)}")


@dataclass
class Run:
    """What one training run measured."""

    accuracy: float
    losses: list[float] = field(default_factory=list)
    test_accuracies: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    packed_bytes: int = 0
    float32_bytes: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        """Median wall time of an epoch (the first one included when it is the only one)."""
        ordered = sorted(self.epoch_seconds)
        return ordered[len(ordered) // 2] if ordered else 0.0


def build(dataset: str, set_name: str, method: str = "ste", seed: int = 0) -> nn.Sequential:
    """The architecture for ``dataset``, every conv and linear weight constrained to a set.

    One :func:`~snapset.torch.constrain_` call makes the float model binary; ``set_name`` is
    a key of :data:`SETS` (``"float"`` leaves it as it is).

    Example:
        >>> model = build("digits", "sign")
        >>> sorted(model[1].weight.unique().tolist())
        [-1.0, 1.0]
    """
    if dataset not in ARCHITECTURES:
        raise ValueError(f"Unknown dataset {dataset!r}; valid: {', '.join(ARCHITECTURES)}")
    if set_name not in SETS:
        raise ValueError(f"Unknown set {set_name!r}; valid: {', '.join(SETS)}")
    torch.manual_seed(seed)
    model = ARCHITECTURES[dataset]()
    values = SETS[set_name]
    if values is not None:
        constrain_(model, values, method=method)
    return model


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` that ``model`` (in eval mode) classifies as ``y``.

    Example:
        >>> accuracy(nn.Identity(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
        0.5
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        correct = float((model(x).argmax(dim=1) == y).float().mean())
    model.train(was_training)
    return correct


def train(
    model: nn.Module,
    data: Split,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    tracker: FlipTracker | None = None,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> Run:
    """Train ``model`` on ``data`` with cross-entropy; return the test accuracy and timings.

    Float and latent tensors go to Adam (one-cycle learning rate), flip tensors to Bop, as
    :func:`~snapset.torch.param_groups` splits them. ``tracker``, if given, is updated after
    every step; ``progress`` wraps the epoch iterator (a ``tqdm`` for instance).

    Example:
        >>> data = digits()
        >>> run = train(build("digits", "sign"), data, Recipe(epochs=1))
        >>> 0.5 < run.accuracy <= 1.0
        True
    """
    groups = param_groups(model)
    optimizers: list[torch.optim.Optimizer] = []
    steps_per_epoch = -(-len(data.x_train) // recipe.batch)
    total = recipe.epochs * steps_per_epoch
    schedules: list[Any] = []
    gradient_params = groups.latent + groups.other
    if gradient_params:
        adam = torch.optim.Adam(gradient_params, lr=recipe.lr)
        optimizers.append(adam)
        schedules.append(torch.optim.lr_scheduler.OneCycleLR(adam, recipe.lr, total_steps=total))
    if groups.flip:
        bop = Bop(groups.flip, threshold=recipe.threshold, gamma=recipe.gamma)
        optimizers.append(bop)
        floor = recipe.gamma_floor
        schedules.append(HyperparameterSchedule(bop, "gamma", lambda t: max(1 - t / total, floor)))
    shuffle = torch.Generator().manual_seed(seed)
    run = Run(accuracy=0.0)
    epochs: Iterator[int] = iter(range(recipe.epochs))
    for _ in progress(epochs) if progress is not None else epochs:
        model.train()
        start = time.perf_counter()
        total_loss = 0.0
        for idx in torch.randperm(len(data.x_train), generator=shuffle).split(recipe.batch):
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            for schedule in schedules:
                schedule.step()
            if tracker is not None:
                tracker.update()
            total_loss += float(loss.detach()) * len(idx)
        run.epoch_seconds.append(time.perf_counter() - start)
        run.losses.append(total_loss / len(data.x_train))
        run.test_accuracies.append(accuracy(model, data.x_test, data.y_test))
    run.accuracy = (
        run.test_accuracies[-1]
        if run.test_accuracies
        else accuracy(model, data.x_test, data.y_test)
    )
    sizes = summary(model)
    run.packed_bytes, run.float32_bytes = sizes.packed_bytes, sizes.float32_bytes
    return run


def fit_bop(
    layer: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int = 150,
    threshold: float = 3e-3,
    gamma: float = 0.1,
    batch: int = 128,
    seed: int = 0,
) -> nn.Module:
    """Mean-squared-error regression of a flip-constrained ``layer`` with Bop alone.

    Example:
        >>> import snapset, snapset.torch as st
        >>> from snapset.torch import _forum as forum
        >>> planted, x, y = forum.planted_binary_matrix()
        >>> layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), "flip")
        >>> bool(torch.equal(fit_bop(layer, x, y).weight, planted))
        True
    """
    draws = torch.Generator().manual_seed(seed)
    optimizer = Bop(param_groups(layer).flip, threshold=threshold, gamma=gamma)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=draws)
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x[idx]), y[idx]).backward()
        optimizer.step()
    return layer


def plot_demo(
    runs: Mapping[str, Run], models: Mapping[str, nn.Module], tracker: FlipTracker, folder: Path
) -> list[Path]:
    """Write the demo's PNGs to ``folder``: loss and accuracy curves, the Sign model's flip
    ratios and value shares, and histograms of the final weights; return their paths."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "snapset demo draws its plots with matplotlib: pip install 'snapset[plot]'"
        ) from error
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
    axes = figure.subplots(1, len(models))
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
