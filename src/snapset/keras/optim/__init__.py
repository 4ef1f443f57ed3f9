"""Flip optimizers for Keras 3: Bop, the second-moment Bop2ndOrder, and Router, which gives
Bop the flip variables of a model and another optimizer the rest.

Examples:
    >>> import keras, snapset.keras as sk
    >>> model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], "flip"),
    ...                           keras.layers.Dense(1)])
    >>> model.compile(optimizer=sk.optim.Router(flip=sk.optim.Bop(1e-4, 1e-2), default="adam"),
    ...               loss="mse")
"""

from ._bop import Bop as Bop
from ._bop import Bop2ndOrder as Bop2ndOrder
from ._router import Router as Router

__all__ = ["Bop", "Bop2ndOrder", "Router"]
