"""snapset.gf2 against slow, obvious references written here (plain Python Gaussian elimination,
brute force over every x for lstsq), and its compiled kernels against its numpy versions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapset import gf2

# ----- references: lists of Python ints, one row at a time ---------------------------------------


def ref_rref(a: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Reduced row echelon form over GF(2), textbook algorithm: its non-zero rows, pivots."""
    rows = [[int(v) for v in row] for row in a]
    ncols = a.shape[1]
    pivots: list[int] = []
    r = 0
    for c in range(ncols):
        p = next((i for i in range(r, len(rows)) if rows[i][c]), None)
        if p is None:
            continue
        rows[r], rows[p] = rows[p], rows[r]
        for i in range(len(rows)):
            if i != r and rows[i][c]:
                rows[i] = [x ^ y for x, y in zip(rows[i], rows[r], strict=True)]
        pivots.append(c)
        r += 1
    return rows[:r], pivots


def ref_rank(a: np.ndarray) -> int:
    return len(ref_rref(a)[1])


def ref_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            out[i, j] = sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) % 2
    return out


def ref_pack(row: np.ndarray) -> list[int]:
    words = [0] * -(-len(row) // 64)
    for j, bit in enumerate(row):
        words[j // 64] |= int(bit) << (j % 64)
    return words


# ----- strategies -------------------------------------------------------------------------------

# Widths around and across word boundaries, and 1 x n / n x 1 shapes, come up often.
dims = st.one_of(
    st.integers(1, 5), st.sampled_from([63, 64, 65, 127, 128, 129]), st.integers(1, 140)
)


@st.composite
def matrices(draw: st.DrawFn, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    m = draw(dims) if rows is None else rows
    n = draw(dims) if cols is None else cols
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["dense", "sparse", "low-rank"]))
    if kind == "dense":
        return rng.integers(0, 2, (m, n), dtype=np.uint8)
    if kind == "sparse":
        return (rng.random((m, n)) < 0.05).astype(np.uint8)
    inner = draw(st.integers(0, 6))
    left = rng.integers(0, 2, (m, inner))
    right = rng.integers(0, 2, (inner, n))
    return ((left @ right) % 2).astype(np.uint8)


fast = settings(max_examples=40, deadline=None)


# ----- pack / unpack ----------------------------------------------------------------------------


@fast
@given(matrices())
def test_pack_matches_reference_and_round_trips(a: np.ndarray) -> None:
    words = gf2.pack(a)
    assert words.dtype == np.uint64
    assert words.tolist() == [ref_pack(row) for row in a]
    assert np.array_equal(gf2.unpack(words, a.shape[1]), a)


def test_unpack_reads_int64_words_and_checks_n() -> None:
    words = gf2.pack(np.ones((2, 70), dtype=bool)).view(np.int64)
    assert gf2.unpack(words, 70).sum() == 140
    with pytest.raises(ValueError, match="at most 128"):
        gf2.unpack(words, 129)
    with pytest.raises(ValueError, match="64-bit integers"):
        gf2.unpack(np.zeros(2, dtype=np.int32), 3)


# ----- matmul -----------------------------------------------------------------------------------


@fast
@given(st.data())
def test_matmul_matches_reference(data: st.DataObject) -> None:
    a = data.draw(matrices())
    b = data.draw(matrices(rows=a.shape[1]))
    c = gf2.matmul(a, b)
    assert c.dtype == np.uint8
    assert np.array_equal(c, ref_matmul(a, b))


def test_matmul_vector_shapes_follow_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, (5, 70))
    v = rng.integers(0, 2, 70)
    w = rng.integers(0, 2, 5)
    assert np.array_equal(gf2.matmul(a, v), (a @ v) % 2)
    assert np.array_equal(gf2.matmul(w, a), (w @ a) % 2)
    assert gf2.matmul(v, v) == (v @ v) % 2
    assert gf2.matmul(v, v).shape == ()


