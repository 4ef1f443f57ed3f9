"""The packed kernels give the same bits on any number of threads: each thread takes a share
of the outputs (or of a decoded block's rows) and computes it as one thread would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import snapset
from snapset import _kernels
from snapset._kernels import _matrix

SETS = {
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "four": snapset.ValueSet([1, -1, 0.5, -0.5]),
    "five": snapset.ValueSet([-2, -1, 0, 1, 2]),
}


@pytest.fixture
def shares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Split even a small product between threads, and record how many shares each call has."""
    for name in ("_LOOKUP_SHARE", "_XNOR_SHARE", "_DECODE_SHARE", "_ALIGN"):
        monkeypatch.setattr(_matrix, name, 1)
    counts: list[int] = []
    run = _matrix.run_shares

    def counted(work: Any, spans: list[tuple[int, int]], threads: int) -> Any:
        counts.append(len(spans))
        return run(work, spans, threads)

    monkeypatch.setattr(_matrix, "run_shares", counted)
    return counts


def matrix(values: snapset.ValueSet, scale: str, n_in: int, out: int) -> _kernels.PackedMatrix:
    rng = np.random.default_rng(len(values) + n_in)
    codes = rng.integers(0, len(values), (out, n_in))
    spans = {"none": None, "channel": (out, 1), "group": (out, 3)}[scale]
    scales = None if spans is None else rng.uniform(0.5, 2.0, spans)
    return _kernels.PackedMatrix.from_codes(codes, values, scales)


@pytest.mark.parametrize("scale", ["none", "channel", "group"])
@pytest.mark.parametrize("set_name", list(SETS))
def test_every_kernel_gives_the_same_bits_on_one_and_on_several_threads(
    shares: list[int], set_name: str, scale: str
) -> None:
    m = matrix(SETS[set_name], scale, 57, 37)
    bias = np.linspace(-1, 1, 37, dtype=np.float32)
    rng = np.random.default_rng(1)
    for rows in (1, 3):
        for x in (
            rng.standard_normal((rows, 57)).astype(np.float32),  # lookups
            np.sign(rng.standard_normal((rows, 57))).astype(np.float32),  # XNOR, sign weights
        ):
            one = _kernels.small_matmul(x, m, bias, 8, threads=1)
            several = _kernels.small_matmul(x, m, bias, 8, threads=3)
            assert one[:2] == several[:2] and one[2] is not None and several[2] is not None
            assert np.array_equal(one[2], several[2])
    buffer = np.empty((m.groups * m.group, 37), dtype=np.float32)
    one_tile = _kernels.decode_rows(m, 1, m.groups, buffer, threads=1).copy()
    several_tile = _kernels.decode_rows(m, 1, m.groups, buffer, threads=3)
    assert np.array_equal(one_tile, several_tile)
    assert max(shares) >= 4  # the products and the decoding were split into shares


