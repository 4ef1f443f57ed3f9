"""The packed kernels and gf2's load once, whatever the install: no writable cache directory,
damaged cache files, threads racing the first call. Each case runs in a fresh process (the
kernels load once a process), without torch: the kernels are framework-free. And the flip
tracker's compiled sweep counts flips and oscillations as the core's definition does."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import snapset
from snapset import _kernels
from snapset._kernels import _flip
from snapset._oscillation import changes

SOURCE = Path(snapset.__file__).parent

# Each front's first calls, run from several threads that start together: ``first_call()``
# gives the backend that ran, the kernel and how far the result is from one computed here, and
# ``explain()`` the loader's sentence. The packed kernels multiply a random ternary matrix on
# both paths (lookups, then decoded tiles); gf2's run each of its kernels (M4RM products,
# elimination, Lee-Brickell's step, AND-parity products) on a consistent system.
FRONTS = {
    "packed": """
from snapset import ValueSet, _kernels
values = ValueSet([-1, 0, 1])
rng = np.random.default_rng(0)
codes = rng.integers(0, 3, (9, 23))
m = _kernels.PackedMatrix.from_codes(codes, values)
weight = np.asarray(values.values)[codes]
x = rng.standard_normal((2, 23)).astype(np.float32)
bias = np.zeros(9, dtype=np.float32)

def first_call():
    ran, kernel, y = _kernels.small_matmul(x, m, bias, 8)
    tile = _kernels.decode_rows(m, 0, m.groups, np.empty((m.groups * m.group, 9), np.float32))
    error = max(np.abs(y - x @ weight.T).max(), np.abs(x @ tile[:23] - x @ weight.T).max())
    return ran, kernel, float(error)

def explain():
    return _kernels.backend(explain=True)
""",
    "gf2": """
from snapset import gf2
from snapset.gf2 import _linalg
rng = np.random.default_rng(0)
a = rng.integers(0, 2, (60, 24), dtype=np.uint8)
x = rng.integers(0, 2, (24, 3), dtype=np.uint8)
b = a.astype(np.int64) @ x % 2

def first_call():
    ran = "numpy" if _linalg.compiled() is None else "numba"
    solved = gf2.solve(a, b)
    wrong = np.count_nonzero(gf2.matmul(a, solved) != b)
    wrong += np.count_nonzero(_linalg.parity_products(gf2.pack(a), gf2.pack(x.T)) != b)
    wrong += int(gf2.lstsq(a, b, budget=5).weight.sum())
    return ran, "gf2", float(wrong)

def explain():
    return _linalg._KERNELS.explain()
""",
}
KERNEL = {"packed": "lookup", "gf2": "gf2"}
WHAT = {"packed": "snapset's packed kernels", "gf2": "snapset.gf2's kernels"}

SCRIPT = """
import json, threading, warnings
import numpy as np
catching = warnings.catch_warnings(record=True)
caught = catching.__enter__()
warnings.simplefilter("always")
{front}
start, runs = threading.Barrier(8), []

def in_thread():
    start.wait()
    runs.append(first_call())

