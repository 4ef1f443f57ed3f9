"""Threads for the compiled kernels: shares of one call's work, run side by side.

Every kernel releases the GIL (``nogil=True``), so plain Python threads run its shares in
parallel. Each share covers its own outputs (or entries) and computes them exactly as one thread
would, in the same order, so a result does not depend on the number of threads.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["run_shares", "spans"]

ResultT = TypeVar("ResultT")

_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def spans(n: int, threads: int, least: int) -> list[tuple[int, int]]:
    """At most ``threads`` shares of ``range(n)``, none under ``least`` items but one, each a
    ``(start, stop)`` pair.

    Examples:
        >>> spans(10, 3, 1)
        [(0, 3), (3, 6), (6, 10)]
        >>> spans(10, 3, 8)  # too little work for a second thread
        [(0, 10)]
    """
    shares = max(1, min(threads, n // max(1, least)))
    return list(itertools.pairwise([n * i // shares for i in range(shares + 1)]))


def run_shares(work: Callable[[int, int], ResultT], shares: list[tuple[int, int]]) -> list[ResultT]:
    """``[work(start, stop) for each share]``, the first in the calling thread and the others
    in the pool at the same time.

    Examples:
        >>> run_shares(lambda start, stop: stop - start, spans(10, 2, 1))
        [5, 5]
    """
    if len(shares) == 1:
        return [work(*shares[0])]
    others = [_pool().submit(work, *share) for share in shares[1:]]
    first = work(*shares[0])
    return [first, *(future.result() for future in others)]


def _pool() -> ThreadPoolExecutor:
    """As many threads as the machine has cores, made once a process (a forked child has none
    of its parent's threads, so it makes its own)."""
    with _POOL_LOCK:
        pid = os.getpid()
        if pid not in _POOL:
            _POOL.clear()
            _POOL[pid] = ThreadPoolExecutor(os.cpu_count() or 1, "snapset-kernels")
        return _POOL[pid]
