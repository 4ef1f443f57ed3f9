"""Compiled kernels of flip training over numpy views of CPU tensors.

- ``flip_step``: one flip-optimizer step. ``snapset.torch.Bop`` calls it for CPU tensors of
  float32 and float64; it computes what Bop's torch operations would, bit for bit (the
  averages, the test, the move and the momentum reset), in one pass over the entries instead of
  a dozen, split between threads.
- ``recode``: the codes, flips and histogram that ``snapset.torch.FlipTracker`` records, as
  thermometer bit planes (an eighth of a byte a boundary and entry), in one sweep a boundary
  instead of a pass per comparison, count and histogram.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._spec import MOMENTUM_RESETS
from ._loader import KernelLoader
from ._threads import run_shares, spans

__all__ = ["bits_of_planes", "codes_of_planes", "compiled", "flip_step", "plane_shape", "recode"]

Floats = npt.NDArray[np.floating[Any]]


def flip_step(
    values: Floats,
    momentum: Floats,
    grad: Floats,
    second: Floats | None,
    *,
    gamma: float,
    sigma: float,
    correction: float,
    threshold: float,
    stride: float | None,
    table: Floats,
    midpoints: Floats,
    momentum_reset: str,
    threads: int = 1,
) -> int | None:
    """One step of ``snapset.torch.Bop`` on flat arrays, in place; returns how many moved.

    ``momentum`` moves towards ``grad`` at rate ``gamma``; ``second`` (or None) holds each
    entry's second moment ``v``, which moves at rate ``sigma``, and an entry then moves where
    ``m * m > (v / correction) * threshold**2``; else where ``|m| > threshold``. ``stride``
    (or None) is the gap of an evenly spaced set. ``threads`` threads take a share of the
    entries each (the result is the same for any number). Returns None, having changed nothing,
    where numba is not there (the caller then computes the same with its own operations).
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return None
    real = values.dtype.type
    arguments = (
        values,
        momentum,
        grad,
        second if second is not None else values[:0],
        real(gamma),
        real(sigma),
        real(1.0 - sigma),  # as torch rounds mul_(1 - sigma): once, from float64
        real(correction),
        real(threshold * threshold if second is not None else threshold),
        real(stride or 0.0),
        table.astype(real, copy=False),
        midpoints.astype(real, copy=False),
        MOMENTUM_RESETS.index(momentum_reset),
    )
    shares = spans(values.shape[0], threads, _SHARE)
    step = lambda start, stop: int(kernels.step(*arguments, start, stop))  # noqa: E731
    return sum(run_shares(step, shares, threads))


# Entries a thread takes at least: below that, starting a thread costs more than it saves.
_SHARE = 1 << 20


def recode(
    read: Floats,
    boundaries: Floats,
    previous: npt.NDArray[np.uint8],
    planes: npt.NDArray[np.uint8],
    last: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]],
    histogram: npt.NDArray[np.int64],
    threads: int = 1,
) -> tuple[int, int] | None:
    """Fill ``planes`` with the codes of the flat ``read`` against the sorted ``boundaries``,
    as thermometer bit planes (``plane_shape``: bit ``i`` of ``planes[j, b]`` says whether
    entry ``8 b + i`` reaches boundary ``j``), and ``histogram`` with how many entries have
    each code; return how many codes differ from ``previous`` (planes of the same shape) and
    how many of those oscillated (``snapset._oscillation``: their code moved against the
    direction of their previous change). ``last``, two planes ``(went_up, went_down)`` of
    the size of one of ``planes``, holds each entry's last direction: bit ``i`` of
    ``went_up[b]`` is set where entry ``8 b + i`` last went up, of ``went_down[b]`` where it
    last went down (both 0 at the start); it is updated. One compiled sweep, split between
    ``threads``. None, having changed nothing, where numba is not there.

    Examples:
        >>> import numpy as np
        >>> read = np.array([-1.0, 0.0, 1.0, 1.0], np.float32)  # codes 0, 1, 2, 2
        >>> bounds = np.array([-0.5, 0.5], np.float32)
        >>> previous = np.zeros(plane_shape(4, 3), np.uint8)  # every code 0
        >>> planes, histogram = np.empty_like(previous), np.empty(3, np.int64)
        >>> last = np.zeros(1, np.uint8), np.zeros(1, np.uint8)  # no change yet
        >>> recode(read, bounds, previous, planes, last, histogram)  # with numba
        (3, 0)
        >>> planes.tolist(), histogram.tolist(), [went.tolist() for went in last]  # 3 went up
        ([[14], [12]], [1, 1, 2], [[14], [0]])
        >>> codes_of_planes(planes, 4).tolist()
        [0, 1, 2, 2]
        >>> back = np.array([-1.0, 0.0, 0.0, 1.0], np.float32)  # entry 2 goes back down
        >>> recode(back, bounds, planes, previous, last, histogram)
        (1, 1)
    """
    kernels = _KERNELS.module()
    if kernels is None:
        return None
    bounds = boundaries.astype(read.dtype, copy=False)

    def share(start: int, stop: int) -> tuple[int, int, npt.NDArray[np.int64]]:
        counts = np.zeros_like(histogram)
        changed, oscillated = kernels.recode(
            read, bounds, previous, planes, *last, counts, start, stop
        )
        return int(changed), int(oscillated), counts

    results = run_shares(share, spans(planes.shape[1], threads, _SHARE // 8), threads)
    histogram[:] = np.sum([counts for _, _, counts in results], axis=0)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def plane_shape(n: int, k: int) -> tuple[int, int]:
    """The shape of the bit planes of ``n`` codes of a ``k``-value set (``recode``)."""
    return k - 1, -(-n // 8)


def codes_of_planes(planes: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.uint8]:
    """The ``n`` codes that thermometer bit ``planes`` hold (how many of an entry's bits are
    set)."""
    codes: npt.NDArray[np.uint8] = bits_of_planes(planes, n).sum(axis=0, dtype=np.uint8)
    return codes


def bits_of_planes(planes: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.bool_]:
    """The bits of ``n`` entries that bit ``planes`` hold, a bool each, one row a plane (for
    ``recode``'s ``last``, turned into the ``last`` of ``snapset._oscillation.changes``)."""
    bits = np.unpackbits(planes, axis=1, count=8 * planes.shape[1], bitorder="little")
    return bits[:, :n].astype(bool)


def compiled() -> bool:
    """Whether the compiled kernels run here (numba installed and working).

    Examples:
        >>> compiled() in (True, False)
        True
    """
    return _KERNELS.module() is not None


def _warm_up(kernels: ModuleType) -> None:
    """Compile for float32 and float64: the step with per-tensor and per-entry thresholds,
    and the codes of the flip tracker."""
    for dtype in (np.float32, np.float64):
        real = dtype
        values, ones = np.zeros(1, dtype), np.ones(1, dtype)
        table, midpoints = np.array([-1, 0, 1], dtype), np.array([-0.5, 0.5], dtype)
        for second in (values[:0], ones.copy()):
            scalars = [real(x) for x in (0.5, 0.5, 0.5, 1.0, 0.5, 1.0)]
            kernels.step(values, ones.copy(), ones, second, *scalars, table, midpoints, 0, 0, 1)
        planes, went = np.zeros(plane_shape(1, 3), np.uint8), np.zeros(1, np.uint8)
        histogram = np.zeros(3, np.int64)
        kernels.recode(values, midpoints, planes, planes.copy(), went, went.copy(), histogram, 0, 1)


_KERNELS = KernelLoader("snapset's flip-optimizer step", "snapset._kernels._flip_numba", _warm_up)
