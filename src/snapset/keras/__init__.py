"""The Keras 3 front of snapset: exact set-valued layers and a flip optimizer, on any backend.

Written only against ``keras.ops``, so it runs on the TensorFlow, JAX and torch backends with
the semantics of the PyTorch front (:mod:`snapset.torch`).

Example:
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
from ._callbacks import FlipRatio as FlipRatio
from ._constrain import constrain as constrain
from ._harden import exact_weights as exact_weights
from ._harden import harden_ as harden_
from ._layers import INITS as INITS
from ._layers import METHODS as METHODS
from ._layers import Conv1D as Conv1D
from ._layers import Conv2D as Conv2D
from ._layers import Dense as Dense
from ._layers import Multiplier as Multiplier
from ._layers import SetLayer as SetLayer
from ._layers import flip_values as flip_values
from ._ops import ESTIMATORS as ESTIMATORS
from ._optimizers import Bop as Bop
from ._optimizers import Router as Router

# keras.saving.serialize_keras_object / deserialize_keras_object round-trip value sets.
_keras.saving.register_keras_serializable(package="snapset")(_ValueSet)