def test_matmul_keeps_dtypes() -> None:
    a = np.array([[True, True], [False, True]])
    assert gf2.matmul(a, a).dtype == np.bool_
    assert gf2.matmul(a.astype(np.float32), a).dtype == np.float32
    assert gf2.matmul([[1, 1]], [[1], [1]]).tolist() == [[0]]


# ----- rank, solve, nullspace, inv --------------------------------------------------------------


@fast
@given(matrices())
def test_rank_matches_reference(a: np.ndarray) -> None:
    assert gf2.rank(a) == ref_rank(a)


@fast
@given(st.data())
def test_solve_solves_consistent_systems_and_rejects_the_others(data: st.DataObject) -> None:
    a = data.draw(matrices())
    k = data.draw(st.sampled_from([None, 1, 3]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = (a.shape[0],) if k is None else (a.shape[0], k)
    if data.draw(st.booleans()):
        # Consistent by construction: b = a @ x for some x.
        x_true = rng.integers(0, 2, (a.shape[1],) if k is None else (a.shape[1], k))
        b = (a.astype(np.int64) @ x_true) % 2
    else:
        b = rng.integers(0, 2, shape)
    b2 = b.reshape(a.shape[0], -1)
    consistent = all(
        ref_rank(np.concatenate([a, b2[:, [j]]], axis=1)) == ref_rank(a) for j in range(b2.shape[1])
    )
    if consistent:
        x = gf2.solve(a, b)
        assert x.shape == (a.shape[1], *b.shape[1:])
        assert np.array_equal((a.astype(np.int64) @ x) % 2, b)
    else:
        with pytest.raises(ValueError, match="inconsistent"):
            gf2.solve(a, b)


@fast
@given(matrices())
def test_nullspace_is_a_basis_of_the_kernel(a: np.ndarray) -> None:
    n = a.shape[1]
    basis = gf2.nullspace(a)
    assert basis.shape == (n - ref_rank(a), n)
    assert not ((a.astype(np.int64) @ basis.T.astype(np.int64)) % 2).any()
    if basis.shape[0]:
        assert ref_rank(basis) == basis.shape[0]


@fast
@given(st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_inv_matches_reference_gauss_jordan(n: int, seed: int) -> None:
    a = np.random.default_rng(seed).integers(0, 2, (n, n), dtype=np.uint8)
    if ref_rank(a) < n:
        with pytest.raises(ValueError, match="singular"):
            gf2.inv(a)
        return
    # [a | I] reduces to [I | a^-1].
    rows, _ = ref_rref(np.concatenate([a, np.eye(n, dtype=np.uint8)], axis=1))
    expected = np.array(rows, dtype=np.uint8)[:, n:]
    assert np.array_equal(gf2.inv(a), expected)


def test_inv_of_a_large_invertible_matrix() -> None:
    # Unit upper-triangular times unit lower-triangular: invertible, dense, 3 words wide.
    rng = np.random.default_rng(7)
    n = 150
    upper = np.triu(rng.integers(0, 2, (n, n)), 1) + np.eye(n, dtype=np.int64)
    lower = np.tril(rng.integers(0, 2, (n, n)), -1) + np.eye(n, dtype=np.int64)
    a = (upper @ lower) % 2
    assert np.array_equal((a @ gf2.inv(a).astype(np.int64)) % 2, np.eye(n))


def test_rank_deficient_blocks_with_many_candidate_rows() -> None:
    # 300 rows spanning a 5-dimensional space: every 8-column block has more candidate rows
    # than the quick scan looks at, and fewer pivots than columns.
    rng = np.random.default_rng(3)
    a = (rng.integers(0, 2, (300, 5)) @ rng.integers(0, 2, (5, 200))) % 2
    a[:, 17] = 0
    assert gf2.rank(a) == ref_rank(a)
    assert gf2.rank(a.T) == ref_rank(a)
    _, pivots = ref_rref(a)
    basis = gf2.nullspace(a)
    assert basis.shape[0] == 200 - len(pivots)
    assert not ((a @ basis.T.astype(np.int64)) % 2).any()


def test_empty_shapes() -> None:
    assert gf2.rank(np.zeros((0, 5), dtype=np.uint8)) == 0
    assert gf2.rank(np.zeros((5, 0), dtype=np.uint8)) == 0
    assert np.array_equal(gf2.nullspace(np.zeros((0, 3), dtype=np.uint8)), np.eye(3))
    assert gf2.matmul(np.zeros((2, 0)), np.zeros((0, 3))).tolist() == [[0.0] * 3] * 2


# ----- torch in, torch out ------------------------------------------------------------------------


def test_torch_tensors_come_back_as_tensors() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    a_np = rng.integers(0, 2, (40, 70), dtype=np.uint8)
    b_np = rng.integers(0, 2, (70, 9), dtype=np.uint8)
    a = torch.from_numpy(a_np).float()
    b = torch.from_numpy(b_np).bool()
    c = gf2.matmul(a, b)
    assert isinstance(c, torch.Tensor) and c.dtype == torch.float32
    assert np.array_equal(c.numpy(), ref_matmul(a_np, b_np))
    mixed = gf2.matmul(a_np, b)
    assert isinstance(mixed, torch.Tensor) and mixed.dtype == torch.uint8
    assert gf2.rank(a) == ref_rank(a_np)
    assert isinstance(gf2.nullspace(a), torch.Tensor)
    words = gf2.pack(b)
    assert words.dtype == torch.uint64
    assert np.array_equal(gf2.unpack(words, 9).numpy(), b_np)
    x = gf2.solve(a, a[:, :3])
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert torch.equal((a @ x) % 2, a[:, :3])
    square = torch.tensor([[1, 1], [0, 1]], dtype=torch.bfloat16)
    assert gf2.inv(square).dtype == torch.bfloat16
    assert gf2.inv(square).tolist() == [[1, 1], [0, 1]]


def test_import_does_not_need_torch() -> None:
    code = "import sys, snapset.gf2; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([[0, 2]]), r"only 0 and 1 .* a\[0, 1\] = 2.*x % 2"),
        (np.array([[0.5, 1.0]]), r"only 0 and 1 .* a\[0, 0\] = 0.5.*x > 0.5"),
        (np.array([[1, -1]]), r"a\[0, 1\] = -1"),
        (np.array([[np.nan, 1.0]]), r"a\[0, 0\] = nan"),
        (np.array([["0", "1"]]), "dtype <U1"),
        (np.array([[1 + 0j]]), "dtype complex"),
    ],
)
def test_entries_other_than_0_and_1_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gf2.rank(bad)
    with pytest.raises(ValueError, match=message):
        gf2.matmul(bad, np.ones((bad.shape[1], 1)))


def test_shape_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"a matrix \(or a batch"):
        gf2.rank(np.zeros(2))
    with pytest.raises(ValueError, match="do not match"):
        gf2.matmul(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not broadcast"):
        gf2.matmul(np.zeros((2, 2, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="square"):
        gf2.inv(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\) or \(..., 2, k\)"):
        gf2.solve(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        gf2.lstsq(np.zeros((2, 2, 3)), np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match="scalar"):
        gf2.pack(np.uint8(1))


def test_torch_bad_inputs_are_refused() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"a\[1, 0\] = 3"):
        gf2.rank(torch.tensor([[0, 1], [3, 0]]))
    with pytest.raises(ValueError, match="complex"):
        gf2.rank(torch.ones(2, 2, dtype=torch.complex64))


# ----- inconsistent systems: the certificate ----------------------------------------------------


@fast
@given(st.data())
def test_inconsistent_systems_come_with_a_certificate(data: st.DataObject) -> None:
    a = data.draw(matrices())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    b = rng.integers(0, 2, (a.shape[0], 3))
    a_rank = ref_rank(a)
    bad = [j for j in range(3) if ref_rank(np.concatenate([a, b[:, [j]]], axis=1)) > a_rank]
    if not bad:
        assert np.array_equal(gf2.matmul(a, gf2.solve(a, b)), b)
        return
    with pytest.raises(gf2.InconsistentError, match="inconsistent") as caught:
        gf2.solve(a, b)
    y = caught.value.certificate
    assert caught.value.column == bad[0] and caught.value.batch_index == ()
    assert y.shape == (a.shape[0],) and y.dtype == np.uint8
    assert not gf2.matmul(y, a).any()
    assert gf2.matmul(y, b[:, bad[0]]) == 1


def test_certificate_names_the_batch_entry_and_is_a_value_error() -> None:
    a = np.stack([np.eye(2, dtype=np.uint8), np.ones((2, 2), dtype=np.uint8)])
    b = np.array([0, 1])
    with pytest.raises(ValueError, match=r"batch entry \[1\]") as caught:
        gf2.solve(a, b)
    assert isinstance(caught.value, gf2.InconsistentError)
    assert caught.value.batch_index == (1,) and caught.value.column is None
    assert caught.value.certificate.tolist() == [1, 1]


# ----- batches against loops --------------------------------------------------------------------


def batch(rng: np.random.Generator, shape: tuple[int, ...], low_rank: bool) -> np.ndarray:
    a = rng.integers(0, 2, shape, dtype=np.uint8)
    if low_rank:  # the same few rows again and again: ranks differ across the batch
        a[..., 2:, :] = a[..., :1, :]
    return a


@pytest.mark.parametrize("low_rank", [False, True])
def test_batches_match_a_loop_over_their_matrices(low_rank: bool) -> None:
    rng = np.random.default_rng(11)
    a = batch(rng, (2, 3, 6, 5), low_rank)
    flat = a.reshape(-1, 6, 5)
    ranks = gf2.rank(a)
    assert ranks.shape == (2, 3) and ranks.reshape(-1).tolist() == [ref_rank(m) for m in flat]
    bases = gf2.nullspace(a)
    for basis, m in zip(bases.reshape(-1, *bases.shape[-2:]), flat, strict=True):
        nonzero = basis[basis.any(axis=1)]
        assert np.array_equal(nonzero, gf2.nullspace(m))
        assert not basis[nonzero.shape[0] :].any()
    b = rng.integers(0, 2, (3, 5, 4), dtype=np.uint8)  # broadcasts against a's (2, 3)
    product = gf2.matmul(a, b)
    assert product.shape == (2, 3, 6, 4)
    for i in range(2):
        for j in range(3):
            assert np.array_equal(product[i, j], gf2.matmul(a[i, j], b[j]))
    v = rng.integers(0, 2, 5)
    by_vector = np.stack([gf2.matmul(m, v) for m in flat]).reshape(2, 3, 6)
    assert np.array_equal(gf2.matmul(a, v), by_vector)
    w = rng.integers(0, 2, 6)
    assert np.array_equal(gf2.matmul(w, a), (w @ a.astype(np.int64)) % 2)


def test_solve_inv_and_lstsq_batches_match_loops() -> None:
    rng = np.random.default_rng(12)
    square = np.stack([np.triu(rng.integers(0, 2, (7, 7)), 1) + np.eye(7, dtype=np.int64)] * 2)
    square[1] = square[1].T
    inverses = gf2.inv(square)
    assert np.array_equal(inverses, np.stack([gf2.inv(m) for m in square]))
    a = rng.integers(0, 2, (3, 12, 5), dtype=np.uint8)
    x_true = rng.integers(0, 2, (3, 5, 2), dtype=np.uint8)
    b = np.stack([gf2.matmul(m, x) for m, x in zip(a, x_true, strict=True)])
    x = gf2.solve(a, b)
    assert np.array_equal(gf2.matmul(a, x), b)
    assert np.array_equal(x, np.stack([gf2.solve(m, r) for m, r in zip(a, b, strict=True)]))
    v = rng.integers(0, 2, 7)
    vector = gf2.solve(square, v)  # one vector for every matrix
    assert vector.shape == (2, 7)
    assert np.array_equal(vector, np.stack([gf2.matmul(m, v) for m in inverses]))
    noisy = b ^ (rng.random(b.shape) < 0.1)
    batched = gf2.lstsq(a, noisy, seed=4)
    assert batched.x.shape == (3, 5, 2) and batched.weight.shape == (3, 2)
    assert batched.iterations.shape == (3,)
    for i in range(3):
        alone = gf2.lstsq(a[i], noisy[i], seed=4)
        assert alone.weight.tolist() == batched.weight[i].tolist()
        assert alone.converged.all() and batched.converged[i].all()


# ----- lstsq ------------------------------------------------------------------------------------


def brute_force_minimum(a: np.ndarray, b: np.ndarray) -> tuple[int, set[tuple[int, ...]]]:
    """The least weight of a x + b over every x, and every x that reaches it."""
    n = a.shape[1]
    xs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int64)
    weights = ((xs @ a.T.astype(np.int64) + b) % 2).sum(axis=1)
    least = int(weights.min())
    return least, {tuple(x) for x in xs[weights == least].tolist()}


@fast
@given(st.integers(1, 6), st.integers(1, 14), st.integers(0, 2**32 - 1))
def test_lstsq_finds_a_minimum_of_brute_force(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.random((m, n)) < rng.choice([0.2, 0.5])).astype(np.uint8)
    b = rng.integers(0, 2, (m, 2), dtype=np.uint8)
    found = gf2.lstsq(a, b, seed=seed)
    assert found.converged.all()
    for j in range(2):
        least, minimisers = brute_force_minimum(a, b[:, j])
        assert found.weight[j] == least
        assert tuple(found.x[:, j].tolist()) in minimisers
        assert ((a.astype(np.int64) @ found.x[:, j] + b[:, j]) % 2).sum() == least


def test_lstsq_recovers_a_planted_map_through_label_noise() -> None:
    rng = np.random.default_rng(13)
    d, m = 64, 512
    planted = rng.integers(0, 2, (d, 4), dtype=np.uint8)
    a = rng.integers(0, 2, (m, d), dtype=np.uint8)
    noise = (rng.random((m, 4)) < 0.05).astype(np.uint8)
    found = gf2.lstsq(a, gf2.matmul(a, planted) ^ noise, seed=0)
    assert np.array_equal(found.x, planted)
    assert found.weight.tolist() == noise.sum(axis=0).tolist()
    assert found.converged.all()
    assert gf2.lstsq(a, gf2.matmul(a, planted)[:, 0]).iterations == 1  # exact: 0 is least


def test_lstsq_reports_a_budget_that_ran_out() -> None:
    rng = np.random.default_rng(14)
    a = rng.integers(0, 2, (256, 96), dtype=np.uint8)
    b = rng.integers(0, 2, 256, dtype=np.uint8)  # pure noise: a lightest x is hard to certify
    found = gf2.lstsq(a, b, budget=3)
    assert found.iterations == 3 and found.converged is False
    assert found.weight == int(((a.astype(np.int64) @ found.x + b) % 2).sum())


def test_lstsq_gives_torch_back_and_checks_its_arguments() -> None:
    torch = pytest.importorskip("torch")
    a = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.float32)
    found = gf2.lstsq(a, torch.tensor([1.0, 0.0, 0.0]))
    assert isinstance(found.x, torch.Tensor) and found.x.dtype == torch.float32
    assert found.weight == 1
    with pytest.raises(ValueError, match="budget"):
        gf2.lstsq(a, a[:, 0], budget=0)
    with pytest.raises(ValueError, match="miss"):
        gf2.lstsq(a, a[:, 0], miss=1.0)


# ----- integers and bit vectors -----------------------------------------------------------------


@fast
@given(st.integers(0, 200), st.data(), st.sampled_from(["little", "big"]))
def test_python_ints_round_trip_through_bit_vectors(
    n: int, data: st.DataObject, order: str
) -> None:
    value = data.draw(st.integers(0, 2**n - 1))
    bits = gf2.from_int(value, n, bitorder=order)
    assert bits.shape == (n,) and bits.dtype == np.uint8
    expected = [value >> i & 1 for i in range(n)]
    assert bits.tolist() == (expected if order == "little" else expected[::-1])
    assert gf2.to_int(bits, bitorder=order) == value


@pytest.mark.parametrize("order", ["little", "big"])
@pytest.mark.parametrize("n", [1, 7, 63, 64])
def test_uint64_arrays_round_trip_and_match_pack(order: str, n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.integers(0, 2**n, (3, 4), dtype=np.uint64, endpoint=False)
    bits = gf2.from_int(values, n, bitorder=order)
    assert bits.shape == (3, 4, n)
    back = gf2.to_int(bits, bitorder=order)
    assert back.dtype == np.uint64 and np.array_equal(back, values)
    little = bits if order == "little" else bits[..., ::-1]
    assert np.array_equal(gf2.pack(little)[..., 0], values)  # pack's layout is "little"


def test_wide_batches_give_python_ints_and_bad_values_are_refused() -> None:
    values = [[2**70 + 3, 5], [0, 2**80 - 1]]
    bits = gf2.from_int(values, 80)
    assert bits.shape == (2, 2, 80)
    back = gf2.to_int(bits)
    assert back.dtype == object and back.tolist() == values
    with pytest.raises(ValueError, match="does not fit in n = 3 bits; raise n to at least 4"):
        gf2.from_int(8, 3)
    with pytest.raises(ValueError, match="does not fit"):
        gf2.from_int(np.array([2**40], dtype=np.uint64), 40)
    with pytest.raises(ValueError, match="at least 0"):
        gf2.from_int([-1], 4)
    with pytest.raises(ValueError, match="bitorder"):
        gf2.to_int([1, 0], bitorder="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        gf2.from_int(np.array([1.5]), 4)


def test_torch_integers_give_tensors_back() -> None:
    torch = pytest.importorskip("torch")
    bits = gf2.from_int(torch.tensor([5, 2]), 3)
    assert isinstance(bits, torch.Tensor) and bits.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert gf2.to_int(bits).tolist() == [5, 2]


# ----- the compiled kernels against the numpy versions ------------------------------------------


def test_compiled_kernels_match_the_numpy_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    from snapset.gf2 import _linalg

    monkeypatch.delenv("SNAPSET_KERNELS", raising=False)
    assert _linalg.compiled() is not None
    assert _linalg._KERNELS.explain().startswith("numba, compiled for this CPU, cached in")
    rng = np.random.default_rng(15)
    for m, n in [(300, 200), (70, 129), (5, 300)]:
        a = rng.integers(0, 2, (m, n), dtype=np.uint8)
        a[:, 40:60] = a[:, :20]  # rank-deficient blocks
        b = rng.integers(0, 2, (n, 150), dtype=np.uint8)
        rhs = gf2.matmul(a, rng.integers(0, 2, (n, 3)))
        noisy = rhs ^ (rng.random(rhs.shape) < 0.05)
        fast_results = [gf2.matmul(a, b), gf2.rank(a), gf2.nullspace(a), gf2.solve(a, rhs)]
        fast_lstsq = gf2.lstsq(a[:, :24], noisy, seed=1, budget=50)
        monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
        assert _linalg.compiled() is None
        assert _linalg._KERNELS.explain() == "numpy, because SNAPSET_KERNELS=numpy is set"
        slow_results = [gf2.matmul(a, b), gf2.rank(a), gf2.nullspace(a), gf2.solve(a, rhs)]
        slow_lstsq = gf2.lstsq(a[:, :24], noisy, seed=1, budget=50)
        monkeypatch.delenv("SNAPSET_KERNELS")
        for fast_result, slow_result in zip(fast_results, slow_results, strict=True):
            assert np.array_equal(fast_result, slow_result)
        for fast_part, slow_part in zip(fast_lstsq, slow_lstsq, strict=True):
            assert np.array_equal(fast_part, slow_part)


def test_import_does_not_need_numba() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, snapset.gf2 as gf2\n"
        "assert gf2._linalg.compiled() is None\n"
        "assert gf2._linalg._KERNELS.explain().startswith('numpy, because numba is not')\n"
        "assert gf2.rank(np.eye(3)) == 3"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
