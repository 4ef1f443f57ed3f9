"""Real data, generated or shipped offline: MNIST-1D (the ``mnist1d`` package) and
scikit-learn's 8x8 digits. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """A data set's train and test tensors; ``x`` is ``(N, 1, 40)`` or ``(N, 64)`` float32.

    Examples:
        >>> d = digits()
        >>> small = Split("digits", d.x_train[:256], d.y_train[:256], d.x_test, d.y_test)
        >>> small.name, len(small.x_train)
        ('digits', 256)
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def mnist1d(seed: int = 42) -> Split:
    """MNIST-1D, generated offline by the ``mnist1d`` package (paper defaults: 4000/1000, 42).

    Examples:
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

    Examples:
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


def datasets() -> dict[str, Split]:
    """Both data sets of the accuracy table, by name.

    Examples:
        >>> list(datasets())
        ['MNIST-1D', 'digits']
    """
    return {"MNIST-1D": mnist1d(), "digits": digits()}
