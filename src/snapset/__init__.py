"""snapset: train parameters restricted to a finite set of values you choose.

The framework-free core lives here; the fronts are ``snapset.torch`` and ``snapset.keras``,
imported on demand so that ``import snapset`` needs neither torch nor keras.
"""

from ._sets import Binary as Binary
from ._sets import Sign as Sign
from ._sets import Ternary as Ternary
from ._sets import ValueSet as ValueSet

__version__ = "0.1.0"
