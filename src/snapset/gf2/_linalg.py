"""Products and elimination over GF(2): matmul, rank, solve, nullspace, inv, and their batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .._kernels._loader import KernelLoader
from ._bits import (
    WORD,
    ArrayT,
    Bits,
    Kind,
    Words,
    combine,
    give_back,
    pack_bits,
    popcount,
    to_bits,
    to_matrices,
    unpack_words,
)

# Columns handled per elimination step: one byte, so the table of XOR combinations has 256 rows
# and a block never straddles two words.
_BLOCK = 8


def _warm_up(kernels: ModuleType) -> None:
    """Run every kernel once on tiny arguments of the types that the calls below pass."""
    words = np.zeros((1, 1), dtype=np.uint64)
    picks = np.zeros((1, 2), dtype=np.int64)
    selectors = np.zeros((1, kernels.TABLES), dtype=np.uint8)
    kernels.matmul(selectors, np.zeros((_BLOCK * kernels.TABLES, 1), dtype=np.uint64), words)
    kernels.eliminate(words, 1, True, np.zeros(1, dtype=np.int64))
    kernels.lightest(words, words, 2, np.zeros(1, dtype=np.int64), picks)
    kernels.and_parity(words, words, np.zeros((1, 1), dtype=np.uint8))


_KERNELS = KernelLoader("snapset.gf2's kernels", "snapset.gf2._numba", _warm_up)


def compiled() -> ModuleType | None:
    """The numba kernels (``snapset.gf2._numba``), compiled on first use; None where numba is
    missing or fails, or ``SNAPSET_KERNELS=numpy`` is set, and the numpy versions compute the
    same (``_KERNELS.explain()`` says which and why)."""
    return _KERNELS.module()


class InconsistentError(ValueError):
    """``gf2.solve`` was given a system ``a @ x = b`` that has no solution over GF(2).

    ``certificate`` proves it: a 0/1 vector ``y`` (numpy ``uint8``, one entry per equation) with
    ``y @ a = 0`` and ``y @ b = 1``, i.e. a set of equations whose left sides add up to 0 and
    whose right sides add up to 1. ``column`` is the right-hand side it refers to (``None`` for
    a vector ``b``) and ``batch_index`` the matrix of a batch (``()`` without batch axes).

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> a, b = np.array([[1, 1], [1, 1], [0, 1]]), np.array([0, 1, 1])
        >>> try:
        ...     gf2.solve(a, b)
        ... except gf2.InconsistentError as error:
        ...     y = error.certificate
        >>> y.tolist(), gf2.matmul(y, a).tolist(), int(gf2.matmul(y, b))
        ([1, 1, 0], [0, 0], 1)
    """

    __module__ = "snapset.gf2"  # where users catch it

    def __init__(
        self,
        message: str,
        certificate: Bits,
        column: int | None = None,
        batch_index: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message)
        self.certificate = certificate
        self.column = column
        self.batch_index = batch_index


# ----- batches ----------------------------------------------------------------------------------


def batch_of(shape: Sequence[int]) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in index) for index in np.ndindex(*shape)]


def _where(index: tuple[int, ...]) -> str:
    return f" (batch entry {list(index)})" if index else ""


# ----- multiplication ---------------------------------------------------------------------------


def combinations(rows: Words) -> Words:
    """All ``2**len(rows)`` XOR combinations: entry ``v`` is the XOR of the rows ``i`` whose bit
    ``i`` is set in ``v``. Built by doubling, one whole-array XOR per row.

    ``rows`` may carry leading batch axes before the (rows, words) pair.
    """
    table = np.zeros((*rows.shape[:-2], 1, rows.shape[-1]), dtype=np.uint64)
    for i in range(rows.shape[-2]):
        table = np.concatenate([table, table ^ rows[..., i : i + 1, :]], axis=-2)
    return table


def matmul_words(a: Bits, b: Words) -> Words:
    """``a @ b`` over GF(2) with ``a`` as 0/1 bytes (m, k) and ``b`` packed (k, words)."""
    return matmul_selectors(np.packbits(a, axis=1, bitorder="little"), a.shape[1], b)


def matmul_selectors(selectors: Bits, k: int, b: Words) -> Words:
    """``a @ b`` over GF(2) with ``a`` packed eight entries a byte, ``(m, ceil(k / 8))``, entry
    ``j`` in bit ``j % 8`` of byte ``j // 8`` (the bytes of ``pack``'s words), and ``b`` packed
    ``(k, words)``."""
    m = selectors.shape[0]
    kernels = compiled()
    # Whole passes of the compiled kernel's tables; the padding rows of b are zero.
    step = _BLOCK * (1 if kernels is None else kernels.TABLES)
    groups = -(-k // step) * step // _BLOCK
    # Byte g of a row of ``a`` selects, among the 256 combinations of rows 8g..8g+7 of b, the one
    # that this row adds to its product.
    padded = np.zeros((m, groups), dtype=np.uint8)
    used = min(groups, selectors.shape[1])
    padded[:, :used] = selectors[:, :used]
    b_rows = np.zeros((groups * _BLOCK, b.shape[1]), dtype=np.uint64)
    b_rows[:k] = b
    out = np.zeros((m, b.shape[1]), dtype=np.uint64)
    if kernels is not None:
        kernels.matmul(padded, b_rows, out)
        return out
    # Tables for several groups at once amortise numpy's per-call overhead; the chunk bounds
    # the tables' memory to about 8 MiB.
    chunk = max(1, (1 << 20) // (256 * max(1, b.shape[1])))
    for start in range(0, groups, chunk):
        stop = min(groups, start + chunk)
        tables = combinations(
            b_rows[start * _BLOCK : stop * _BLOCK].reshape(stop - start, _BLOCK, -1)
        )
        for g in range(start, stop):
            out ^= tables[g - start][padded[:, g]]
    return out


def parity_products(x: Words, w: Words) -> Bits:
    """``x @ w.T`` over GF(2) for packed rows ``x`` ``(rows, words)`` and ``w`` ``(out,
    words)``: each entry the parity of the popcount of an AND (fast for few rows)."""
    out = np.zeros((x.shape[0], w.shape[0]), dtype=np.uint8)
    kernels = compiled()
    if kernels is not None:
        kernels.and_parity(x, w, out)
        return out
    for i, row in enumerate(x):
        out[i] = popcount(row & w) & 1
    return out


def matmul(a: ArrayT, b: ArrayT) -> ArrayT:
    """Matrix product over GF(2): ``(a @ b) mod 2``, computed exactly on packed bits.

    Follows ``np.matmul``'s shapes: ``(m, k) @ (k, n) -> (m, n)``, a 1-D operand is a vector
    (``(m, k) @ (k,) -> (m,)``, ``(k,) @ (k, n) -> (n,)``, ``(k,) @ (k,) -> ()``), and leading
    batch axes broadcast (``(2, 1, m, k) @ (3, k, n) -> (2, 3, m, n)``). The result has the
    promoted dtype of the inputs (booleans stay booleans) and is a torch tensor if either
    input is one.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> a = np.array([[1, 1], [0, 1]])
        >>> gf2.matmul(a, a).tolist()  # (a @ a) = [[1, 2], [0, 1]], and 2 = 0 in GF(2)
        [[1, 0], [0, 1]]
        >>> gf2.matmul(np.array([True, True]), np.array([True, True]))
        array(False)
        >>> gf2.matmul(np.stack([a, a.T]), [1, 1]).tolist()  # a batch of two products
        [[0, 1], [1, 0]]
    """
    a_bits, a_kind = to_bits(a, "a", "matmul")
    b_bits, b_kind = to_bits(b, "b", "matmul")
    if a_bits.ndim == 0 or b_bits.ndim == 0:
        raise ValueError(
            f"gf2.matmul: a and b must have at least one axis, got shapes "
            f"{tuple(a_bits.shape)} and {tuple(b_bits.shape)}"
        )
    a2: Bits = a_bits[None] if a_bits.ndim == 1 else a_bits
    b2: Bits = b_bits[:, None] if b_bits.ndim == 1 else b_bits
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"gf2.matmul: shapes {tuple(a_bits.shape)} and {tuple(b_bits.shape)} do not match "
            f"({a2.shape[-1]} != {b2.shape[-2]})"
        )
    batch: tuple[int, ...]
    a3, b3, batch = broadcast_batches(
        a2, b2, f"gf2.matmul: the batch axes of shapes {a_bits.shape} and {b_bits.shape}"
    )
    m, n = a2.shape[-2], b2.shape[-1]
    product = np.zeros((*batch, m, n), dtype=np.uint8)
    for index in batch_of(batch):
        product[index] = unpack_words(matmul_words(a3[index], pack_bits(b3[index])), n)
    if a_bits.ndim == 1:
        product = product[..., 0, :]
    if b_bits.ndim == 1:
        product = product[..., 0]
    return give_back(product, combine(a_kind, b_kind))  # type: ignore[no-any-return]


# ----- elimination ------------------------------------------------------------------------------


def _strip_basis(values: list[int], basis: dict[int, list[int]], width: int) -> list[int]:
    """Insert the strips ``values`` (small ints, one per candidate row) into an XOR basis.

    ``basis`` maps a pivot bit to ``[vector, mask]``: the vector's lowest set bit is the pivot
    bit, no other vector has that bit (reduced echelon form), and ``mask`` says which chosen
    rows XOR to it (bit ``i`` = the ``i``-th row chosen so far). Returns the positions in
    ``values`` that were chosen; stops early once the basis spans every bit of the block.
    """
    chosen: list[int] = []
    offset = len(basis)
    for position, value in enumerate(values):
        if len(basis) == width:
            break
        mask = 0
        for bit in sorted(basis):
            if value >> bit & 1:
                vector, combination = basis[bit]
                value ^= vector
                mask ^= combination
        if not value:
            continue
        mask ^= 1 << (offset + len(chosen))
        chosen.append(position)
        pivot = (value & -value).bit_length() - 1
        for entry in basis.values():
            if entry[0] >> pivot & 1:
                entry[0] ^= value
                entry[1] ^= mask
        basis[pivot] = [value, mask]
    return chosen


def _eliminate_numpy(words: Words, ncols: int) -> tuple[npt.NDArray[np.intp], list[int]]:
    """``eliminate`` in numpy, rows left in place (always reduced)."""
    unused = np.arange(words.shape[0])
    pivot_rows: list[int] = []
    pivot_cols: list[int] = []
    for start in range(0, ncols, _BLOCK):
        if not unused.size:
            break
        w, shift = divmod(start, WORD)
        width = min(_BLOCK, ncols - start)
        # The block's bits of every row, as small integers.
        strip = ((words[:, w] >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.intp)
        candidates = np.flatnonzero(strip[unused])
        if not candidates.size:
            continue
        # Pick the pivot rows on the strips alone, in Python: in a dense block the first few
        # candidates already span all 8 columns. Where they do not (a rank-deficient block),
        # the rest are reduced against the basis all at once and the first survivor joins.
        basis: dict[int, list[int]] = {}
        head = candidates[: 4 * _BLOCK]
        chosen = [int(head[i]) for i in _strip_basis(strip[unused[head]].tolist(), basis, width)]
        rest = candidates[head.size :]
        while rest.size and len(basis) < width:
            reduce = np.arange(1 << width)
            for bit, (vector, _) in basis.items():
                reduce ^= ((reduce >> bit) & 1) * vector
            left = np.flatnonzero(reduce[strip[unused[rest]]])
            if not left.size:
                break
            _strip_basis([int(strip[unused[rest[left[0]]]])], basis, width)
            chosen.append(int(rest[left[0]]))
            rest = rest[left[0] + 1 :]
        rows = unused[chosen]
        # Every row not used so far is zero left of this block, so only words w.. change. The
        # reduced pivot row of pivot bit b is the XOR of the chosen rows in its mask.
        originals = words[rows, w:]
        bits = sorted(basis)
        masks = np.array(
            [[basis[b][1] >> i & 1 for i in range(len(chosen))] for b in bits], dtype=np.uint64
        )
        reduced = np.bitwise_xor.reduce(masks[:, :, None] * originals[None], axis=1)
        # A row with strip s must add the reduced pivots of the pivot bits set in s: tabulate
        # that for all s (a zero row stands in for each bit that is not a pivot).
        per_bit = np.zeros((width, originals.shape[1]), dtype=np.uint64)
        per_bit[bits] = reduced
        words[:, w:] ^= combinations(per_bit)[strip]
        words[rows, w:] = reduced
        pivot_rows.extend(rows.tolist())
        pivot_cols.extend(start + b for b in bits)
        unused = np.delete(unused, chosen)
    return np.asarray(pivot_rows, dtype=np.intp), pivot_cols


def eliminate(
    words: Words, ncols: int, *, reduced: bool = True
) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Gauss-Jordan elimination over GF(2), in place, pivots looked for in columns ``< ncols``.

    Row operations act on whole rows, so columns at or past ``ncols`` (a right-hand side) are
    carried along. Returns the indices of the pivot rows sorted by pivot column, and those
    columns; every other row is then zero in its first ``ncols`` columns. The pivot columns are
    cleared from every other row (reduced row echelon form), or, with ``reduced=False`` where
    the compiled kernels run, at least from every non-pivot row (enough for a rank).
    """
    kernels = compiled()
    if kernels is None:
        return _eliminate_numpy(words, ncols)
    cols = np.zeros(max(0, min(words.shape[0], ncols)), dtype=np.int64)
    found = kernels.eliminate(words, ncols, reduced, cols)
    return np.arange(found, dtype=np.intp), cols[:found].tolist()


