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
from typing import TypeVar, cast

__all__ = ["run_shares", "spans"]

ResultT = TypeVar("ResultT")

_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def spans(n: int, count: int, least: int, align: int = 1) -> list[tuple[int, int]]:
    """At most ``count`` shares of ``range(n)``, none under ``least`` items but one, each a
    ``(start, stop)`` pair whose start is a multiple of ``align``.

    Examples:
        >>> spans(10, 3, 1)
        [(0, 3), (3, 6), (6, 10)]
        >>> spans(10, 3, 8)  # too little work for a second share
        [(0, 10)]
        >>> spans(300, 4, 1, align=64)
        [(0, 64), (64, 128), (128, 192), (192, 300)]
    """
    shares = max(1, min(count, n // max(1, least, align)))
    cuts = [n * i // shares // align * align for i in range(shares)]
    return list(itertools.pairwise([*cuts, n]))


def run_shares(
    work: Callable[[int, int], ResultT], shares: list[tuple[int, int]], threads: int
) -> list[ResultT]:
    """``[work(start, stop) for each share]``, shared out between the calling thread and up to
    ``threads - 1`` threads of the pool: each thread takes the next share not yet taken, so a
    pool thread that starts late (its core busy, for example with the OpenMP threads of a
    torch operation just before, which spin a while before they sleep) takes fewer shares or
    none, and the caller does the rest.

    Examples:
        >>> run_shares(lambda start, stop: stop - start, spans(10, 2, 1), threads=2)
        [5, 5]
    """
    if len(shares) == 1:
        return [work(*shares[0])]
    results: list[ResultT | None] = [None] * len(shares)
    errors: list[BaseException] = []
    taken = itertools.count()  # next() on it is atomic under the GIL
    finished = threading.Semaphore(0)

    def take() -> None:
        while (index := next(taken)) < len(shares):
            try:
                results[index] = work(*shares[index])
            except BaseException as error:  # raised in the caller, once every share is done
                errors.append(error)
            finished.release()

    for _ in range(min(len(shares), threads, os.cpu_count() or 1) - 1):
        _pool().submit(take)
    take()
    for _ in shares:  # shares taken and done: a pool thread that never started is not waited for
        finished.acquire()
    if errors:
        raise errors[0]
    return cast(list[ResultT], results)


def _pool() -> ThreadPoolExecutor:
    """As many threads as the machine has cores, made once a process (a forked child has none
    of its parent's threads, so it makes its own)."""
    with _POOL_LOCK:
        pid = os.getpid()
        if pid not in _POOL:
            _POOL.clear()
            _POOL[pid] = ThreadPoolExecutor(os.cpu_count() or 1, "snapset-kernels")
        return _POOL[pid]
