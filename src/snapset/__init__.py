"""snapset: train parameters restricted to a finite set of values you choose.

The framework-free core lives here (``ValueSet`` and the sets it ships, and
[`snapset.gf2`][]); the fronts are [`snapset.torch`][] and
[`snapset.keras`][], imported on demand so that ``import snapset`` needs neither torch
nor keras.

Examples:
    >>> import snapset
    >>> snapset.ValueSet([1, -1, 0.5, -0.5]).values
    (-1.0, -0.5, 0.5, 1.0)
    >>> snapset.Ternary() == snapset.ValueSet([-1, 0, 1])
    True
"""

from importlib.metadata import PackageNotFoundError, version

from ._sets import Binary as Binary
from ._sets import Sign as Sign
from ._sets import Ternary as Ternary
from ._sets import ValueSet as ValueSet
from ._spec import OutsideSetError as OutsideSetError

try:
    __version__ = version("snapset")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Binary", "OutsideSetError", "Sign", "Ternary", "ValueSet", "__version__"]