def _others(pivot_rows: npt.NDArray[np.intp], m: int) -> npt.NDArray[np.intp]:
    """The rows that found no pivot."""
    return np.setdiff1d(np.arange(m), pivot_rows)


def _rank(bits: Bits) -> int:
    # Elimination costs about rows * columns**2 word operations: put the short side across.
    if bits.shape[1] > bits.shape[0]:
        bits = bits.T
    return len(eliminate(pack_bits(bits), bits.shape[1], reduced=False)[1])


def rank(a: object) -> Any:
    """Rank of a 0/1 matrix over GF(2): a Python int, or for a batch ``(..., m, n)`` a numpy
    ``int64`` array of the batch's shape.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.rank(np.array([[1, 1], [1, 1]]))  # over the reals too
        1
        >>> gf2.rank(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]]))  # 2 over GF(2), 3 over the reals
        2
        >>> gf2.rank(np.stack([np.eye(3), np.ones((3, 3))])).tolist()
        [3, 1]
    """
    bits, _ = to_matrices(a, "a", "rank")
    if bits.ndim == 2:
        return _rank(bits)
    ranks = np.zeros(bits.shape[:-2], dtype=np.int64)
    for index in batch_of(bits.shape[:-2]):
        ranks[index] = _rank(bits[index])
    return ranks


