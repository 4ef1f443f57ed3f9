"""Loading a module of numba kernels once a process, whatever the install.

The packed kernels (``snapset._kernels``) and the GF(2) kernels (``snapset.gf2``) both load
through a ``KernelLoader``. Their kernels are defined without numba's ``cache=True``: that would
fail on a read-only install without ``NUMBA_CACHE_DIR`` ("cannot cache function") and raise
whatever unpickling a damaged cache file raises, in the middle of a user's call. Instead, on
first use and under a lock (threads racing the first call all wait for one load and none runs
half-loaded kernels), the loader turns the cache on and runs every kernel once on tiny
arguments of the types that real calls use, so that all of them are compiled, or loaded from
the cache, before any is handed out. Where the cache cannot be used, a fresh copy of the module
(whose kernels have no cache attached) compiles instead; where numba is missing or still fails,
the caller's numpy versions run. Either way one ``RuntimeWarning`` a process says why, and so
does ``explain()``.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

__all__ = ["KernelLoader"]


class KernelLoader:
    """The numba kernels of ``module`` (an absolute module name), loaded on first use.

    ``what`` names them in the warning (``"snapset's packed kernels"``); ``warm_up`` calls every
    kernel of a freshly imported module once, with arguments of the types of real calls.
    """

    def __init__(self, what: str, module: str, warm_up: Callable[[ModuleType], None]) -> None:
        self._what = what
        self._module = module
        self._warm_up = warm_up
        self._state: tuple[ModuleType | None, str] | None = None
        self._lock = threading.Lock()

    def module(self) -> ModuleType | None:
        """The compiled kernels' module; None where the numpy versions are to run instead."""
        return self._loaded()[0]

    def explain(self) -> str:
        """Which kernels run and why, a sentence that starts with ``numba`` or ``numpy``."""
        return self._loaded()[1]

    def _loaded(self) -> tuple[ModuleType | None, str]:
        # Read on every call, so that setting it at run time (tests, benchmarks) takes effect.
        if os.environ.get("SNAPSET_KERNELS", "").lower() == "numpy":
            return None, "numpy, because SNAPSET_KERNELS=numpy is set"
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = self._load()
        return self._state

    def _load(self) -> tuple[ModuleType | None, str]:
        """Import the kernels and compile them for this CPU, from numba's cache where it can.

        Without a writable cache directory, or with cache files that do not load (truncated,
        corrupt), the kernels compile afresh, uncached, with a warning: every process then pays
        the compile time. Where even that fails, the numpy versions run.
        """
        try:
            kernels = importlib.import_module(self._module)
        except ImportError as error:
            return None, (
                f"numpy, because numba is not installed ({error}): pip install 'snapset[kernels]'"
            )
        try:
            folder = _enable_cache(kernels)
        except RuntimeError as error:  # numba's "cannot cache function": no writable directory
            problem = (
                f"no writable cache directory ({error}); set NUMBA_CACHE_DIR to a writable "
                "folder to compile them once"
            )
        else:
            try:
                self._warm_up(kernels)
            except Exception as error:  # a damaged cache file can raise anything
                problem = (
                    f"its files in {folder} do not load ({type(error).__name__}: {error}); "
                    "delete them to compile once and cache again"
                )
            else:
                return kernels, f"numba, compiled for this CPU, cached in {folder}"
        kernels = importlib.reload(kernels)  # a fresh copy: its kernels have no cache attached
        loaded: tuple[ModuleType | None, str]
        try:
            self._warm_up(kernels)
        except Exception as error:  # whatever numba raises, numpy computes the same
            loaded = (
                None,
                (
                    f"numpy, because numba could not compile the kernels ({type(error).__name__}: "
                    f"{error}) after its cache failed: {problem}"
                ),
            )
        else:
            loaded = (
                kernels,
                (
                    "numba, compiled for this CPU without its on-disk cache, so every process "
                    f"compiles them again on its first call (a few seconds): {problem}"
                ),
            )
        warnings.warn(f"{self._what}: {loaded[1]}", RuntimeWarning, stacklevel=4)
        return loaded


def _enable_cache(kernels: ModuleType) -> str:
    """Keep the machine code of every kernel in ``kernels`` in numba's on-disk cache
    (``__pycache__``, or numba's user cache directory where that is read-only); returns the
    cache's folder.

    Raises numba's ``RuntimeError`` ("cannot cache function") when no cache directory is
    writable (a read-only install without ``NUMBA_CACHE_DIR``).
    """
    from numba.core.dispatcher import Dispatcher  # numba is there: ``kernels`` imported it

    dispatchers = [value for value in vars(kernels).values() if isinstance(value, Dispatcher)]
    for dispatcher in dispatchers:
        dispatcher.enable_caching()
    return str(dispatchers[0].stats.cache_path)  # the same folder for every kernel of a module
