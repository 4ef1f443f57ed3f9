"""The two problems users keep asking about on forums, as planted problems with noisy data.

Shared by ``snapset demo`` and the tests: a {0, 1} matrix behind a linear map, and a learnable
multiplier with entries in a value set, each next to the answer the forums gave.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from .._sets import ValueSet

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def planted_binary_matrix(
    seed: int = 0, samples: int = 2048, noise: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, x, y)`` with ``W`` a random 64x32 {0, 1} matrix and ``y = x W^T + noise``."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.randint(0, 2, (64, 32), generator=g).float()
    x = torch.randn(samples, 32, generator=g)
    y = x @ planted.T + noise * torch.randn(samples, 64, generator=g)
    return planted, x, y


def planted_multiplier(
    values: ValueSet, seed: int = 0, features: int = 64, samples: int = 2048, noise: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """``(w, x, y)`` with ``w`` drawn from ``values`` and ``y = x * w + noise``."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, len(values), (features,), generator=g)
    planted = torch.tensor(values.values)[codes]
    x = torch.randn(samples, features, generator=g)
    y = x * planted + noise * torch.randn(samples, features, generator=g)
    return planted, x, y


def fit(
    model: ModuleT,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float = 1e-3,
    batch: int = 64,
    seed: int = 0,
) -> ModuleT:
    """Mean-squared-error regression with Adam, shuffled mini-batches; returns ``model``."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


class ReluSigmoidAnswer(nn.Linear):
    """The forum's answer for a {0, 1} weight: ``relu(sigmoid(w) - 0.9)``, whose range is
    ``[0, 0.1)``: it can never be 1."""

    def effective_weight(self) -> Tensor:
        return torch.relu(torch.sigmoid(self.weight) - 0.9)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


class SigmoidAnswer(nn.Linear):
    """The other forum answer: ``sigmoid(50 w)``: near {0, 1}, never exactly, and its gradient
    vanishes once an entry saturates."""

    def effective_weight(self) -> Tensor:
        return torch.sigmoid(50 * self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


class SignAnswer(nn.Module):
    """The forum's multiplier: ``x * sign(w)``. The derivative of sign is zero almost
    everywhere, so ``w`` never moves."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(features).uniform_(-1, 1))

    def effective_weight(self) -> Tensor:
        return torch.sign(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.effective_weight()
