"""Noisy systems over GF(2): least Hamming weight solutions by information-set decoding."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._bits import (
    Bits,
    Words,
    combine,
    give_back,
    pack_bits,
    popcount,
    to_bits,
    to_matrices,
    unpack_words,
)
from ._linalg import batch_of, compiled, eliminate, matmul_words, right_sides, solve_one

# Lee-Brickell's p: an iteration also tries every sum of up to this many pivot rows.
_MOST_FLIPS = 2


class LstsqResult(NamedTuple):
    """What [`lstsq`][snapset.gf2.lstsq] returns.

    ``x`` has the shape ``solve`` would give; ``weight``, ``converged`` and ``iterations`` have
    one entry per right-hand side (Python scalars for a vector ``b``, numpy arrays otherwise).
    """

    #: the solution: ``a @ x + b`` has the least Hamming weight found.
    x: Any
    #: the Hamming weight of ``a @ x + b``: how many equations ``x`` breaks.
    weight: Any
    #: True where the stopping rule was met (a lighter solution, if one exists, was missed
    #: with probability below ``miss``); False where the budget ran out first.
    converged: Any
    #: information sets tried.
    iterations: Any


def _log_choose(n: int, k: int) -> float:
    if k < 0 or k > n:
        return -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def found_probability(m: int, r: int, weight: int, flips: int) -> float:
    """Chance that one random information set (``r`` of ``m`` equations) holds at most
    ``flips`` of the ``weight`` broken equations of a given solution: then that iteration
    finds the solution (or a lighter one)."""
    total = _log_choose(m, r)
    return sum(
        math.exp(_log_choose(weight, i) + _log_choose(m - weight, r - i) - total)
        for i in range(min(flips, weight) + 1)
    )


def log_miss(m: int, r: int, weight: int, tried: list[int]) -> float:
    """Log of the chance that every iteration so far missed a given solution lighter than
    ``weight`` (``tried[p]`` iterations were run with Lee-Brickell's ``p``); 0 is certain."""
    if weight == 0:
        return -math.inf  # nothing is lighter
    total = 0.0
    for p, count in enumerate(tried):
        if count:
            found = found_probability(m, r, weight - 1, p)
            total += count * (math.log1p(-found) if found < 1.0 else -math.inf)
    return total


def _flips(m: int, r: int, k: int, weight: int) -> int:
    """The Lee-Brickell ``p`` with the most chance of finding a solution lighter than
    ``weight`` per unit of work. An iteration costs about ``8 r m + 10**5`` word operations
    (reordering and packing the ``r x m`` bits, elimination, numpy's per-call overhead: measured
    with the compiled kernels), plus, for each of the ``k`` outputs, one word operation per
    word of every sum of up to ``p`` of the ``r`` pivot rows."""
    words = -(-m // 64)
    rates = []
    for p in range(_MOST_FLIPS + 1):
        sums = sum(math.comb(r, i) for i in range(p + 1))
        cost = 8 * r * m + 10**5 + k * words * sums
        rates.append(found_probability(m, r, max(weight - 1, 0), p) / cost)
    return int(np.argmax(rates))


def _lightest_numpy(
    pivots: Words, residuals: Words, p: int, weights: npt.NDArray[np.int64], picks: Any
) -> None:
    """The compiled ``lightest`` in numpy: same scan order, so the same picks."""
    for o, s in enumerate(residuals):
        weight = int(popcount(s))
        if weight < weights[o]:
            weights[o], picks[o] = weight, (-1, -1)
        for i in range(pivots.shape[0] if p >= 1 else 0):
            partial = s ^ pivots[i]
            weight = int(popcount(partial))
            if weight < weights[o]:
                weights[o], picks[o] = weight, (i, -1)
            if p >= 2 and i + 1 < pivots.shape[0]:
                pairs = popcount(partial ^ pivots[i + 1 :])
                j = int(np.argmin(pairs))
                if pairs[j] < weights[o]:
                    weights[o], picks[o] = int(pairs[j]), (i, i + 1 + j)


def _lstsq(
    a: Bits, b: Bits, rng: np.random.Generator, budget: int, miss: float
) -> tuple[Bits, npt.NDArray[np.int64], npt.NDArray[np.bool_], int]:
    """``lstsq`` on one system, ``b`` of shape ``(m, k)``."""
    m = a.shape[0]
    k = b.shape[1]
    best = np.full(k, m + 1, dtype=np.int64)
    errors = np.zeros((k, m), dtype=np.uint8)
    kernels = compiled()
    lightest = _lightest_numpy if kernels is None else kernels.lightest
    tried = [0] * (_MOST_FLIPS + 1)
    target = math.log(miss)
    r = 0

    def unsure() -> list[bool]:
        return [log_miss(m, r, int(w), tried) > target for w in best]

    while sum(tried) < budget and any(unsure()):
        # In the random order, the first equations that are independent form the information
        # set: reducing a's columns (one row per unknown) puts the identity on them.
        order = rng.permutation(m)
        columns = pack_bits(np.ascontiguousarray(a[order].T))
        rows, pivot_cols = eliminate(columns, m)
        r = len(pivot_cols)
        pivots = np.ascontiguousarray(columns[rows])
        sides = pack_bits(np.ascontiguousarray(b[order].T))
        # Assuming the information set's equations hold, b restricted to it fixes a x; the
        # residual is then the error vector: b plus the pivot rows that b's bits there pick.
        residuals = sides ^ matmul_words(unpack_words(sides, m)[:, pivot_cols], pivots)
        # Outputs already settled are not scored again.
        active = np.flatnonzero(unsure())
        flips = _flips(m, r, active.size, int(best[active].max()))
        weights = best[active]
        picks = np.full((active.size, 2), -2, dtype=np.int64)
        lightest(pivots, np.ascontiguousarray(residuals[active]), flips, weights, picks)
        for o, pick in zip(active, picks, strict=True):
            if pick[0] > -2:
                error = residuals[o].copy()
                for i in pick[pick >= 0]:
                    error ^= pivots[i]
                errors[o, order] = unpack_words(error, m)
        best[active] = weights
        tried[flips] += 1
    converged = ~np.array(unsure(), dtype=bool)
    x = solve_one(a, b ^ errors.T, False, ())
    return x, best, converged, sum(tried)


def lstsq(
    a: Any,
    b: Any,
    *,
    seed: int | np.random.Generator = 0,
    budget: int = 100_000,
    miss: float = 1e-6,
) -> LstsqResult:
    r"""The ``x`` that breaks the fewest equations of ``a @ x = b`` over GF(2): least squares
    for a binary field, where the "squares" count the equations ``x`` breaks (the Hamming weight
    of ``a @ x + b``).

    Learning a GF(2)-linear map from noisy samples is this problem: rows of ``a`` are the
    inputs, ``b`` the labels (``(m,)`` for one output, ``(m, k)`` for ``k`` outputs at once,
    each solved on its own), and ``x`` the map. Batches as in [`solve`][snapset.gf2.solve].
    Returns an [`LstsqResult`][snapset.gf2.LstsqResult] ``(x, weight, converged,
    iterations)``.

    **Method**: information-set decoding (Prange 1962, with Lee-Brickell's 1988 step). Each
    iteration takes the equations in a random order, keeps the first ``r = rank(a)``
    independent ones (an *information set*), and solves them as if they were all unbroken; it
    also tries every solution that breaks one or two of them (``p = 1, 2``, chosen by a cost
    model). The lightest solution found is kept. One iteration finds a solution that breaks
    ``w`` of the ``m`` equations whenever at most ``p`` of those ``w`` fall in the information
    set, with probability

    \[ P_p(w) = \sum_{i \le p} inom{w}{i} inom{m - w}{r - i} \Big/ inom{m}{r} \]

    for a uniformly random information set (the first independent equations of a random order
    are close to that when ``a`` is random; a structured ``a`` may do worse).

    **Stopping rule and guarantee**: with ``w`` the least weight found, iterations go on until
    every solution of weight below ``w``, if one existed, would have been missed by all of
    them with probability at most ``miss`` (``prod_t (1 - P_{p_t}(w - 1)) <= miss``), or until
    ``budget`` iterations; ``converged`` says which. So when ``converged``, ``x`` is a
    least-weight solution except with probability ``miss`` (under the assumption above), and a
    weight of 0 is exact with certainty. When the data are ``b = a @ x_true + e`` with noise
    of rate ``eta`` and ``a`` holds ``m`` uniform random samples of ``n`` inputs, ``x_true`` is
    the least-weight solution (so what ``lstsq`` returns) with high probability once ``m (1 -
    H(eta))`` exceeds ``n`` comfortably (``H`` the binary entropy; Shannon's bound for random
    linear codes): 5% noise needs ``m`` above about ``1.4 n``, 10% above ``1.9 n``. Below that,
    other solutions are as light as ``x_true`` and no method can tell them apart. Where ``a``
    has rank below ``n`` the solution is not unique and comes back with its free variables at
    0, as in ``solve``.

    **Cost and where it ends**: each iteration is one elimination of an ``n x m`` matrix plus
    ``k * (1 + r + r**2 / 2)`` vector weights; the number of iterations grows as ``1 / P_2(w)``,
    roughly ``(1 - w / m) ** -n / (n * w / m) ** 2``: exponential in ``n`` times the noise rate.
    Measured (``benchmarks/gf2_recovery.py``, 8 outputs, one thread): 128 unknowns at 5% noise
    (1024 samples) or 256 at 2% take about a second, every output exact and certified; 128 at
    10% and 256 at 5% run out of a budget of 5000 iterations (5 s to 18 s).

    Args:
        a: ``(m, n)`` 0/1 matrix (or a batch ``(..., m, n)``).
        b: ``(m,)`` or ``(..., m, k)`` 0/1 right-hand sides.
        seed: seeds the random orders (or a ``numpy.random.Generator``); the same seed gives
            the same result.
        budget: most iterations per system.
        miss: the stopping rule's chance of a missed lighter solution.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> rng = np.random.default_rng(0)
        >>> planted = rng.integers(0, 2, 32)
        >>> a = rng.integers(0, 2, (256, 32))
        >>> noise = (rng.random(256) < 0.05).astype(int)  # about 13 labels flipped
        >>> found = gf2.lstsq(a, (a @ planted + noise) % 2)
        >>> bool((found.x == planted).all()), found.weight == int(noise.sum()), found.converged
        (True, True, True)
    """
    if budget < 1:
        raise ValueError(f"gf2.lstsq: budget must be at least 1 iteration, got {budget}")
    if not 0.0 < miss < 1.0:
        raise ValueError(f"gf2.lstsq: miss must be a probability in (0, 1), got {miss}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    a_bits, a_kind = to_matrices(a, "a", "lstsq")
    b_bits, b_kind = to_bits(b, "b", "lstsq")
    a3, b3, batch, vector = right_sides(a_bits, b_bits, "lstsq")
    k = b3.shape[-1]
    x = np.zeros((*batch, a3.shape[-1], k), dtype=np.uint8)
    weight = np.zeros((*batch, k), dtype=np.int64)
    converged = np.zeros((*batch, k), dtype=bool)
    iterations = np.zeros(batch, dtype=np.int64)
    for index in batch_of(batch):
        x[index], weight[index], converged[index], iterations[index] = _lstsq(
            a3[index], b3[index], rng, budget, miss
        )
    if vector:
        x, weight, converged = x[..., 0], weight[..., 0], converged[..., 0]
    result = LstsqResult(give_back(x, combine(a_kind, b_kind)), weight, converged, iterations)
    if batch:
        return result
    # One system: plain Python numbers, as gf2.rank gives.
    scalar = weight.ndim == 0
    return result._replace(
        weight=int(weight) if scalar else weight,
        converged=bool(converged) if scalar else converged,
        iterations=int(iterations),
    )
