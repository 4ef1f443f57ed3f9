"""Router: one optimizer for ``model.compile`` that sends flip variables to a flip optimizer
([`snapset.keras.Bop`][]) and everything else to another optimizer."""

from __future__ import annotations

from typing import Any

import keras

from .._methods import flip_values


@keras.saving.register_keras_serializable(package="snapset")
class Router(keras.optimizers.Optimizer):
    """One optimizer for ``model.compile``: flip variables go to ``flip``, the rest to ``default``.

    Keras takes one optimizer per model; a model with flip layers needs two (Bop for the flip
    variables, a gradient optimizer for latents and float weights), as larq's ``CaseOptimizer`` did
    for Keras 2. A variable is a flip variable when its layer was built with ``method="flip"`` or
    [`snapset.keras.constrain`][] marked it (see
    [`snapset.keras.flip_values`][]). ``learning_rate`` is that of
    ``default``. Works with ``model.fit`` on the TensorFlow, JAX and torch backends, and saves with
    the model.

    Examples:
        >>> import keras, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((4,)), sk.Multiplier([-1, 1], "flip"),
        ...                           keras.layers.Dense(1)])
        >>> router = sk.Router(flip=sk.Bop(threshold=1e-4, gamma=1e-2),
        ...                    default=keras.optimizers.Adam(1e-3))
        >>> model.compile(optimizer=router, loss="mse")
        >>> router.build(model.trainable_variables)
        >>> [v.name for v in router.flip_variables], len(router.default_variables)
        (['kernel'], 2)
    """

    def __init__(
        self, flip: Any, default: Any = "adam", name: str = "router", **kwargs: Any
    ) -> None:
        flip = keras.optimizers.get(flip)
        default = keras.optimizers.get(default)
        kwargs.pop("learning_rate", None)  # from a saved config: it is default's
        if kwargs:
            raise ValueError(
                "Router takes no optimizer options of its own (got "
                + ", ".join(map(repr, kwargs))
                + "); give them to the flip or the default optimizer"
            )
        if flip is default:
            raise ValueError("Router needs two distinct optimizers for flip and default")
        super().__init__(learning_rate=0.0, name=name)
        self.flip = flip
        self.default = default
        self._flip_indices: list[int] = []
        self._default_indices: list[int] = []

    @property
    def flip_variables(self) -> list[Any]:
        """The variables routed to ``flip`` (after ``build``)."""
        return [self._trainable_variables[i] for i in self._flip_indices]

    @property
    def default_variables(self) -> list[Any]:
        """The variables routed to ``default`` (after ``build``)."""
        return [self._trainable_variables[i] for i in self._default_indices]

    def build(self, var_list: list[Any]) -> None:
        """Split ``var_list`` and build both optimizers on their shares."""
        if self.built:
            return
        var_list = list(var_list)
        flip_indices = [i for i, v in enumerate(var_list) if flip_values(v) is not None]
        default_indices = [i for i, v in enumerate(var_list) if flip_values(v) is None]
        self.flip.build([var_list[i] for i in flip_indices])
        self.default.build([var_list[i] for i in default_indices])
        super().build(var_list)
        self._flip_indices, self._default_indices = flip_indices, default_indices

    @property
    def variables(self) -> list[Any]:
        return [*self._variables, *self.flip.variables, *self.default.variables]

    @property
    def learning_rate(self) -> Any:
        return self.default.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self.default.learning_rate = value

    def apply(self, grads: Any, trainable_variables: Any = None) -> None:
        """Apply ``flip`` to the flip variables' gradients and ``default`` to the others."""
        grads = list(grads)
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        for optimizer, indices in (
            (self.flip, self._flip_indices),
            (self.default, self._default_indices),
        ):
            if indices:
                optimizer.apply(
                    [grads[i] for i in indices], [trainable_variables[i] for i in indices]
                )
        self._iterations.assign_add(1)

    def stateless_apply(
        self, optimizer_variables: Any, grads: Any, trainable_variables: Any
    ) -> tuple[list[Any], list[Any]]:
        """Stateless form of ``apply`` (the JAX backend trains through it)."""
        optimizer_variables, grads = list(optimizer_variables), list(grads)
        new_trainable = list(trainable_variables)
        own = len(self._variables)
        flip_count = len(self.flip.variables)
        shares = (
            (self.flip, self._flip_indices, optimizer_variables[own : own + flip_count]),
            (self.default, self._default_indices, optimizer_variables[own + flip_count :]),
        )
        new_inner: list[Any] = []
        for optimizer, indices, state in shares:
            if indices:
                updated, state = optimizer.stateless_apply(
                    state, [grads[i] for i in indices], [new_trainable[i] for i in indices]
                )
                for i, value in zip(indices, updated, strict=True):
                    new_trainable[i] = value
            new_inner.extend(state)
        mapping = list(zip(self._variables, optimizer_variables[:own], strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._iterations.assign_add(1)
        own_values = [scope.get_current_value(v) for v in self._variables]
        return new_trainable, own_values + new_inner

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flip": keras.saving.serialize_keras_object(self.flip),
            "default": keras.saving.serialize_keras_object(self.default),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Router:
        config = dict(config)
        for key in ("flip", "default"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)
