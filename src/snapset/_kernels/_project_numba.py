"""The numba-compiled projection and estimators of the latent methods (imported on first use
by ``_project``).

No ``fastmath``: each gradient entry is computed in the order and precision of the torch
operations of ``snapset.torch``'s estimators (a 0/1 mask times the gradient times the slope),
so both give the same bits, signed zeros and NaNs included; the values are looked up in the
table, never computed. Each kernel works on the entries ``start:stop`` through slices of that
range, which LLVM vectorises (indexing the whole arrays from ``start`` it does not).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

# Entries coded at a time by ``nearest``: the codes of one block stay in the L1 cache.
_BLOCK = 1024


@numba.njit(nogil=True, error_model="numpy")
def nearest(latent: Any, thresholds: Any, table: Any, out: Any, start: int, stop: int) -> None:
    """``out = table[j]`` where ``latent`` reaches ``j`` of the sorted ``thresholds``."""
    read, write = latent[start:stop], out[start:stop]
    if thresholds.size == 1:  # two values: one select an entry
        cut, low, high = thresholds[0], table[0], table[1]
        for i in range(read.size):
            write[i] = high if read[i] >= cut else low
        return
    codes = np.empty(_BLOCK, np.uint8)
    for first in range(0, read.size, _BLOCK):
        block, written = read[first : first + _BLOCK], write[first : first + _BLOCK]
        count = codes[: block.size]
        for i in range(block.size):
            count[i] = block[i] >= thresholds[0]
        for j in range(1, thresholds.size):
            cut = thresholds[j]
            for i in range(block.size):
                count[i] += block[i] >= cut
        for i in range(block.size):
            written[i] = table[count[i]]


@numba.njit(nogil=True, error_model="numpy")
def inward(latent: Any, grad: Any, scale: Any, bound: Any, out: Any, start: int, stop: int) -> None:
    """``out = keep * grad * scale``, ``keep = (clamp(latent, -bound, bound) - latent) * grad
    <= 0``: what ``snapset.torch``'s ``inward`` computes."""
    read, incoming, write = latent[start:stop], grad[start:stop], out[start:stop]
    one, zero = np.ones(1, read.dtype)[0], np.zeros(1, read.dtype)[0]
    for i in range(read.size):
        u, g = read[i], incoming[i]
        keep = one if (min(max(u, -bound), bound) - u) * g <= zero else zero
        write[i] = keep * g * scale


@numba.njit(nogil=True, error_model="numpy")
def clip(latent: Any, grad: Any, scale: Any, bound: Any, out: Any, start: int, stop: int) -> None:
    """``out = (|latent| <= bound) * grad * scale``: ``snapset.torch``'s ``clip``."""
    read, incoming, write = latent[start:stop], grad[start:stop], out[start:stop]
    one, zero = np.ones(1, read.dtype)[0], np.zeros(1, read.dtype)[0]
    for i in range(read.size):
        keep = one if abs(read[i]) <= bound else zero
        write[i] = keep * incoming[i] * scale