def augmented(a: Bits, b: Bits) -> tuple[Words, int]:
    """``[a | b]`` packed, with ``b`` starting on a word boundary; returns it and b's first word."""
    left = pack_bits(a)
    return np.concatenate([left, pack_bits(b)], axis=1), left.shape[1]


def certificate(a: Bits, b: Bits) -> Bits | None:
    """A ``y`` with ``y @ a = 0`` and ``y @ b = 1`` (a proof that ``a @ x = b`` has no
    solution), or None where the system has one. ``b`` is a vector."""
    m, n = a.shape
    # Eliminating [a | b | I] records in the I part which equations each row adds up.
    words, split = augmented(a, np.concatenate([b[:, None], np.eye(m, dtype=np.uint8)], axis=1))
    pivot_rows, _ = eliminate(words, n)
    for row in _others(pivot_rows, m):
        right = unpack_words(words[row, split:], m + 1)
        if right[0]:
            return right[1:]
    return None


def solve_one(a: Bits, b: Bits, vector: bool, index: tuple[int, ...]) -> Bits:
    """One solution of ``a @ x = b`` for ``b`` of shape ``(m, k)``; see ``solve``."""
    m, n = a.shape
    k = b.shape[1]
    words, split = augmented(a, b)
    pivot_rows, pivot_cols = eliminate(words, n)
    # Rows that found no pivot are 0 on the left; a 1 on their right is the equation 0 = 1.
    leftover = words[_others(pivot_rows, m), split:]
    if leftover.any():
        column = int(np.flatnonzero(unpack_words(leftover, k).any(axis=0))[0])
        proof = certificate(a, b[:, column])
        assert proof is not None  # elimination found 0 = 1 in this column
        which = "" if vector else f" for right-hand side column {column}"
        raise InconsistentError(
            f"gf2.solve: the system a @ x = b is inconsistent (has no solution over GF(2))"
            f"{which}{_where(index)}: a has rank {len(pivot_cols)} but [a | b] has rank "
            f"{len(pivot_cols) + 1}. The error's `certificate` y proves it (y @ a = 0, "
            f"y @ b = 1); gf2.lstsq finds the x that satisfies the most equations.",
            proof,
            None if vector else column,
            index,
        )
    x = np.zeros((n, k), dtype=np.uint8)
    if pivot_cols:
        x[pivot_cols] = unpack_words(words[pivot_rows, split:], k)
    return x


