"""The packed kernels load once, whatever the install: no writable cache directory, damaged
cache files, threads racing the first call. Each case runs in a fresh process (the kernels load
once a process), without torch: the kernels are framework-free."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import snapset
from snapset import _kernels

SOURCE = Path(snapset.__file__).parent

# Packs a random ternary matrix, multiplies it on both kernel paths (lookups, then decoded
# tiles) from several threads that start together, and prints what ran and how far the results
# are from the product computed here in float64.
SCRIPT = """
import json, threading, warnings
import numpy as np
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from snapset import ValueSet, _kernels
    values = ValueSet([-1, 0, 1])
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, (9, 23))
    m = _kernels.PackedMatrix.from_codes(codes, values)
    weight = np.asarray(values.values)[codes]
    x = rng.standard_normal((2, 23)).astype(np.float32)
    bias = np.zeros(9, dtype=np.float32)
    start, runs = threading.Barrier(8), []

    def first_call():
        start.wait()
        ran, kernel, y = _kernels.small_matmul(x, m, bias, 8)
        tile = _kernels.decode_rows(m, 0, m.groups, np.empty((m.groups * m.group, 9), np.float32))
        error = max(np.abs(y - x @ weight.T).max(), np.abs(x @ tile[:23] - x @ weight.T).max())
        runs.append((ran, kernel, float(error)))

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(json.dumps({
    "runs": runs,
    "explain": _kernels.backend(explain=True),
    "warnings": [str(w.message) for w in caught],
}))
"""


def run_fresh(env: dict[str, str], path: Path | None = None) -> dict[str, Any]:
    """SCRIPT's findings in a fresh interpreter, with ``env`` added and ``path`` (a copy of
    the package's parent) first on the import path."""
    full = {k: v for k, v in os.environ.items() if k != "SNAPSET_KERNELS"}
    full.update(env, PYTHONDONTWRITEBYTECODE="1")
    if path is not None:
        full["PYTHONPATH"] = str(path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_every_thread_ran_numba(result: dict[str, Any]) -> None:
    assert len(result["runs"]) == 8
    for ran, kernel, error in result["runs"]:
        assert (ran, kernel) == ("numba", "lookup")
        assert error < 1e-5


def test_a_read_only_install_without_a_cache_directory_compiles_uncached(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(SOURCE, site / "snapset", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "snapset" / "_kernels" / "__pycache__").write_text("")  # no in-tree cache
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # a file: no cache directory can be made under it, even by root
    for path in [site, *site.rglob("*")]:  # read-only as installed by root for other users
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        result = run_fresh(
            {"NUMBA_CACHE_DIR": str(blocked / "numba"), "XDG_CACHE_HOME": str(blocked / "xdg")},
            site,
        )
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert_every_thread_ran_numba(result)
    assert "without its on-disk cache" in result["explain"]
    assert "no writable cache directory" in result["explain"]
    assert "set NUMBA_CACHE_DIR to a writable folder" in result["explain"]
    assert result["warnings"] == [f"snapset's packed kernels: {result['explain']}"]


@pytest.mark.slow
def test_damaged_cache_files_are_compiled_around_not_raised(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_fresh({"NUMBA_CACHE_DIR": str(cache)})
    assert_every_thread_ran_numba(first)
    assert first["explain"].startswith(f"numba, compiled for this CPU, cached in {cache}")
    assert first["warnings"] == []
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert files
    for path in files:  # truncated, as by a full disk or a killed process
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = run_fresh({"NUMBA_CACHE_DIR": str(cache)})
    assert_every_thread_ran_numba(again)
    assert "do not load" in again["explain"] and "delete them" in again["explain"]
    assert again["warnings"] == [f"snapset's packed kernels: {again['explain']}"]


def test_threads_racing_the_first_call_all_run_the_compiled_kernels() -> None:
    # numba's own cache, which this process filled: the race is on loading the kernels
    assert_every_thread_ran_numba(run_fresh({}))


def test_the_backend_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _kernels.backend() == "numba"
    assert _kernels.backend(explain=True).startswith("numba, compiled for this CPU, cached in")
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    assert _kernels.backend() == "numpy"
    assert _kernels.backend(explain=True) == "numpy, because SNAPSET_KERNELS=numpy is set"
