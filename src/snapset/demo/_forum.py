"""The two problems users keep asking about on forums, as planted problems with noisy data.

Shared by ``snapset demo`` and the tests: a {0, 1} matrix behind a linear map, and a learnable
multiplier with entries in a value set, each next to the answer the forums gave.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

import snapset

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def planted_binary_matrix(
    seed: int = 0, samples: int = 2048, noise: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, x, y)`` with ``W`` a random 64x32 {0, 1} matrix and ``y = x W^T + noise``.

    Examples:
        >>> planted, x, y = planted_binary_matrix()
        >>> tuple(planted.shape), tuple(x.shape), tuple(y.shape)
        ((64, 32), (2048, 32), (2048, 64))
        >>> planted.unique().tolist()
        [0.0, 1.0]
    """
    g = torch.Generator().manual_seed(seed)
    planted = torch.randint(0, 2, (64, 32), generator=g).float()
    x = torch.randn(samples, 32, generator=g)
    y = x @ planted.T + noise * torch.randn(samples, 64, generator=g)
    return planted, x, y


def planted_multiplier(
    values: snapset.ValueSet,
    seed: int = 0,
    features: int = 64,
    samples: int = 2048,
    noise: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(w, x, y)`` with ``w`` drawn from ``values`` and ``y = x * w + noise``.

    Examples:
        >>> planted, x, y = planted_multiplier(snapset.Sign(), features=8)
        >>> tuple(x.shape), set(planted.tolist()) <= {-1.0, 1.0}
        ((2048, 8), True)
    """
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, len(values), (features,), generator=g)
    planted = torch.tensor(values.values)[codes]
    x = torch.randn(samples, features, generator=g)
    y = x * planted + noise * torch.randn(samples, features, generator=g)
    return planted, x, y


def fit_adam(
    model: ModuleT,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float = 1e-3,
    batch: int = 64,
    seed: int = 0,
    anneal: bool = False,
) -> ModuleT:
    """Mean-squared-error regression with Adam, shuffled mini-batches; returns ``model``.

    ``anneal``: the learning rate falls to zero along a cosine over the run. Once a latent
    weight's value is right, its gradient is noise alone, which Adam scales up to steps of
    about ``lr``: at a constant rate, a latent near a boundary keeps crossing it and may end a
    run on the wrong side; annealed, it settles.

    Examples:
        >>> import snapset.torch as st
        >>> planted, x, y = planted_multiplier(snapset.Sign(), seed=3)
        >>> layer = fit_adam(st.Multiplier(64, snapset.Sign()), x, y, epochs=12, lr=3e-3)
        >>> bool(torch.equal(layer.eval().weight, planted))
        True
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if anneal else None
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    return model


class ReluSigmoidAnswer(nn.Linear):
    """The forum's answer for a {0, 1} weight: ``relu(sigmoid(w) - 0.9)``, whose range is
    ``[0, 0.1)``: it can never be 1.

    Examples:
        >>> answer = ReluSigmoidAnswer(32, 64, bias=False)
        >>> float(answer.effective_weight().detach().max()) < 0.1
        True
    """

    def effective_weight(self) -> Tensor:
        """The weight the layer multiplies by."""
        return torch.relu(torch.sigmoid(self.weight) - 0.9)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


class SigmoidAnswer(nn.Linear):
    """The other forum answer: ``sigmoid(50 w)``: near {0, 1}, never exactly, and its gradient
    vanishes once an entry saturates.

    Examples:
        >>> answer = SigmoidAnswer(32, 64, bias=False)
        >>> weight = answer.effective_weight()
        >>> bool(((weight > 0) & (weight < 1)).all())  # never exactly 0 or 1
        True
    """

    def effective_weight(self) -> Tensor:
        """The weight the layer multiplies by."""
        return torch.sigmoid(50 * self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


class SignAnswer(nn.Module):
    """The forum's multiplier: ``x * sign(w)``. The derivative of sign is zero almost
    everywhere, so ``w`` never moves.

    Examples:
        >>> answer = SignAnswer(8)
        >>> answer(torch.ones(1, 8)).sum().backward()
        >>> bool(answer.weight.grad.eq(0).all())
        True
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(features).uniform_(-1, 1))

    def effective_weight(self) -> Tensor:
        """The weight the layer multiplies by: ``sign(w)``."""
        return torch.sign(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.effective_weight()
