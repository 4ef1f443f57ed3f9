"""The demo's models: a CNN for MNIST-1D and an MLP for digits, in float or with every
convolution and linear weight in a value set.

Why the models look the way they do: a layer whose weights are all in ``{0, 1}`` can only add
its inputs, never subtract them, so ``W h = (S h + 1^T h) / 2`` with ``S`` in ``{-1, 1}`` carries
a common term ``1^T h`` that drowns the signal. ``Center`` subtracts the mean over channels
before every constrained layer, which makes ``1^T h = 0``: a ``{0, 1}`` layer then computes what a
``{-1, 1}`` layer computes, up to a factor that BatchNorm absorbs. The input is fed as
``[x, -x]`` (``PlusMinus``) for the same reason. Neither adds a parameter, and every
variant (float included) uses the same architecture.

A user meets neither trick: the plain CNN (``cnn(tricks=False)``, ``build(..., plain=True)``)
is the network on which snapset's defaults are judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import snapset
import snapset.torch as st

FOUR_VALUES = snapset.ValueSet([1, -1, 0.5, -0.5])
"""The forum's multiplier values, ``[1, -1, 0.5, -0.5]``."""

SETS: dict[str, snapset.ValueSet | None] = {
    "float": None,
    "sign": snapset.Sign(),
    "binary": snapset.Binary(),
    "ternary": snapset.Ternary(),
    "four": FOUR_VALUES,
}
"""The weight sets the experiments compare, by short name (``None``: float weights)."""

SET_LABELS = {
    "float": "float32",
    "sign": "Sign {-1, 1}",
    "binary": "Binary {0, 1}",
    "ternary": "Ternary {-1, 0, 1}",
    "four": "[1, -1, 0.5, -0.5]",
}
"""How the tables and plots name each of ``SETS``."""


class Center(nn.Module):
    """Subtract the mean over channels (dimension 1): ``h - mean_c(h)``; no parameters.

    Examples:
        >>> float(Center()(torch.tensor([[1.0, 2.0, 6.0]])).sum())
        0.0
    """

    def forward(self, h: Tensor) -> Tensor:
        return h - h.mean(dim=1, keepdim=True)


class PlusMinus(nn.Module):
    """Feed ``[x, -x]`` along the channels, so that ``{0, 1}`` weights can subtract inputs.

    Examples:
        >>> PlusMinus()(torch.tensor([[1.0, 2.0]])).tolist()
        [[1.0, 2.0, -1.0, -2.0]]
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, -x], dim=1)


def cnn(
    width: int = 64, kernel: int = 5, length: int = 40, classes: int = 10, tricks: bool = True
) -> nn.Sequential:
    """The MNIST-1D CNN: three convolutions (stride 1, 2, 2), BatchNorm, ReLU, a linear head.

    The MNIST-1D paper's CNN has 25 channels; this one is wider (``width``), normalised, and
    has no biases (BatchNorm follows every weight). ``tricks=False``: the plain network a user
    writes, without the ``[x, -x]`` input and the centring.

    Examples:
        >>> tuple(cnn()(torch.zeros(2, 1, 40)).shape)
        (2, 10)
        >>> [type(m).__name__ for m in cnn(tricks=False)[:4]]
        ['Conv1d', 'BatchNorm1d', 'ReLU', 'Conv1d']
    """
    pad = kernel // 2
    layers: list[nn.Module] = [PlusMinus()] if tricks else []
    channels = 2 if tricks else 1
    for stride in (1, 2, 2):
        layers += [
            nn.Conv1d(channels, width, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        ]
        layers += [Center()] if tricks else []
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

    Examples:
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
"""The architecture of each data set, by the data set's name."""


def build(
    dataset: str,
    set_name: str,
    method: str = "ste",
    seed: int = 0,
    plain: bool = False,
    **options: Any,
) -> nn.Sequential:
    """The architecture for ``dataset``, every conv and linear weight constrained to a set.

    One [`constrain_`][snapset.torch.constrain_] call makes the float model binary; ``set_name`` is
    a key of ``SETS`` (``"float"`` leaves it as it is). ``plain``: the MNIST-1D CNN without the
    ``[x, -x]`` input and the centring (``cnn(tricks=False)``), as a user writes it.
    ``options`` go to ``constrain_`` (``dither=0.25``).

    Examples:
        >>> model = build("digits", "sign")
        >>> sorted(model[1].weight.unique().tolist())
        [-1.0, 1.0]
    """
    if dataset not in ARCHITECTURES:
        raise ValueError(f"Unknown dataset {dataset!r}; valid: {', '.join(ARCHITECTURES)}")
    if set_name not in SETS:
        raise ValueError(f"Unknown set {set_name!r}; valid: {', '.join(SETS)}")
    if plain and dataset != "MNIST-1D":
        raise ValueError(f"plain=True is the MNIST-1D CNN; {dataset!r} has no plain variant")
    torch.manual_seed(seed)
    model = cnn(tricks=False) if plain else ARCHITECTURES[dataset]()
    values = SETS[set_name]
    if values is not None:
        st.constrain_(model, values, method=method, **options)
    return model
