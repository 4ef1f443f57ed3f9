"""The Keras 3 front of snapset: exact set-valued layers and a flip optimizer, on any backend.

Written only against ``keras.ops``, so it runs on the TensorFlow, JAX and torch backends with
the semantics of the PyTorch front ([`snapset.torch`][]).

Examples:
    >>> import numpy as np, snapset.keras as sk
    >>> layer = sk.Multiplier(values=[1, -1, 0.5, -0.5])
    >>> _ = layer(np.ones((1, 8), "float32"))
    >>> set(layer.exact_weights()["kernel"].tolist()) <= {1.0, -1.0, 0.5, -0.5}
    True
"""

try:
    import keras as _keras
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "snapset.keras needs Keras 3 and a backend: pip install 'snapset[keras,tensorflow]' "
        "(or keras with jax or torch)"
    ) from error

if not _keras.__version__.startswith("3."):  # pragma: no cover - Keras 2 is not installed here
    raise ImportError(
        f"snapset.keras needs Keras 3, found keras {_keras.__version__}: pip install 'keras>=3.4'"
    )

from .._sets import ValueSet as _ValueSet
from .._spec import ESTIMATORS as ESTIMATORS
from .._spec import INITS as INITS
from .._summary import Summary as Summary
from .._summary import SummaryRow as SummaryRow
from . import export as export
from . import optim as optim
from ._batchnorm import reestimate_batchnorm as reestimate_batchnorm
from ._callbacks import FlipRatio as FlipRatio
from ._constrain import constrain as constrain
from ._constrain import exact_weights as exact_weights
from ._constrain import harden_ as harden_
from ._constrain import scaled_parts as scaled_parts
from ._constrain import set_temperature as set_temperature
from ._diagnostics import summary as summary
from ._layers import Conv1D as Conv1D
from ._layers import Conv2D as Conv2D
from ._layers import Dense as Dense
from ._layers import Multiplier as Multiplier
from ._layers import SetLayer as SetLayer
from ._methods import METHODS as METHODS
from ._methods import STE as STE
from ._methods import Flip as Flip
from ._methods import GumbelSoftmax as GumbelSoftmax
from ._methods import Method as Method
from ._methods import Scale as Scale
from ._methods import StochasticRounding as StochasticRounding
from ._methods import flip_values as flip_values
from ._quantize import Quantize as Quantize
from ._quantize import quantize as quantize
from .export import load as load
from .export import save as save
from .optim import Bop as Bop
from .optim import Bop2ndOrder as Bop2ndOrder
from .optim import Router as Router

__all__ = [
    "ESTIMATORS",
    "INITS",
    "METHODS",
    "STE",
    "Bop",
    "Bop2ndOrder",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Flip",
    "FlipRatio",
    "GumbelSoftmax",
    "Method",
    "Multiplier",
    "Quantize",
    "Router",
    "Scale",
    "SetLayer",
    "StochasticRounding",
    "Summary",
    "SummaryRow",
    "constrain",
    "exact_weights",
    "export",
    "flip_values",
    "harden_",
    "load",
    "optim",
    "quantize",
    "reestimate_batchnorm",
    "save",
    "scaled_parts",
    "set_temperature",
    "summary",
]

# keras.saving.serialize_keras_object / deserialize_keras_object round-trip value sets.
_keras.saving.register_keras_serializable(package="snapset")(_ValueSet)
