"""Layers whose arithmetic is snapset's own (constraints on torch's layers need no clones)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._sets import ValueSet
from ._constrain import constrain


class Multiplier(nn.Module):
    """``y = x * w``: a learned per-feature multiplier whose entries lie in a value set.

    The forum's "LearnableMultiplier", done right: ``w`` has ``num_features`` entries, always
    exact members of ``values``, trained through ``method`` (see
    :func:`snapset.torch.constrain`; method options go through ``**options``). ``x`` may have any
    leading dimensions; its last one has ``num_features`` entries.

    Example:
        >>> import torch, snapset.torch as st
        >>> layer = st.Multiplier(4, [1, -1, 0.5, -0.5])
        >>> sorted(layer.weight.tolist())
        [-1.0, -0.5, 0.5, 1.0]
        >>> layer(torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    weight: Tensor

    def __init__(
        self,
        num_features: int,
        values: ValueSet | list[float] | tuple[float, ...],
        method: str = "ste",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: float | str,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features} (must be >= 1)")
        self.num_features = num_features
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        nn.init.uniform_(self.weight, -1.0, 1.0)
        constrain(self, "weight", values, method, **options)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"