threads = [threading.Thread(target=in_thread) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({{
    "runs": runs,
    "explain": explain(),
    "warnings": [str(w.message) for w in caught],
}}))
"""


def run_fresh(front: str, env: dict[str, str], path: Path | None = None) -> dict[str, Any]:
    """SCRIPT's findings for ``front`` in a fresh interpreter, with ``env`` added and ``path``
    (a copy of the package's parent) first on the import path."""
    full = {k: v for k, v in os.environ.items() if k != "SNAPSET_KERNELS"}
    full.update(env, PYTHONDONTWRITEBYTECODE="1")
    if path is not None:
        full["PYTHONPATH"] = str(path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(front=FRONTS[front])],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_every_thread_ran_numba(front: str, result: dict[str, Any]) -> None:
    assert len(result["runs"]) == 8
    for ran, kernel, error in result["runs"]:
        assert (ran, kernel) == ("numba", KERNEL[front])
        assert error < 1e-5


FRONT = pytest.mark.parametrize("front", ["packed", "gf2"])


# gf2's kernels take about 4 s to compile (uncached here), more on a busy machine.
@pytest.mark.parametrize("front", ["packed", pytest.param("gf2", marks=pytest.mark.slow)])
def test_a_read_only_install_without_a_cache_directory_compiles_uncached(
    front: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(SOURCE, site / "snapset", ignore=shutil.ignore_patterns("__pycache__"))
    for package in [site / "snapset", *(site / "snapset").glob("*/")]:
        (package / "__pycache__").write_text("")  # no in-tree cache
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # a file: no cache directory can be made under it, even by root
    for path in [site, *site.rglob("*")]:  # read-only as installed by root for other users
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        result = run_fresh(
            front,
            {"NUMBA_CACHE_DIR": str(blocked / "numba"), "XDG_CACHE_HOME": str(blocked / "xdg")},
            site,
        )
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert_every_thread_ran_numba(front, result)
    assert "without its on-disk cache" in result["explain"]
    assert "no writable cache directory" in result["explain"]
    assert "set NUMBA_CACHE_DIR to a writable folder" in result["explain"]
    assert result["warnings"] == [f"{WHAT[front]}: {result['explain']}"]


@pytest.mark.slow
@FRONT
def test_damaged_cache_files_are_compiled_around_not_raised(front: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_fresh(front, {"NUMBA_CACHE_DIR": str(cache)})
    assert_every_thread_ran_numba(front, first)
    assert first["explain"].startswith(f"numba, compiled for this CPU, cached in {cache}")
    assert first["warnings"] == []
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert files
    for path in files:  # truncated, as by a full disk or a killed process
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = run_fresh(front, {"NUMBA_CACHE_DIR": str(cache)})
    assert_every_thread_ran_numba(front, again)
    assert "do not load" in again["explain"] and "delete them" in again["explain"]
    assert again["warnings"] == [f"{WHAT[front]}: {again['explain']}"]


@FRONT
def test_threads_racing_the_first_call_all_run_the_compiled_kernels(front: str) -> None:
    # numba's own cache, which this process filled: the race is on loading the kernels
    result = run_fresh(front, {})
    assert_every_thread_ran_numba(front, result)
    assert result["explain"].startswith("numba, compiled for this CPU, cached in")
    assert result["warnings"] == []


def test_the_backend_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _kernels.backend() == "numba"
    assert _kernels.backend(explain=True).startswith("numba, compiled for this CPU, cached in")
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    assert _kernels.backend() == "numpy"
    assert _kernels.backend(explain=True) == "numpy, because SNAPSET_KERNELS=numpy is set"


def test_kernels_that_do_not_compile_even_uncached_leave_numpy_to_run() -> None:
    code = (
        "import warnings\n"
        "from snapset._kernels._loader import KernelLoader\n"
        "def warm_up(kernels):\n"
        "    raise TypeError('no such signature')\n"
        "loader = KernelLoader('some kernels', 'snapset.gf2._numba', warm_up)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert loader.module() is None and loader.module() is None\n"
        "print(loader.explain())\n"
        "print([str(w.message) for w in caught])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    explain, caught = done.stdout.splitlines()
    assert explain.startswith(
        "numpy, because numba could not compile the kernels (TypeError: no such signature)"
    )
    assert "after its cache failed: its files in" in explain
    assert caught == repr([f"some kernels: {explain}"])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_compiled_sweep_counts_flips_and_oscillations_as_the_core_does(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recode``'s thermometer planes and its two planes of directions against the core's
    ``changes`` on bools (whose definition the torch tests check by hand): the same codes,
    histogram, flips, oscillations and last directions, update after update; 203 entries
    (a partial last byte) in three shares between threads."""
    monkeypatch.setattr(_flip, "_SHARE", 64)  # shares of at least 8 bytes: 26 bytes in 3
    rng = np.random.default_rng(k)
    n, boundaries = 203, np.arange(k - 1, dtype=np.float32) + 0.5

    def latents() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        codes = rng.integers(0, k, n)
        return (codes + rng.uniform(-0.4, 0.4, n)).astype(np.float32), codes

    previous = np.zeros(_kernels.plane_shape(n, k), np.uint8)
    directions, histogram = np.zeros(_kernels.plane_shape(n, 3), np.uint8), np.zeros(k, np.int64)
    went = directions[0], directions[1]  # the compiled sweep's last directions, in bits
    read, codes = latents()
    assert _kernels.recode(read, boundaries, previous, previous, went, histogram, 3) == (0, 0)
    planes, last = np.empty_like(previous), (np.zeros(n, bool), np.zeros(n, bool))
    for _ in range(12):
        read, new = latents()
        counts = _kernels.recode(read, boundaries, previous, planes, went, histogram, 3)
        assert counts == tuple(np.count_nonzero(c) for c in changes(codes, new, last))
        assert np.array_equal(_kernels.codes_of_planes(planes, n), new)
        assert np.array_equal(_flip.bits_of_planes(directions, n), np.stack(last))
        assert np.array_equal(histogram, np.bincount(new, minlength=k))
        previous, planes, codes = planes, previous, new
    assert last[0].any() and last[1].any()  # both directions were seen
