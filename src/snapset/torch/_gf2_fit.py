"""``GF2Linear.from_samples``: a GF(2) layer started from data by decoding (``gf2.lstsq``)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .. import gf2
from ..gf2._bits import to_bits

if TYPE_CHECKING:
    from ._layers import GF2Linear


def _as_rows(data: Any, name: str, width: int | None) -> np.ndarray:
    array = data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)
    if array.ndim < 1 or (width is not None and array.shape[-1] != width):
        raise ValueError(
            f"GF2Linear.from_samples: {name} must have shape (..., features), got "
            f"{tuple(array.shape)}"
        )
    return array.reshape(-1, array.shape[-1])


def from_samples(
    cls: type[GF2Linear],
    x: Any,
    y: Any,
    *,
    probability: float = 0.95,
    seed: int = 0,
    budget: int = 100_000,
    miss: float = 1e-6,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> GF2Linear:
    """A ``GF2Linear`` whose weight is the GF(2)-linear map that best fits samples: an
    algebraic start, to train end to end from.

    ``x`` is ``(..., in_features)`` and ``y`` ``(..., out_features)``, 0/1 tensors or arrays.
    The weight is ``gf2.lstsq(x, y).x.T``, the map that breaks the fewest labels (found by
    information-set decoding, exact for label noise well below the limits in the GF(2) guide;
    ``seed``, ``budget`` and ``miss`` go to [`snapset.gf2.lstsq`][]). Each weight starts at
    probability ``probability`` of its value (logit ``+-log(p / (1 - p))``, 2.9 for 0.95), not
    at certainty, so that gradients still reach it when training continues. A warning says so
    when ``lstsq`` ran out of budget before its stopping rule was met.

    Examples:
        >>> import torch, snapset.torch as st
        >>> x = torch.randint(0, 2, (512, 32), generator=torch.Generator().manual_seed(0))
        >>> planted = torch.eye(32)[:4] + torch.eye(32)[4:8]   # y_j = x_j xor x_(j+4)
        >>> y = (x.float() @ planted.T) % 2
        >>> y[::10, 0] = 1 - y[::10, 0]                        # 10% of one output's labels wrong
        >>> layer = st.GF2Linear.from_samples(x, y)
        >>> torch.equal(layer.weight, planted)
        True
        >>> round(layer.probs.max().item(), 2)
        0.95
    """
    if not 0.5 < probability < 1.0:
        raise ValueError(
            f"GF2Linear.from_samples: probability must be in (0.5, 1), got {probability}; it is "
            f"how sure each started weight is of its value"
        )
    inputs = _as_rows(x, "x", None)
    labels = _as_rows(y, "y", None)
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"GF2Linear.from_samples: x has {inputs.shape[0]} samples but y has "
            f"{labels.shape[0]}; give one row of labels per input row"
        )
    # Checked here so that a message names x and y rather than lstsq's a and b.
    inputs, _ = to_bits(inputs, "x", "lstsq")
    labels, _ = to_bits(labels, "y", "lstsq")
    found = gf2.lstsq(inputs, labels, seed=seed, budget=budget, miss=miss)
    if not found.converged.all():
        unsure = np.flatnonzero(~found.converged).tolist()
        warnings.warn(
            f"GF2Linear.from_samples: gf2.lstsq used its budget of {budget} iterations before "
            f"its stopping rule was met for outputs {unsure}: those rows are the best found, "
            f"maybe not the best. Raise budget, or give more samples.",
            RuntimeWarning,
            stacklevel=3,
        )
    if device is None and isinstance(x, Tensor):
        device = x.device
    layer = cls(inputs.shape[1], labels.shape[1], device=device, dtype=dtype)
    confidence = math.log(probability / (1 - probability))
    weight = torch.from_numpy(found.x.T.astype(np.float32))
    with torch.no_grad():
        layer.logits.copy_((2 * weight - 1) * confidence)
    return layer
