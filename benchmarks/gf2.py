"""snapset.gf2 against galois (and M4RI, where it can be built) on rank, solve and matmul.

Usage: python benchmarks/gf2.py [--sizes 512 1024 2048 4096] [--repeats 5]

All three run in this process (M4RI through a small C program compiled here with gcc against
Debian's libm4ri-dev) on the same matrices, and every result is checked against snapset's
before a time is reported. Times are the fastest of the repeats, after one warm-up call (galois
and snapset compile their kernels with numba on first use); M4RI runs just before and just after
snapset, and the faster of its two times counts. snapset and M4RI run on one thread.
Writes benchmarks/results/gf2.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from _machine import cpu_name, write_result
from snapset import gf2
from snapset.gf2._linalg import compiled

# Reads n, then A, B (n x n) and b (n) as 0/1 bytes; times rank, solve A x = b and A @ B with
# M4RI; writes back the product and the solution as 0/1 bytes so that Python can check them.
M4RI_PROGRAM = r"""
#include <m4ri/m4ri.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double fastest(double *t, int n) {
    qsort(t, n, sizeof(double), cmp);
    return t[0];
}

static mzd_t *read_matrix(FILE *f, int rows, int cols) {
    mzd_t *m = mzd_init(rows, cols);
    unsigned char *buf = malloc((size_t)cols);
    for (int i = 0; i < rows; i++) {
        if (fread(buf, 1, (size_t)cols, f) != (size_t)cols) exit(2);
        for (int j = 0; j < cols; j++) mzd_write_bit(m, i, j, buf[j]);
    }
    free(buf);
    return m;
}

static void write_matrix(FILE *f, const mzd_t *m) {
    for (rci_t i = 0; i < m->nrows; i++)
        for (rci_t j = 0; j < m->ncols; j++) fputc(mzd_read_bit(m, i, j), f);
}

