"""Settings for every test and doctest (``src`` and ``tests``)."""

import os

# The 8-bit path of packed layers is planned only where torch._int_mm is fast (AVX-512 or
# AMX); the tests and the documented examples check it on any CPU, as the same code runs.
os.environ.setdefault("SNAPSET_INT8_MATMUL", "1")
