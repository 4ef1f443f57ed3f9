"""Kernels, framework-free: matrix products on weights stored as codes of a value set, the
flip optimizer's step, and the latent methods' projection and estimators.

Both fronts reach the matrix products through their packed layers; nothing here imports torch
or keras. The maths of each is written once, in numba (``_numba``), with a vectorised numpy
fallback that computes the same thing where numba is missing or ``SNAPSET_KERNELS=numpy`` is
set. The flip step (``_flip``) and the projection (``_project``) are one compiled pass each;
where they cannot run, ``snapset.torch`` computes the same with torch's operations.
"""

from ._flip import codes_of_planes as codes_of_planes
from ._flip import compiled as compiled
from ._flip import flip_step as flip_step
from ._flip import plane_shape as plane_shape
from ._flip import recode as recode
from ._int8 import grid_integers as grid_integers
from ._int8 import int8_weight as int8_weight
from ._int8 import integer_grid as integer_grid
from ._matrix import LOOKUP_MAX_ROWS as LOOKUP_MAX_ROWS
from ._matrix import PackedMatrix as PackedMatrix
from ._matrix import backend as backend
from ._matrix import decode_rows as decode_rows
from ._matrix import lookup_max_rows as lookup_max_rows
from ._matrix import sign_bits as sign_bits
from ._matrix import small_matmul as small_matmul
from ._matrix import xnor_bits as xnor_bits
from ._project import ESTIMATOR_KERNELS as ESTIMATOR_KERNELS
from ._project import estimator_grad as estimator_grad
from ._project import nearest as nearest

__all__ = [
    "ESTIMATOR_KERNELS",
    "LOOKUP_MAX_ROWS",
    "PackedMatrix",
    "backend",
    "codes_of_planes",
    "compiled",
    "decode_rows",
    "estimator_grad",
    "flip_step",
    "grid_integers",
    "int8_weight",
    "integer_grid",
    "lookup_max_rows",
    "nearest",
    "plane_shape",
    "recode",
    "sign_bits",
    "small_matmul",
    "xnor_bits",
]