int main(int argc, char **argv) {
    FILE *in = fopen(argv[1], "rb");
    FILE *out = fopen(argv[2], "wb");
    int repeats = atoi(argv[3]);
    int n;
    if (fread(&n, sizeof n, 1, in) != 1) return 2;
    mzd_t *A = read_matrix(in, n, n), *B = read_matrix(in, n, n), *b = read_matrix(in, n, 1);
    double *t = malloc(sizeof(double) * (repeats + 1));
    rci_t r = 0;
    for (int k = 0; k <= repeats; k++) {  /* k = 0 is the warm-up */
        mzd_t *X = mzd_copy(NULL, A);
        double t0 = now();
        r = mzd_echelonize(X, 0);
        t[k] = now() - t0;
        mzd_free(X);
    }
    printf("rank %d %.9f\n", (int)r, fastest(t + 1, repeats));
    mzd_t *x = NULL;
    for (int k = 0; k <= repeats; k++) {
        mzd_t *X = mzd_copy(NULL, A);
        if (x) mzd_free(x);
        x = mzd_copy(NULL, b);
        double t0 = now();
        int bad = mzd_solve_left(X, x, 0, 1);
        t[k] = now() - t0;
        if (bad) return 3;
        mzd_free(X);
    }
    printf("solve 0 %.9f\n", fastest(t + 1, repeats));
    mzd_t *C = NULL;
    for (int k = 0; k <= repeats; k++) {
        if (C) mzd_free(C);
        double t0 = now();
        C = mzd_mul(NULL, A, B, 0);
        t[k] = now() - t0;
    }
    printf("matmul 0 %.9f\n", fastest(t + 1, repeats));
    write_matrix(out, C);
    write_matrix(out, x);
    fclose(out);
    return 0;
}
"""


def fastest_time(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after a warm-up (JIT compilation, caches): on a
    shared machine, the call least disturbed by other processes."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def invertible(n: int, rng: np.random.Generator) -> np.ndarray:
    # About 29% of random square 0/1 matrices are invertible over GF(2).
    while True:
        a = rng.integers(0, 2, (n, n), dtype=np.uint8)
        if gf2.rank(a) == n:
            return a


def build_m4ri(workdir: Path) -> tuple[Path | None, str]:
    """Compile the M4RI timing program; returns its path, or None and the reason."""
    header = Path("/usr/include/m4ri/m4ri.h")
    if shutil.which("gcc") is None:
        return None, "gcc is not installed"
    if not header.exists():
        return None, "libm4ri-dev is not installed (`apt-get install libm4ri-dev`)"
    source = workdir / "m4ri_bench.c"
    source.write_text(M4RI_PROGRAM)
    binary = workdir / "m4ri_bench"
    cmd = ["gcc", "-O2", "-march=native", str(source), "-o", str(binary), "-lm4ri", "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return None, f"gcc could not build against M4RI: {done.stderr.strip()[:300]}"
    return binary, ""


def run_m4ri(
    binary: Path, workdir: Path, a: np.ndarray, b_mat: np.ndarray, rhs: np.ndarray, repeats: int
) -> tuple[dict[str, float], int, np.ndarray, np.ndarray]:
    n = a.shape[0]
    data, back = workdir / "in.bin", workdir / "out.bin"
    with data.open("wb") as f:
        f.write(np.int32(n).tobytes())
        for m in (a, b_mat, rhs.reshape(n, 1)):
            f.write(np.ascontiguousarray(m, dtype=np.uint8).tobytes())
    done = subprocess.run(
        [str(binary), str(data), str(back), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    times: dict[str, float] = {}
    rank = -1
    for line in done.stdout.split("\n"):
        if line:
            op, value, seconds = line.split()
            times[op] = float(seconds)
            if op == "rank":
                rank = int(value)
    raw = np.frombuffer(back.read_bytes(), dtype=np.uint8)
    return times, rank, raw[: n * n].reshape(n, n), raw[n * n :]


def numba_version() -> str:
    import numba

    return str(numba.__version__)


def check_m4ri(
    binary: Path,
    workdir: Path,
    a: np.ndarray,
    b_mat: np.ndarray,
    rhs: np.ndarray,
    repeats: int,
    ours: tuple[int, np.ndarray, np.ndarray],
) -> dict[str, float]:
    """M4RI's times, after checking that its rank, product and solution equal snapset's."""
    times, m_rank, m_c, m_x = run_m4ri(binary, workdir, a, b_mat, rhs, repeats)
    assert m_rank == ours[0], (m_rank, ours[0])
    assert np.array_equal(m_x, ours[1])
    assert np.array_equal(m_c, ours[2])
    return times


def versions() -> dict[str, str]:
    import galois

    found = {
        "CPU": f"{cpu_name()} ({len(os.sched_getaffinity(0))} cores usable)",
        "Python": platform.python_version(),
        "numpy": np.__version__,
        "galois": galois.__version__,
        "snapset.gf2 kernels": "numba " + numba_version() if compiled() else "numpy",
        # The machine may be shared: say how busy it was.
        "load average at start (1, 5, 15 min)": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    m4ri = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libm4ri-dev"], capture_output=True, text=True
    )
    if m4ri.returncode == 0:
        found["M4RI (libm4ri-dev)"] = m4ri.stdout.strip()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import galois

    field = galois.GF(2)
    info = versions()
    rng = np.random.default_rng(0)
    rows: list[tuple[int, str, float, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        m4ri, why_not = build_m4ri(workdir)
        for n in args.sizes:
            a = invertible(n, rng)
            b_mat = rng.integers(0, 2, (n, n), dtype=np.uint8)
            rhs = rng.integers(0, 2, n, dtype=np.uint8)
            ga, gb, grhs = field(a), field(b_mat), field(rhs)
            # galois is slow from 2048 on: fewer repeats there keep the run to a few minutes.
            slow = args.repeats if n < 2048 else min(args.repeats, 3 if n < 4096 else 1)

            ours = gf2.rank(a), gf2.solve(a, rhs), gf2.matmul(a, b_mat)
            ours_rank, ours_x, ours_c = ours
            assert ours_rank == np.linalg.matrix_rank(ga) == n
            assert np.array_equal(ours_x, np.asarray(np.linalg.solve(ga, grhs)))
            assert np.array_equal(ours_c, np.asarray(ga @ gb))
            assert np.array_equal((a.astype(np.int64) @ ours_x) % 2, rhs)

            cases = {
                "rank": (partial(np.linalg.matrix_rank, ga), partial(gf2.rank, a)),
                "solve": (partial(np.linalg.solve, ga, grhs), partial(gf2.solve, a, rhs)),
                "matmul": (partial(np.matmul, ga, gb), partial(gf2.matmul, a, b_mat)),
            }
            t_galois = {op: fastest_time(theirs, slow) for op, (theirs, _) in cases.items()}
            # M4RI just before and just after snapset, the faster of the two: on a shared
            # machine, the two libraries then meet the same load.
            m4ri_times: dict[str, float] = {}
            if m4ri is not None:
                m4ri_times = check_m4ri(m4ri, workdir, a, b_mat, rhs, args.repeats, ours)
            t_ours = {op: fastest_time(mine, args.repeats) for op, (_, mine) in cases.items()}
            if m4ri is not None:
                after = check_m4ri(m4ri, workdir, a, b_mat, rhs, args.repeats, ours)
                m4ri_times = {op: min(t, after[op]) for op, t in m4ri_times.items()}
            for op in cases:
                rows.append((n, op, t_galois[op], t_ours[op], m4ri_times.get(op)))
                m4ri_ms = m4ri_times.get(op, float("nan")) * 1e3
                print(
                    f"n={n} {op}: galois {t_galois[op] * 1e3:.1f} ms, snapset "
                    f"{t_ours[op] * 1e3:.2f} ms, M4RI {m4ri_ms:.2f} ms"
                )

    goals = {"rank": 10.0, "solve": 10.0, "matmul": 1.0}
    lines = [
        "| n | op | galois (ms) | snapset (ms) | M4RI (ms) | galois / snapset | goal | "
        "snapset / M4RI | goal (n >= 1024) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for n, op, t_galois, t_ours, t_m4ri in rows:
        ratio = t_galois / t_ours
        met = "met" if ratio >= goals[op] else "**missed**"
        m4ri_ms = f"{t_m4ri * 1e3:.2f}" if t_m4ri is not None else "n/a"
        slower = f"{t_ours / t_m4ri:.2f}x" if t_m4ri is not None else "n/a"
        m4ri_goal = "n/a"
        if t_m4ri is not None and n >= 1024:
            m4ri_goal = "<= 3x: " + ("met" if t_ours <= 3 * t_m4ri else "**missed**")
        lines.append(
            f"| {n} | {op} | {t_galois * 1e3:.1f} | {t_ours * 1e3:.2f} | {m4ri_ms} | "
            f"{ratio:.1f}x | >= {goals[op]:g}x: {met} | {slower} | {m4ri_goal} |"
        )
    table = "\n".join(lines)
    print(table)

    m4ri_note = (
        "M4RI: Debian's libm4ri-dev, called from a C program compiled by this script with "
        "`gcc -O2 -march=native`; its times exclude process start-up and data transfer, like "
        "the others'. M4RI's rank is `mzd_echelonize` (row echelon form, not reduced), "
        "solve is `mzd_solve_left`, matmul is `mzd_mul` (M4RM with Strassen-Winograd above "
        "its cut-off)."
        if m4ri is not None
        else f"M4RI: not measured: {why_not}."
    )
    text = "\n".join(
        [
            "# GF(2) linear algebra: snapset.gf2 against galois and M4RI",
            "",
            f"Measured {datetime.date.today().isoformat()} by `python benchmarks/gf2.py` "
            f"(fastest of {args.repeats} repeats after one warm-up; galois: at most 3 repeats at "
            f"n = 2048 and 1 at n = 4096; M4RI: the faster of two runs, one just before and one "
            f"just after snapset's, so that both meet the same load on a shared machine).",
            "",
            *[f"- {key}: {value}" for key, value in info.items()],
            "",
            "Random dense n x n 0/1 matrices (seeded); `solve` is one right-hand side with an "
            "invertible matrix, because galois's `np.linalg.solve` needs one. Every result was "
            "checked equal across the libraries before timing. snapset's times include packing "
            "the 0/1 `uint8` input into words and unpacking the result. galois's inputs were "
            "converted to `galois.GF(2)` arrays beforehand (not timed). galois multiplies "
            "through numpy's float64 BLAS `dot` (multi-threaded) and reduces mod 2; snapset "
            "(numba kernels, not parallel) and M4RI use one thread. snapset / M4RI is the time "
            "ratio (below 1: snapset is faster).",
            "",
            m4ri_note,
            "",
            table,
            "",
        ]
    )
    write_result("gf2.md", text)


if __name__ == "__main__":
    main()