def right_sides(a_bits: Bits, b_bits: Bits, fn: str) -> tuple[Bits, Bits, tuple[int, ...], bool]:
    """Shapes for ``a @ x = b`` with batches, as in ``numpy.linalg.solve`` (numpy >= 2): a 1-D
    ``b`` is one vector for every matrix, otherwise ``b`` is ``(..., m, k)``.

    Returns ``a`` and ``b`` broadcast to ``batch + (m, n)`` and ``batch + (m, k)``, the batch
    shape, and whether ``b`` was a vector.
    """
    m = a_bits.shape[-2]
    vector = b_bits.ndim == 1
    b2 = b_bits[:, None] if vector else b_bits
    if b2.ndim < 2 or b2.shape[-2] != m:
        raise ValueError(
            f"gf2.{fn}: b must have shape ({m},) or (..., {m}, k) to match a of shape "
            f"{tuple(a_bits.shape)}, got {tuple(b_bits.shape)}"
        )
    a3, b3, batch = broadcast_batches(
        a_bits, b2, f"gf2.{fn}: the batch axes of a {a_bits.shape} and b {b_bits.shape}"
    )
    return a3, b3, batch, vector


def broadcast_batches(a: Bits, b: Bits, what: str) -> tuple[Bits, Bits, tuple[int, ...]]:
    """Stacks of matrices ``a`` and ``b`` broadcast to one batch shape, as numpy's matmul
    does; ``what`` starts the message when their batch axes do not broadcast."""
    try:
        batch: tuple[int, ...] = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"{what} do not broadcast") from None
    return (
        np.broadcast_to(a, (*batch, *a.shape[-2:])),
        np.broadcast_to(b, (*batch, *b.shape[-2:])),
        batch,
    )


