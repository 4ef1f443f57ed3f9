"""Bop's options and their checks, shared by the PyTorch and Keras fronts.

Both fronts refuse the same input with the same message, so this lives apart from either.
"""

from __future__ import annotations

import math
from typing import Any

THRESHOLD_MODES = ("abs", "rel")
"""``"abs"``: move when ``|m| > threshold``. ``"rel"``: when ``|m| > threshold * rms(g)``."""

MOMENTUM_RESETS = ("interior", "always", "never")
"""Which moved entries restart their momentum from 0 (see ``snapset.torch.Bop``)."""


def check_bop_options(threshold: Any, gamma: Any, threshold_mode: Any, momentum_reset: Any) -> None:
    """Refuse a hyperparameter of Bop that is out of range or of the wrong kind.

    Example:
        >>> check_bop_options(1e-8, 1e-4, "abs", "interior")
        >>> check_bop_options(1e-8, 0.0, "abs", "interior")
        Traceback (most recent call last):
        ValueError: Invalid gamma: 0.0 (must be in (0, 1])
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"Invalid threshold: {threshold!r} (must be a float)")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"Invalid gamma: {gamma!r} (must be a float)")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"Invalid threshold: {threshold} (must be finite and >= 0)")
    if not 0 < gamma <= 1:
        raise ValueError(f"Invalid gamma: {gamma} (must be in (0, 1])")
    for name, value, valid in (
        ("threshold_mode", threshold_mode, THRESHOLD_MODES),
        ("momentum_reset", momentum_reset, MOMENTUM_RESETS),
    ):
        if value not in valid:
            raise ValueError(f"Invalid {name}: {value!r} (valid: {', '.join(map(repr, valid))})")
