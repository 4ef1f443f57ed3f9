"""One training loop for float, ``ste`` and ``flip`` (Bop) runs, and what a run measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import swa_utils

import snapset.torch as st
from snapset._spec import BOP2_DEFAULTS

from ._data import Split


@dataclass(frozen=True)
class Recipe:
    """How a model trains: Adam with a one-cycle schedule (``schedule="cosine"``: a cosine decay
    from ``lr``, as a user would write it) for float and latent tensors, and
    [`Bop2ndOrder`][snapset.torch.Bop2ndOrder] with its defaults for flip tensors, whose rates
    ``gamma`` and ``sigma`` decay linearly to ``gamma_floor`` times their start over the run so
    that flips settle at the end (as the learning rate's decay does for the others).
    With ``flip_optimizer="Bop"`` the first-moment [`Bop`][snapset.torch.Bop] trains them
    instead, with ``bop_threshold`` and ``bop_gamma`` (also larq's Bop's in
    ``benchmarks/accuracy.py``), its ``gamma`` decaying alike. ``reestimate_batchnorm``: after
    the last epoch, recompute BatchNorm's statistics on the training data with the exact
    weights ([`reestimate_batchnorm`][snapset.torch.reestimate_batchnorm]). ``average`` > 0:
    keep an exponential moving average of the float and latent tensors, with that decay a
    step (torch's ``AveragedModel``), and end with the average and BatchNorm re-estimated for it
    (what tames oscillation at a constant rate: ``schedule="constant"``; not for flip tensors,
    whose average would leave the set).

    Examples:
        >>> Recipe(epochs=3).batch
        64
        >>> Recipe(epochs=0)
        Traceback (most recent call last):
        ValueError: Invalid epochs for a Recipe: 0
    """

    epochs: int = 20
    lr: float = 1e-2
    batch: int = 64
    threshold: float = BOP2_DEFAULTS["threshold"]
    gamma: float = BOP2_DEFAULTS["gamma"]
    sigma: float = BOP2_DEFAULTS["sigma"]
    gamma_floor: float = 0.01
    flip_optimizer: str = "Bop2ndOrder"
    bop_threshold: float = 1e-6
    bop_gamma: float = 1e-3
    schedule: str = "one-cycle"
    reestimate_batchnorm: bool = False
    average: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch": self.batch >= 1,
            "threshold": self.threshold >= 0,
            "gamma": 0 < self.gamma <= 1,
            "sigma": 0 < self.sigma <= 1,
            "bop_threshold": self.bop_threshold >= 0,
            "bop_gamma": 0 < self.bop_gamma <= 1,
            "flip_optimizer": self.flip_optimizer in ("Bop2ndOrder", "Bop"),
            "gamma_floor": 0 <= self.gamma_floor <= 1,
            "schedule": self.schedule in SCHEDULES,
            "average": 0 <= self.average < 1,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"Invalid {name} for a Recipe: {getattr(self, name)}")

    @property
    def after_training(self) -> str:
        """What the recipe adds to plain training, as a row's method cell ends with it.

        Examples:
            >>> Recipe(average=0.99).after_training
            ' + average 0.99 + BN re-estimation'
        """
        average = f" + average {self.average}" if self.average else ""
        reestimate = self.reestimate_batchnorm or bool(self.average)
        return average + (" + BN re-estimation" if reestimate else "")


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, float, int], Any]] = {
    "one-cycle": lambda opt, lr, steps: torch.optim.lr_scheduler.OneCycleLR(opt, lr, steps),
    "cosine": lambda opt, lr, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
    "constant": lambda opt, lr, steps: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
}
"""The learning-rate schedules a ``Recipe`` names: each makes one from (Adam, peak, steps)."""


@dataclass
class Run:
    """What one training run measured.

    Examples:
        >>> Run(accuracy=0.9, epoch_seconds=[3.0, 1.0, 2.0]).seconds_per_epoch
        2.0
    """

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


def size_text(n: int) -> str:
    """A byte count as the tables print it.

    Examples:
        >>> size_text(512), size_text(7577), size_text(3 * 2**20)
        ('512 B', '7.4 KiB', '3.0 MiB')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, as the demo and the benchmark do.

    These models are small: one thread is as fast as two, far faster on a busy machine, and
    fair to every library a benchmark compares.

    Examples:
        >>> with one_thread():
        ...     torch.get_num_threads()
        1
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` that ``model`` (in eval mode) classifies as ``y``.

    Examples:
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
    tracker: st.FlipTracker | None = None,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> Run:
    """Train ``model`` on ``data`` with cross-entropy; return the test accuracy and timings.

    Float and latent tensors go to Adam (one-cycle learning rate), flip tensors to Bop, as
    [`param_groups`][snapset.torch.param_groups] splits them. ``tracker``, if given, is updated
    after every step; ``progress`` wraps the epoch iterator (a ``tqdm`` for instance).

    Examples:
        >>> from snapset.demo import build, digits
        >>> run = train(build("digits", "sign"), digits(), Recipe(epochs=1))
        >>> 0.5 < run.accuracy <= 1.0
        True
    """
    groups = st.param_groups(model)
    if recipe.average and groups.flip:
        raise ValueError(
            "Recipe.average averages float and latent tensors; an average of flip tensors "
            "would leave their set. Train flip tensors with average=0."
        )
    optimizers: list[torch.optim.Optimizer] = []
    steps_per_epoch = -(-len(data.x_train) // recipe.batch)
    total = recipe.epochs * steps_per_epoch
    schedules: list[Any] = []
    gradient_params = groups.latent + groups.other
    if gradient_params:
        adam = torch.optim.Adam(gradient_params, lr=recipe.lr)
        optimizers.append(adam)
        schedules.append(SCHEDULES[recipe.schedule](adam, recipe.lr, total))
    if groups.flip:
        bop: st.Bop = st.Bop2ndOrder(groups.flip, recipe.threshold, recipe.gamma, recipe.sigma)
        rates = ["gamma", "sigma"]
        if recipe.flip_optimizer == "Bop":
            bop, rates = st.Bop(groups.flip, recipe.bop_threshold, recipe.bop_gamma), ["gamma"]
        optimizers.append(bop)
        floor = recipe.gamma_floor
        decay = st.optim.HyperparameterSchedule(bop, rates, lambda t: max(1 - t / total, floor))
        schedules.append(decay)
    average = None
    if recipe.average:
        ema = swa_utils.get_ema_multi_avg_fn(recipe.average)
        average = swa_utils.AveragedModel(model, multi_avg_fn=ema)
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
            if average is not None:
                average.update_parameters(model)
            if tracker is not None:
                tracker.update()
            total_loss += float(loss.detach()) * len(idx)
        run.epoch_seconds.append(time.perf_counter() - start)
        run.losses.append(total_loss / len(data.x_train))
        run.test_accuracies.append(accuracy(model, data.x_test, data.y_test))
    if average is not None:
        with torch.no_grad():  # float and latent tensors: any finite value is allowed
            for mine, averaged in zip(model.parameters(), average.module.parameters(), strict=True):
                mine.copy_(averaged)
    if recipe.reestimate_batchnorm or average is not None:  # the average's own statistics
        st.reestimate_batchnorm(model, data.x_train.split(256))
        run.test_accuracies[-1:] = [accuracy(model, data.x_test, data.y_test)]
    run.accuracy = (
        run.test_accuracies[-1]
        if run.test_accuracies
        else accuracy(model, data.x_test, data.y_test)
    )
    sizes = st.summary(model)
    run.packed_bytes, run.float32_bytes = sizes.packed_bytes, sizes.float32_bytes
    return run


def fit_bop(
    layer: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int = 150,
    batch: int = 128,
    seed: int = 0,
) -> nn.Module:
    """Mean-squared-error regression of a flip-constrained ``layer`` by flips alone:
    [`Bop2ndOrder`][snapset.torch.Bop2ndOrder] with its defaults, both rates decaying linearly
    to 1% over the run.

    Examples:
        >>> import snapset
        >>> from snapset.demo import planted_binary_matrix
        >>> planted, x, y = planted_binary_matrix()
        >>> layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), "flip")
        >>> bool(torch.equal(fit_bop(layer, x, y).weight, planted))
        True
    """
    draws = torch.Generator().manual_seed(seed)
    optimizer = st.Bop2ndOrder(st.param_groups(layer).flip)
    settle = st.optim.HyperparameterSchedule(
        optimizer, ["gamma", "sigma"], lambda t: max(1 - t / steps, 0.01)
    )
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=draws)
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x[idx]), y[idx]).backward()
        optimizer.step()
        settle.step()
    return layer
