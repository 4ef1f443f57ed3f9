"""Packed kernels, framework-free: matrix products on weights stored as codes of a value set.

Both fronts reach them through their packed layers; nothing here imports torch or keras. The
maths of each kernel is written once, in numba (``_numba``), with a vectorised numpy fallback
that computes the same thing where numba is missing or ``SNAPSET_KERNELS=numpy`` is set.
"""

from ._matrix import PackedMatrix as PackedMatrix
from ._matrix import backend as backend
from ._matrix import decode_rows as decode_rows
from ._matrix import small_matmul as small_matmul

__all__ = ["PackedMatrix", "backend", "decode_rows", "small_matmul"]
