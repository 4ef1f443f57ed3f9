"""Compiled kernels of the latent methods' projection, over numpy views of CPU tensors.

A constrained weight trained through a latent pays, each step, for its projection forward
(the nearest values) and its estimator backward (the latent's gradient). torch computes each
as several elementwise passes, a fresh tensor each; here each is one pass, split between
threads. ``snapset.torch`` calls them in eager mode for CPU tensors of float32 and float64 and
gets the same bits as its own operations (under ``torch.compile`` inductor fuses those).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ._loader import KernelLoader
from ._threads import run_shares, spans

__all__ = ["ESTIMATOR_KERNELS", "estimator_grad", "nearest"]

Floats = npt.NDArray[np.floating[Any]]

ESTIMATOR_KERNELS = ("inward", "clip")
"""The estimators with a kernel here (``identity``'s gradient is one multiplication)."""


def nearest(
    latent: Floats, thresholds: Floats, table: Floats, out: Floats, threads: int = 1
) -> bool:
    """Fill the flat ``out`` with ``table[j]`` where the flat ``latent`` reaches ``j`` of the
    sorted ``thresholds`` (``>=``); False, having done nothing, where numba is not there.

    Examples:
        >>> import numpy as np
        >>> out = np.empty(3, np.float32)
        >>> thresholds, table = np.float32([-0.05, 0.05]), np.float32([-1, 0, 1])
        >>> nearest(np.float32([-0.3, 0.05, 0.0]), thresholds, table, out)  # with numba
        True
        >>> out.tolist()
        [-1.0, 1.0, 0.0]
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return False
    real = latent.dtype
    cuts, values = thresholds.astype(real, copy=False), table.astype(real, copy=False)
    run = lambda start, stop: kernels.nearest(latent, cuts, values, out, start, stop)  # noqa: E731
    run_shares(run, spans(latent.size, threads, _SHARE), threads)
    return True


def estimator_grad(
    estimator: str,
    latent: Floats,
    grad: Floats,
    scale: float,
    bound: float,
    out: Floats,
    threads: int = 1,
) -> bool:
    """Fill the flat ``out`` with the gradient that ``estimator`` (one of
    ``ESTIMATOR_KERNELS``) passes to the flat ``latent`` for the incoming ``grad``, in the
    dtype of ``latent`` (``snapset.torch.estimator_grad`` has the closed forms); False, having
    done nothing, where numba is not there.

    Examples:
        >>> import numpy as np
        >>> out = np.empty(3, np.float32)
        >>> u, g = np.float32([0.05, 0.3, 0.3]), np.float32([1, 1, -1])
        >>> estimator_grad("inward", u, g, 10.0, 0.1, out)  # with numba
        True
        >>> out.tolist()  # outside the range, only the step back inward passes
        [10.0, 10.0, -0.0]
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return False
    kernel = getattr(kernels, estimator)
    real = latent.dtype.type
    arguments = (latent, grad, real(scale), real(bound), out)
    run = lambda start, stop: kernel(*arguments, start, stop)  # noqa: E731
    run_shares(run, spans(latent.size, threads, _SHARE), threads)
    return True


# Entries a thread takes at least. The work is bound by memory, and a second thread competes
# with torch's OpenMP threads, which spin a while after each operation: on 2 cores a 1024x1024
# layer trains faster with one thread here (1.18x float at batch 256) than with two (1.33x).
_SHARE = 1 << 20


def _warm_up(kernels: ModuleType) -> None:
    """Compile for float32 and float64: the projection with one and with two thresholds, and
    each estimator."""
    for dtype in (np.float32, np.float64):
        values, out = np.zeros(1, dtype), np.empty(1, dtype)
        for table in (np.array([-1, 1], dtype), np.array([-1, 0, 1], dtype)):
            kernels.nearest(values, (table[1:] + table[:-1]) / 2, table, out, 0, 1)
        for estimator in ESTIMATOR_KERNELS:
            getattr(kernels, estimator)(values, values, dtype(1), dtype(1), out, 0, 1)


_KERNELS = KernelLoader("snapset's projection kernels", "snapset._kernels._project_numba", _warm_up)