def _per_system(
    a: object,
    b: object,
    fn: str,
    each: Callable[[Bits, Bits, bool, tuple[int, ...]], Bits],
) -> tuple[Bits, Kind, bool]:
    """Run ``each`` on every system of a batch; returns the stacked ``x``, its kind, vector."""
    a_bits, a_kind = to_matrices(a, "a", fn)
    b_bits, b_kind = to_bits(b, "b", fn)
    a3, b3, batch, vector = right_sides(a_bits, b_bits, fn)
    x = np.zeros((*batch, a3.shape[-1], b3.shape[-1]), dtype=np.uint8)
    for index in batch_of(batch):
        x[index] = each(a3[index], b3[index], vector, index)
    return (x[..., 0] if vector else x), combine(a_kind, b_kind), vector


def solve(a: ArrayT, b: ArrayT) -> ArrayT:
    """One solution ``x`` of ``a @ x = b`` over GF(2).

    ``a`` is ``(m, n)``, of any shape and rank; ``b`` is ``(m,)`` or ``(m, k)`` (k right-hand
    sides at once). With leading batch axes, as ``numpy.linalg.solve`` (numpy >= 2): ``a`` is
    ``(..., m, n)``, a 1-D ``b`` is one vector for every matrix, otherwise ``b`` is
    ``(..., m, k)``, and the batch axes broadcast. Where the solution is not unique, the free
    variables are set to 0 (a particular solution); add any combination of the rows of
    ``nullspace(a)`` to get the others. An inconsistent system (no solution) raises
    [`InconsistentError`][snapset.gf2.InconsistentError], a ``ValueError`` whose
    ``certificate`` proves it; [`lstsq`][snapset.gf2.lstsq] then finds the ``x`` that
    satisfies the most equations.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> a = np.array([[1, 1, 0], [0, 1, 1]])
        >>> x = gf2.solve(a, np.array([1, 0]))
        >>> x.tolist(), gf2.matmul(a, x).tolist()
        ([1, 0, 0], [1, 0])
        >>> gf2.solve(np.array([[1, 1], [1, 1]]), np.array([0, 1]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        snapset.gf2.InconsistentError: gf2.solve: the system a @ x = b is inconsistent ...
    """
    x, kind, _ = _per_system(a, b, "solve", solve_one)
    return give_back(x, kind)  # type: ignore[no-any-return]