def test_small_products_stay_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handing work to a thread costs tens of microseconds: a small product is not split,
    however many threads it may use; a large one is."""
    counts: list[int] = []
    run = _matrix.run_shares

    def counted(work: Any, spans: list[tuple[int, int]], threads: int) -> Any:
        counts.append(len(spans))
        return run(work, spans, threads)

    monkeypatch.setattr(_matrix, "run_shares", counted)
    small = matrix(snapset.Ternary(), "none", 64, 16)
    x = np.ones((1, 64), dtype=np.float32) / 3
    assert _kernels.small_matmul(x, small, np.zeros(16, np.float32), 8, threads=8)[1] == "lookup"
    assert counts and max(counts) == 1
    counts.clear()
    large = matrix(snapset.Ternary(), "none", 4096, 2048)  # about 300 us of lookups
    x = np.ones((1, 4096), dtype=np.float32) / 3
    _kernels.small_matmul(x, large, np.zeros(2048, np.float32), 8, threads=8)
    assert max(counts) > 1


def test_the_division_by_a_multiply_splits_every_byte_exactly() -> None:
    """Half tables split a code byte ``b`` into ``b mod L`` and ``b div L`` by a multiply and
    a shift, for every ``L`` up to 32."""
    from snapset._kernels._simd import SHIFT

    b = np.arange(256)
    for size in range(1, 33):
        magic = ((1 << SHIFT) + size - 1) // size
        assert np.array_equal((b * magic) >> SHIFT, b // size)


@pytest.mark.parametrize("set_name", [*SETS, "six", "twelve"])
def test_half_tables_and_whole_tables_compute_the_same_product(
    monkeypatch: pytest.MonkeyPatch, set_name: str
) -> None:
    """Register permutes (where the CPU has AVX-512) and gathers from whole tables (where it
    does not, or for six values) give the float product, outputs past the last 64 included."""
    values = SETS.get(set_name) or snapset.ValueSet(range(6 if set_name == "six" else 12))
    m = matrix(values, "group", 201, 150)  # two blocks of 64 outputs and 22 more
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 201)).astype(np.float32)
    bias = np.zeros(150, dtype=np.float32)
    kernels = _matrix._KERNELS.module()
    assert kernels is not None
    results = []
    for permutes in (kernels.PERMUTES, False):
        monkeypatch.setattr(kernels, "PERMUTES", permutes)
        ran, kernel, y = _kernels.small_matmul(x, m, bias, 8, threads=2)
        assert (ran, kernel) == ("numba", "lookup") and y is not None
        results.append(y)
    again = np.random.default_rng(len(values) + 201)  # as matrix() drew them
    codes = again.integers(0, len(values), (150, 201))
    alpha = again.uniform(0.5, 2.0, (150, 3))
    weight = np.asarray(values.values)[codes] * np.repeat(alpha, 67, axis=1)
    for y in results:
        np.testing.assert_allclose(y, x.astype(np.float64) @ weight.T, rtol=1e-5, atol=1e-4)


def test_the_caller_takes_every_share_that_no_pool_thread_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool thread that starts late (its core busy) leaves its shares to the caller, which
    does not wait for it."""
    from snapset._kernels import _threads

    class Stalled:  # a pool whose threads never start
        def submit(self, *args: Any) -> None:
            pass

    monkeypatch.setattr(_threads, "_pool", lambda: Stalled())
    shares = _threads.spans(100, 8, 1)
    assert _threads.run_shares(lambda start, stop: stop - start, shares, 4) == [12, 13] * 4


def test_an_error_in_a_share_reaches_the_caller_after_every_share_is_done() -> None:
    from snapset._kernels import _threads

    done: list[int] = []

    def work(start: int, stop: int) -> int:
        if start == 0:
            raise ValueError("the first share failed")
        done.append(start)
        return start

    with pytest.raises(ValueError, match="first share"):
        _threads.run_shares(work, _threads.spans(40, 4, 1), 2)
    assert sorted(done) == [10, 20, 30]


def test_products_called_from_several_threads_at_once_each_get_their_own_result(
    shares: list[int],
) -> None:
    """A server calls one packed layer from several threads: their shares mix in the pool,
    and every call still gets its own bits."""
    from concurrent.futures import ThreadPoolExecutor

    m = matrix(snapset.Ternary(), "channel", 57, 130)
    bias = np.zeros(130, dtype=np.float32)
    inputs = [
        np.random.default_rng(i).standard_normal((2, 57)).astype(np.float32) for i in range(8)
    ]
    alone = [_kernels.small_matmul(x, m, bias, 8, threads=1)[2] for x in inputs]

    def call(i: int) -> Any:
        return _kernels.small_matmul(inputs[i % 8], m, bias, 8, threads=2)[2]

    with ThreadPoolExecutor(4) as callers:
        together = list(callers.map(call, range(64)))
    for i, y in enumerate(together):
        assert np.array_equal(y, alone[i % 8])
