"""Fixtures shared by the packing tests."""

import pytest

from snapset import _kernels


@pytest.fixture(params=["numba", "numpy"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once on the compiled kernels and once on the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    assert _kernels.backend() == request.param  # numba is installed with the export extra
    return str(request.param)