def _nullspace(bits: Bits) -> Bits:
    n = bits.shape[1]
    words = pack_bits(bits)
    pivot_rows, pivot_cols = eliminate(words, n)
    reduced = unpack_words(words[pivot_rows], n)
    free = np.setdiff1d(np.arange(n), pivot_cols)
    # Free variable f set to 1 and every other free variable to 0 forces pivot variable i to
    # the entry of reduced row i in column f.
    basis = np.zeros((free.size, n), dtype=np.uint8)
    basis[np.arange(free.size), free] = 1
    if pivot_cols:
        basis[:, pivot_cols] = reduced[:, free].T
    return basis


def nullspace(a: ArrayT) -> ArrayT:
    """A basis of the null space ``{x : a @ x = 0}`` over GF(2), one basis vector per row.

    For ``a`` of shape ``(m, n)`` and rank ``r`` the result has shape ``(n - r, n)``; its rows
    are independent and ``a @ nullspace(a).T == 0``. Every solution of ``a @ x = b`` is
    ``solve(a, b)`` plus a combination of these rows. For a batch ``(..., m, n)`` the result is
    ``(..., n - min_rank, n)``: each matrix's basis, then zero rows up to the batch's largest
    null space (its non-zero rows are its basis).

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.nullspace(np.array([[1, 1, 0], [0, 1, 1]])).tolist()
        [[1, 1, 1]]
        >>> gf2.nullspace(np.eye(2, dtype=np.uint8)).shape
        (0, 2)
        >>> gf2.nullspace(np.array([[[1, 1]], [[0, 0]]])).tolist()  # ranks 1 and 0
        [[[1, 1], [0, 0]], [[1, 0], [0, 1]]]
    """
    bits, kind = to_matrices(a, "a", "nullspace")
    batch: tuple[int, ...] = bits.shape[:-2]
    bases = {index: _nullspace(bits[index]) for index in batch_of(batch)}
    n = bits.shape[-1]
    most = max((basis.shape[0] for basis in bases.values()), default=0 if batch else n)
    out = np.zeros((*batch, most, n), dtype=np.uint8)
    for index, basis in bases.items():
        out[index][: basis.shape[0]] = basis
    return give_back(out, kind)  # type: ignore[no-any-return]


def _inv(bits: Bits, index: tuple[int, ...]) -> Bits:
    n = bits.shape[0]
    words, split = augmented(bits, np.eye(n, dtype=np.uint8))
    pivot_rows, pivot_cols = eliminate(words, n)
    if len(pivot_cols) < n:
        raise ValueError(
            f"gf2.inv: the matrix{_where(index)} is singular over GF(2) (rank "
            f"{len(pivot_cols)} < {n}); it has no inverse. Use gf2.solve for a system that may "
            f"still have solutions."
        )
    return unpack_words(words[pivot_rows, split:], n)


def inv(a: ArrayT) -> ArrayT:
    """Inverse of a square matrix (or of each in a batch ``(..., n, n)``) over GF(2).

    Raises ``ValueError`` if a matrix is not square or is singular (naming the batch entry).

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> a = np.array([[1, 1], [0, 1]])
        >>> gf2.inv(a).tolist()  # its own inverse: a @ a = I over GF(2)
        [[1, 1], [0, 1]]
        >>> gf2.inv(np.array([[1, 1], [1, 1]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: gf2.inv: the matrix is singular over GF(2) (rank 1 < 2); it has no inverse...
    """
    bits, kind = to_matrices(a, "a", "inv")
    if bits.shape[-1] != bits.shape[-2]:
        raise ValueError(f"gf2.inv: the matrix must be square, got shape {tuple(bits.shape)}")
    out = np.zeros(bits.shape, dtype=np.uint8)
    for index in batch_of(bits.shape[:-2]):
        out[index] = _inv(bits[index], index)
    return give_back(out, kind)  # type: ignore[no-any-return]
