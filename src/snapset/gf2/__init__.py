"""Exact linear algebra over GF(2), the binary field, on bit-packed 64-bit words.

In GF(2) the only values are 0 and 1, addition is XOR and multiplication is AND. This package
takes 0/1 (or boolean) matrices as numpy arrays or torch tensors, packs each row into ``uint64``
words (64 entries per word, entry ``j`` in bit ``j % 64`` of word ``j // 64``) and works on
whole words, so that one XOR adds 64 entries at once.

* Elimination (``rank``, ``solve``, ``nullspace``, ``inv``) takes the pivot columns eight at a
  time, in the manner of the "method of four Russians" (M4RI): it finds up to eight pivot rows
  among those columns, tabulates all 256 XOR combinations of them, and clears those columns
  from every row with a single table look-up and one XOR of whole rows.
* ``matmul`` is the four-Russians product (M4RM): for each group of eight rows of ``b`` it
  tabulates their 256 XOR combinations and adds to every row of the result the combination
  selected by the matching byte of ``a``.
* ``lstsq`` solves noisy systems (the ``x`` that breaks the fewest equations) by
  information-set decoding; ``solve`` proves an inconsistent system has no solution.
* ``from_int`` and ``to_int`` convert between integers and bit vectors.

Every function takes leading batch axes (``(..., m, n)``). With numba installed (the
``kernels`` extra) the loops run compiled, on one thread (the first call in a fresh environment
compiles them, for a few seconds; later processes load them from numba's cache; without a
writable cache directory, or with damaged cache files, each process compiles them, with a
warning); without numba, where it fails, or with ``SNAPSET_KERNELS=numpy`` set, numpy computes
the same results, slower.

Results come back as the kind of array that was given: numpy in, numpy out (with the input's
dtype); torch in, torch out (same dtype and device). torch is never imported
unless a tensor is passed in. Ranks and weights come back as Python ints (numpy arrays for
batches).

Examples:
    >>> import numpy as np
    >>> from snapset import gf2
    >>> a = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    >>> gf2.rank(a)  # the third row is the sum of the first two
    2
    >>> gf2.matmul(a, [1, 1, 1]).tolist()
    [0, 0, 0]
"""

from ._bits import from_int as from_int
from ._bits import pack as pack
from ._bits import to_int as to_int
from ._bits import unpack as unpack
from ._decoding import LstsqResult as LstsqResult
from ._decoding import lstsq as lstsq
from ._linalg import InconsistentError as InconsistentError
from ._linalg import inv as inv
from ._linalg import matmul as matmul
from ._linalg import nullspace as nullspace
from ._linalg import rank as rank
from ._linalg import solve as solve

__all__ = [
    "InconsistentError",
    "LstsqResult",
    "from_int",
    "inv",
    "lstsq",
    "matmul",
    "nullspace",
    "pack",
    "rank",
    "solve",
    "to_int",
    "unpack",
]
