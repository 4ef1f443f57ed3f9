"""Exact linear algebra over GF(2), the binary field, on bit-packed 64-bit words.

In GF(2) the only values are 0 and 1, addition is XOR and multiplication is AND. This module
takes 0/1 (or boolean) matrices as numpy arrays or torch tensors, packs each row into ``uint64``
words (64 entries per word, entry ``j`` in bit ``j % 64`` of word ``j // 64``) and works on
whole words, so that one XOR adds 64 entries at once.

* Elimination (``rank``, ``solve``, ``nullspace``, ``inv``) takes the pivot
  columns eight at a time, in the manner of the "method of four Russians" (M4RI): it finds up to
  eight pivot rows among those columns, tabulates all 256 XOR combinations of them, and clears
  those columns from every row with a single table look-up and one XOR of whole rows.
* ``matmul`` is the four-Russians product: for each group of eight rows of ``b`` it
  tabulates their 256 XOR combinations and adds to every row of the result the combination
  selected by the matching byte of ``a``.

Results come back as the kind of array that was given: numpy in, numpy out (with the input's
dtype); torch in, torch out (same dtype and device). torch is never imported unless a tensor
is passed in. Rank and shapes come back as Python ints.

Examples:
    >>> import numpy as np
    >>> from snapset import gf2
    >>> a = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    >>> gf2.rank(a)  # the third row is the sum of the first two
    2
    >>> gf2.matmul(a, [1, 1, 1]).tolist()
    [0, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["inv", "matmul", "nullspace", "pack", "rank", "solve", "unpack"]

ArrayT = TypeVar("ArrayT", "npt.NDArray[Any]", "torch.Tensor")
Bits = npt.NDArray[np.uint8]
Words = npt.NDArray[np.uint64]

_WORD = 64
# Columns handled per elimination step: one byte, so the table of XOR combinations has 256 rows
# and a block never straddles two words.
_BLOCK = 8


# ----- input checking and the round trip to numpy ---------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """What the caller gave: where results go back to (numpy or torch, dtype, device)."""

    torch: bool
    dtype: Any
    device: Any = None


def _is_tensor(x: object) -> bool:
    # By module name, so that torch is never imported for numpy callers.
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _to_bits(x: object, name: str, fn: str) -> tuple[Bits, _Kind]:
    """Check that ``x`` holds only 0 and 1 and return it as a uint8 array, plus its kind."""
    if _is_tensor(x):
        import torch

        t: torch.Tensor = x  # type: ignore[assignment]
        kind = _Kind(torch=True, dtype=t.dtype, device=t.device)
        t = t.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # numpy has no bfloat16; 0 and 1 are exact in float32
        if t.is_complex():
            raise ValueError(
                f"gf2.{fn}: {name} is a complex tensor; GF(2) needs real 0/1 or boolean entries."
            )
        array = t.numpy()
    else:
        array = np.asarray(x)
        kind = _Kind(torch=False, dtype=array.dtype)
    if array.dtype.kind == "b":
        return array.astype(np.uint8), kind
    if array.dtype.kind not in "uif":
        raise ValueError(
            f"gf2.{fn}: {name} has dtype {array.dtype}; GF(2) needs 0/1 numbers or booleans, "
            f"e.g. np.asarray(data, dtype=np.uint8)."
        )
    bad = (array != 0) & (array != 1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[where].item()
        raise ValueError(
            f"gf2.{fn}: {name} must hold only 0 and 1 (or booleans), but {name}{list(where)} = "
            f"{value!r}. Map your data into GF(2) first, e.g. `x % 2` for integers or "
            f"`x > 0.5` for a threshold."
        )
    return array.astype(np.uint8), kind


def _to_matrix(x: object, name: str, fn: str) -> tuple[Bits, _Kind]:
    bits, kind = _to_bits(x, name, fn)
    if bits.ndim != 2:
        raise ValueError(
            f"gf2.{fn}: {name} must be a 2-D matrix, got shape {tuple(bits.shape)}; "
            f"reshape it to (rows, columns) first."
        )
    return bits, kind


def _combine(a: _Kind, b: _Kind) -> _Kind:
    """The kind of a result computed from two inputs: torch wins, dtypes promote."""
    if a.torch or b.torch:
        import torch

        def as_torch(kind: _Kind) -> torch.dtype:
            if kind.torch:
                return kind.dtype  # type: ignore[no-any-return]
            return torch.from_numpy(np.zeros(0, dtype=kind.dtype)).dtype

        device = a.device if a.torch else b.device
        return _Kind(True, torch.promote_types(as_torch(a), as_torch(b)), device)
    return _Kind(False, np.result_type(a.dtype, b.dtype))


def _give_back(bits: npt.NDArray[Any], kind: _Kind) -> Any:
    if kind.torch:
        import torch

        return torch.from_numpy(np.ascontiguousarray(bits)).to(device=kind.device, dtype=kind.dtype)
    return bits.astype(kind.dtype)


# ----- packing ----------------------------------------------------------------------------------


def _pack(bits: Bits) -> Words:
    """Pack the last axis of a 0/1 uint8 array into little-endian uint64 words."""
    n = bits.shape[-1]
    nwords = -(-n // _WORD)
    padded = np.zeros((*bits.shape[:-1], nwords * _WORD), dtype=np.uint8)
    padded[..., :n] = bits
    # packbits works in bytes; little bit order plus little-endian words puts entry j in bit
    # j % 64 of word j // 64 on every machine.
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return packed.view("<u8").astype(np.uint64)


def _unpack(words: Words, n: int) -> Bits:
    as_bytes = np.ascontiguousarray(words.astype("<u8")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little")


def pack(bits: ArrayT) -> ArrayT:
    """Pack the last axis of a 0/1 array into 64-bit words.

    Entry ``j`` of a row goes to bit ``j % 64`` (least significant first) of word ``j // 64``;
    the unused high bits of the last word are 0. The result has shape
    ``(..., ceil(n / 64))`` and dtype ``uint64`` (numpy ``uint64`` for numpy input,
    ``torch.uint64`` on the input's device for a tensor).

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.pack(np.array([[1, 0, 1], [0, 0, 0]])).tolist()
        [[5], [0]]
        >>> gf2.pack(np.ones(65, dtype=bool)).tolist()
        [18446744073709551615, 1]
    """
    raw, kind = _to_bits(bits, "bits", "pack")
    if raw.ndim == 0:
        raise ValueError("gf2.pack: bits must have at least one axis, got a scalar")
    words = _pack(raw)
    if kind.torch:
        import torch

        return torch.from_numpy(words).to(kind.device)  # type: ignore[return-value]
    return words  # type: ignore[return-value]


def unpack(words: ArrayT, n: int) -> ArrayT:
    """Inverse of ``pack``: the first ``n`` bits of each row of 64-bit words, as 0/1.

    ``words`` may be numpy ``uint64``/``int64`` or a torch ``uint64``/``int64`` tensor (the same
    64 bits either way). Returns ``uint8`` entries of shape ``(..., n)``.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.unpack(np.array([5], dtype=np.uint64), 4).tolist()
        [1, 0, 1, 0]
        >>> bits = np.random.default_rng(0).integers(0, 2, size=(3, 100))
        >>> bool((gf2.unpack(gf2.pack(bits), 100) == bits).all())
        True
    """
    if _is_tensor(words):
        import torch

        t: torch.Tensor = words  # type: ignore[assignment]
        device = t.device
        array = t.detach().cpu().numpy()
    else:
        device = None
        array = np.asarray(words)
    if array.dtype not in (np.dtype(np.uint64), np.dtype(np.int64)):
        raise ValueError(
            f"gf2.unpack: words must be 64-bit integers as made by gf2.pack, got dtype "
            f"{array.dtype}"
        )
    if array.ndim == 0:
        raise ValueError("gf2.unpack: words must have at least one axis, got a scalar")
    if not 0 <= n <= array.shape[-1] * _WORD:
        raise ValueError(
            f"gf2.unpack: n = {n} bits asked for, but {array.shape[-1]} words hold at most "
            f"{array.shape[-1] * _WORD}"
        )
    bits = _unpack(array.view(np.uint64), n)
    if device is not None:
        import torch

        return torch.from_numpy(bits).to(device)  # type: ignore[return-value]
    return bits  # type: ignore[return-value]


# ----- multiplication ---------------------------------------------------------------------------


def _combinations(rows: Words) -> Words:
    """All ``2**len(rows)`` XOR combinations: entry ``v`` is the XOR of the rows ``i`` whose bit
    ``i`` is set in ``v``. Built by doubling, one whole-array XOR per row.

    ``rows`` may carry leading batch axes before the (rows, words) pair.
    """
    table = np.zeros((*rows.shape[:-2], 1, rows.shape[-1]), dtype=np.uint64)
    for i in range(rows.shape[-2]):
        table = np.concatenate([table, table ^ rows[..., i : i + 1, :]], axis=-2)
    return table


def _matmul_words(a: Bits, b: Words) -> Words:
    """``a @ b`` over GF(2) with ``a`` as 0/1 bytes (m, k) and ``b`` packed (k, words)."""
    m, k = a.shape
    groups = -(-k // _BLOCK)
    # Byte g of a row of ``a`` selects, among the 256 combinations of rows 8g..8g+7 of b, the one
    # that this row adds to its product.
    selectors = np.packbits(a, axis=1, bitorder="little")
    b_rows = np.zeros((groups * _BLOCK, b.shape[1]), dtype=np.uint64)
    b_rows[:k] = b
    out = np.zeros((m, b.shape[1]), dtype=np.uint64)
    # Tables for several groups at once amortise numpy's per-call overhead; the chunk bounds
    # the tables' memory to about 8 MiB.
    chunk = max(1, (1 << 20) // (256 * max(1, b.shape[1])))
    for start in range(0, groups, chunk):
        stop = min(groups, start + chunk)
        tables = _combinations(
            b_rows[start * _BLOCK : stop * _BLOCK].reshape(stop - start, _BLOCK, -1)
        )
        for g in range(start, stop):
            out ^= tables[g - start][selectors[:, g]]
    return out


def matmul(a: ArrayT, b: ArrayT) -> ArrayT:
    """Matrix product over GF(2): ``(a @ b) mod 2``, computed exactly on packed bits.

    Follows ``np.matmul``'s shapes for 1-D and 2-D operands: ``(m, k) @ (k, n) -> (m, n)``,
    ``(m, k) @ (k,) -> (m,)``, ``(k,) @ (k, n) -> (n,)``, ``(k,) @ (k,) -> ()``. The result has
    the promoted dtype of the inputs (booleans stay booleans) and is a torch tensor if either
    input is one.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> a = np.array([[1, 1], [0, 1]])
        >>> gf2.matmul(a, a).tolist()  # (a @ a) = [[1, 2], [0, 1]], and 2 = 0 in GF(2)
        [[1, 0], [0, 1]]
        >>> gf2.matmul(np.array([True, True]), np.array([True, True]))
        array(False)
    """
    a_bits, a_kind = _to_bits(a, "a", "matmul")
    b_bits, b_kind = _to_bits(b, "b", "matmul")
    if a_bits.ndim not in (1, 2) or b_bits.ndim not in (1, 2):
        raise ValueError(
            f"gf2.matmul: a and b must be 1-D or 2-D, got shapes {tuple(a_bits.shape)} and "
            f"{tuple(b_bits.shape)}; reshape batches to (rows, columns) first."
        )
    a2 = a_bits.reshape(1, -1) if a_bits.ndim == 1 else a_bits
    b2 = b_bits.reshape(-1, 1) if b_bits.ndim == 1 else b_bits
    if a2.shape[1] != b2.shape[0]:
        raise ValueError(
            f"gf2.matmul: shapes {tuple(a_bits.shape)} and {tuple(b_bits.shape)} do not match "
            f"({a2.shape[1]} != {b2.shape[0]})"
        )
    product = _unpack(_matmul_words(a2, _pack(b2)), b2.shape[1])
    shape = a_bits.shape[:-1] + b_bits.shape[1:]
    return _give_back(product.reshape(shape), _combine(a_kind, b_kind))  # type: ignore[no-any-return]


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


def _eliminate(words: Words, ncols: int) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Gauss-Jordan elimination over GF(2), in place, pivots looked for in columns ``< ncols``.

    Row operations act on whole rows, so columns at or past ``ncols`` (a right-hand side) are
    carried along. Rows are not moved: returns the indices of the pivot rows sorted by pivot
    column, and those columns. ``words[indices]`` is then the reduced row echelon form (its
    non-zero rows, when ``ncols`` covers every column); every other row is zero in its first
    ``ncols`` columns.
    """
    unused = np.arange(words.shape[0])
    pivot_rows: list[int] = []
    pivot_cols: list[int] = []
    for start in range(0, ncols, _BLOCK):
        if not unused.size:
            break
        w, shift = divmod(start, _WORD)
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
        words[:, w:] ^= _combinations(per_bit)[strip]
        words[rows, w:] = reduced
        pivot_rows.extend(rows.tolist())
        pivot_cols.extend(start + b for b in bits)
        unused = np.delete(unused, chosen)
    return np.asarray(pivot_rows, dtype=np.intp), pivot_cols


def rank(a: object) -> int:
    """Rank of a 0/1 matrix over GF(2).

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.rank(np.array([[1, 1], [1, 1]]))  # over the reals too
        1
        >>> gf2.rank(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]]))  # 2 over GF(2), 3 over the reals
        2
    """
    bits, _ = _to_matrix(a, "a", "rank")
    # Elimination costs about rows * columns**2 word operations: put the short side across.
    if bits.shape[1] > bits.shape[0]:
        bits = bits.T
    return len(_eliminate(_pack(bits), bits.shape[1])[1])


def _augmented(a: Bits, b: Bits) -> tuple[Words, int]:
    """``[a | b]`` packed, with ``b`` starting on a word boundary; returns it and b's first word."""
    left = _pack(a)
    return np.concatenate([left, _pack(b)], axis=1), left.shape[1]


def solve(a: ArrayT, b: ArrayT) -> ArrayT:
    """One solution ``x`` of ``a @ x = b`` over GF(2).

    ``a`` is ``(m, n)``, any shape and rank; ``b`` is ``(m,)`` or ``(m, k)`` (k right-hand sides
    at once). Where the solution is not unique, the free variables are set to 0; add any
    combination of the rows of ``nullspace`` to get the others. Raises ``ValueError`` if the
    system is inconsistent (has no solution).

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
        ValueError: gf2.solve: the system a @ x = b is inconsistent (has no solution ...
    """
    a_bits, a_kind = _to_matrix(a, "a", "solve")
    b_bits, b_kind = _to_bits(b, "b", "solve")
    if b_bits.ndim not in (1, 2) or b_bits.shape[0] != a_bits.shape[0]:
        raise ValueError(
            f"gf2.solve: b must have shape ({a_bits.shape[0]},) or ({a_bits.shape[0]}, k) to "
            f"match a of shape {tuple(a_bits.shape)}, got {tuple(b_bits.shape)}"
        )
    b2 = b_bits.reshape(-1, 1) if b_bits.ndim == 1 else b_bits
    n = a_bits.shape[1]
    k = b2.shape[1]
    words, split = _augmented(a_bits, b2)
    pivot_rows, pivot_cols = _eliminate(words, n)
    # Rows that found no pivot are 0 on the left; a 1 on their right is the equation 0 = 1.
    leftover = np.delete(words[:, split:], pivot_rows, axis=0)
    if leftover.any():
        bad = np.flatnonzero(_unpack(leftover, k).any(axis=0))
        which = "" if b_bits.ndim == 1 else f" for right-hand side column(s) {bad.tolist()}"
        rank_ab = rank(np.concatenate([a_bits, b2[:, bad[:1]]], axis=1))
        raise ValueError(
            f"gf2.solve: the system a @ x = b is inconsistent (has no solution over GF(2))"
            f"{which}: a has rank {len(pivot_cols)} but [a | b] has rank {rank_ab}"
        )
    x = np.zeros((n, k), dtype=np.uint8)
    if pivot_cols:
        x[pivot_cols] = _unpack(words[pivot_rows, split:], k)
    result = x[:, 0] if b_bits.ndim == 1 else x
    return _give_back(result, _combine(a_kind, b_kind))  # type: ignore[no-any-return]


def nullspace(a: ArrayT) -> ArrayT:
    """A basis of the null space ``{x : a @ x = 0}`` over GF(2), one basis vector per row.

    For ``a`` of shape ``(m, n)`` and rank ``r`` the result has shape ``(n - r, n)``; its rows
    are independent and ``a @ nullspace(a).T == 0``. Every solution of ``a @ x = b`` is
    ``solve(a, b)`` plus a combination of these rows.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.nullspace(np.array([[1, 1, 0], [0, 1, 1]])).tolist()
        [[1, 1, 1]]
        >>> gf2.nullspace(np.eye(2, dtype=np.uint8)).shape
        (0, 2)
    """
    bits, kind = _to_matrix(a, "a", "nullspace")
    n = bits.shape[1]
    words = _pack(bits)
    pivot_rows, pivot_cols = _eliminate(words, n)
    reduced = _unpack(words[pivot_rows], n)
    free = np.setdiff1d(np.arange(n), pivot_cols)
    # Free variable f set to 1 and every other free variable to 0 forces pivot variable i to
    # the entry of reduced row i in column f.
    basis = np.zeros((free.size, n), dtype=np.uint8)
    basis[np.arange(free.size), free] = 1
    if pivot_cols:
        basis[:, pivot_cols] = reduced[:, free].T
    return _give_back(basis, kind)  # type: ignore[no-any-return]


def inv(a: ArrayT) -> ArrayT:
    """Inverse of a square matrix over GF(2); ``ValueError`` if it is not square or singular.

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
    bits, kind = _to_matrix(a, "a", "inv")
    n = bits.shape[0]
    if bits.shape[1] != n:
        raise ValueError(f"gf2.inv: the matrix must be square, got shape {tuple(bits.shape)}")
    words, split = _augmented(bits, np.eye(n, dtype=np.uint8))
    pivot_rows, pivot_cols = _eliminate(words, n)
    if len(pivot_cols) < n:
        raise ValueError(
            f"gf2.inv: the matrix is singular over GF(2) (rank {len(pivot_cols)} < {n}); it has "
            f"no inverse. Use gf2.solve for a system that may still have solutions."
        )
    return _give_back(_unpack(words[pivot_rows, split:], n), kind)  # type: ignore[no-any-return]
