"""Registering, finding and removing snapset's constraints on modules."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._sets import ValueSet
from ._flip import bind_flip
from ._gf2linear import GF2Linear
from ._methods import METHODS, Constraint, Flip, GumbelSoftmax, spread

ModuleT = TypeVar("ModuleT", bound=nn.Module)
FilterFn = Callable[[nn.Module, str], bool]

INITS = ("spread", "nearest")


def constrain(
    module: ModuleT,
    name: str,
    values: ValueSet | list[float] | tuple[float, ...],
    method: str = "ste",
    *,
    estimator: str | None = None,
    temperature: float | None = None,
    latent_range: float | None = None,
    init: str = "spread",
) -> ModuleT:
    """Restrict ``module.<name>`` to the values of a set; return ``module``.

    From now on ``module.<name>`` is always an exact member of ``values`` (in the parameter's
    dtype), in training and in eval. The parameter object keeps its identity, so an optimizer
    built before or after this call trains it. What it stores depends on the method:

    * ``"ste"``: a float latent; nearest value forward, straight-through gradient
      (``estimator``: ``"inward"`` (default), ``"clip"``, ``"identity"``);
    * ``"stochastic"``: the same latent; random rounding to a neighbouring value while
      training, nearest in eval;
    * ``"gumbel"``: logits over the set for each entry; straight-through Gumbel-softmax with a
      ``temperature`` (default 1.0) that :func:`set_temperature` anneals; argmax in eval.

    Latents live on a scale where the set's range is ``[-latent_range, latent_range]``
    (default 0.1, the scale of a fresh float layer's weights), so Adam's usual learning rates
    (1e-3 to 1e-2) suit every set and the float parameters beside it alike.

    ``init`` says how the current (freshly initialised) tensor becomes the starting point:
    ``"spread"`` (default) keeps the entries' order but spreads them over the set so that each
    value is used by the same share of entries; ``"nearest"`` keeps their values, which suits a
    tensor already on the set's scale (pretrained weights, or values you assigned).

    Raises ``ValueError`` or ``TypeError`` naming the problem, with the module left untouched.

    Example:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(8, 4), "weight", snapset.Ternary())
        >>> sorted(layer.weight.unique().tolist())
        [-1.0, 0.0, 1.0]
    """
    options = _method_options(
        method, init, estimator=estimator, temperature=temperature, latent_range=latent_range
    )
    value_set = ValueSet(values)
    param = _constrainable_parameter(module, name)
    constraint = METHODS[method](value_set, param, **options)
    _register(module, name, param, constraint, init)
    return module


def constrain_(
    model: ModuleT,
    values: ValueSet | list[float] | tuple[float, ...],
    method: str = "ste",
    *,
    filter_fn: FilterFn | None = None,
    estimator: str | None = None,
    temperature: float | None = None,
    latent_range: float | None = None,
    init: str = "spread",
) -> ModuleT:
    """Constrain the ``weight`` of every chosen submodule of ``model``, in place; return it.

    By default every ``nn.Linear`` and convolution (``nn.Conv1d/2d/3d`` and transposed) is
    chosen. ``filter_fn(module, qualified_name) -> bool`` chooses instead, for example to keep
    the first and last layers in float. Everything is checked before anything changes: if one
    weight cannot be constrained, none is. Options are those of :func:`constrain`.

    Example:
        >>> import torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 2))
        >>> keep_last_float = lambda m, name: isinstance(m, torch.nn.Linear) and name != "2"
        >>> model = st.constrain_(model, snapset.Sign(), filter_fn=keep_last_float)
        >>> [name for name, _ in st.named_constraints(model)]
        ['0.weight']
    """
    options = _method_options(
        method, init, estimator=estimator, temperature=temperature, latent_range=latent_range
    )
    value_set = ValueSet(values)
    chosen = filter_fn if filter_fn is not None else _is_linear_or_conv
    plan = []
    for qualified_name, module in model.named_modules():
        if chosen(module, qualified_name):
            try:
                param = _constrainable_parameter(module, "weight")
                constraint = METHODS[method](value_set, param, **options)
            except (ValueError, TypeError) as error:
                where = f"'{qualified_name}'" if qualified_name else "the model itself"
                raise type(error)(f"constrain_ chose {where}: {error}") from None
            plan.append((module, param, constraint))
    for module, param, constraint in plan:
        _register(module, "weight", param, constraint, init)
    return model


def harden_(model: ModuleT) -> ModuleT:
    """Replace every snapset constraint in ``model`` by a plain parameter of its exact values.

    Each parameter keeps its identity and takes the deterministic (eval-mode) values, so the
    hardened model's outputs equal the constrained model's eval outputs bit for bit, and its
    ``state_dict`` holds only members of the sets. Parametrizations that others stacked on top
    of a snapset constraint stay. Layers with arithmetic of their own (:class:`GF2Linear`)
    harden through their ``harden_()`` method. Returns ``model``.

    Example:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Binary())
        >>> hardened = st.harden_(layer)
        >>> type(hardened).__name__, sorted(hardened.weight.unique().tolist())
        ('Linear', [0.0, 1.0])
    """
    for module, name, index, constraint in list(_constrained_tensors(model)):
        stack = _stack(module, name)
        original = stack.original
        hard = constraint.hard(original).detach().clone()
        if original.grad is not None and original.grad.shape != hard.shape:
            original.grad = None
        with torch.no_grad():
            # set_ keeps the Parameter object (and optimizers' references to it) while its
            # storage and, for logits, its shape change to those of the exact values.
            original.set_(hard)  # type: ignore[call-overload]
        if len(stack) == 1:
            _own_class(module)
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        else:
            del stack[index]
    for module in model.modules():
        if isinstance(module, GF2Linear):
            module.harden_()
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a generated class of its own before a removal edits it.

    ``copy.deepcopy`` shares the generated class (which holds the parametrized properties)
    between a module and its copy, so removing a parametrization from one would delete the
    property that the other still uses.
    """
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def named_constraints(model: nn.Module) -> Iterator[tuple[str, Constraint]]:
    """Yield ``(qualified tensor name, constraint)`` for each constrained tensor of ``model``.

    Example:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign())
        >>> [(name, c.method) for name, c in st.named_constraints(layer)]
        [('weight', 'ste')]
    """
    prefixes = {id(module): prefix for prefix, module in model.named_modules()}
    for module, name, _, constraint in _constrained_tensors(model):
        prefix = prefixes[id(module)]
        yield (f"{prefix}.{name}" if prefix else name), constraint


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every ``gumbel`` constraint in ``model``; return how many.

    Example:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign(), "gumbel")
        >>> st.set_temperature(layer, 0.5)
        1
    """
    if not temperature > 0:
        raise ValueError(f"Invalid temperature: {temperature} (must be > 0)")
    gumbels = [c for _, c in named_constraints(model) if isinstance(c, GumbelSoftmax)]
    for constraint in gumbels:
        constraint.temperature = temperature
    return len(gumbels)


# ----- helpers -------------------------------------------------------------------------------


def _constrained_tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, int, Constraint]]:
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in cast(nn.ModuleDict, module.parametrizations):
            for index, step in enumerate(_stack(module, name)):
                if isinstance(step, Constraint):
                    yield module, name, index, step


def _stack(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name])


def _is_linear_or_conv(module: nn.Module, qualified_name: str) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


def _method_options(method: str, init: str, **given: Any) -> dict[str, Any]:
    """The options given (not None), checked against what ``method``'s class accepts."""
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}; valid methods: " + ", ".join(repr(m) for m in METHODS)
        )
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; valid inits: " + ", ".join(map(repr, INITS)))
    accepted = list(inspect.signature(METHODS[method]).parameters)[2:]  # after values, like
    options = {name: value for name, value in given.items() if value is not None}
    for name in options:
        if name not in accepted:
            raise ValueError(
                f"Option {name!r} does not apply to method {method!r}; its options are "
                + (", ".join(repr(a) for a in accepted) or "none")
            )
    return options


def _module_name(module: nn.Module) -> str:
    return parametrize.type_before_parametrizations(module).__name__


def _constrainable_parameter(module: nn.Module, name: str) -> nn.Parameter:
    kind = _module_name(module)
    if parametrize.is_parametrized(module, name):
        stack = _stack(module, name)
        ours = [step for step in stack if isinstance(step, Constraint)]
        if ours:
            raise ValueError(
                f"Parameter '{name}' of {kind} is already constrained ({ours[0].method}, "
                f"{ours[0].values!r}). Remove it first with snapset.torch.harden_(module) to "
                "keep its values, or torch.nn.utils.parametrize.remove_parametrizations("
                f"module, '{name}') to drop it."
            )
        raise ValueError(
            f"Parameter '{name}' of {kind} already has parametrizations "
            f"({', '.join(type(step).__name__ for step in stack)}); snapset's constraint must "
            "own the stored tensor, so constrain it first and register the others after."
        )
    if name in module._buffers:
        raise TypeError(f"'{name}' of {kind} is a buffer; snapset constrains parameters only")
    param = module._parameters.get(name)
    if param is None:
        names = ", ".join(f"'{n}'" for n, _ in module.named_parameters(recurse=False))
        raise ValueError(
            f"Module '{kind}' has no parameter named '{name}'"
            + (f"; its parameters are {names}" if names else " (it has no parameters)")
        )
    if isinstance(param, nn.parameter.UninitializedParameter):
        raise ValueError(
            f"Parameter '{name}' of {kind} is not initialised yet (a lazy module); run one "
            "forward pass first"
        )
    if not param.is_floating_point():
        raise TypeError(
            f"Parameter '{name}' of {kind} is {param.dtype}; snapset constrains floating-point "
            "parameters only"
        )
    return param


def _register(
    module: nn.Module, name: str, param: nn.Parameter, constraint: Constraint, init: str
) -> None:
    # The parametrization stores right_inverse(param); hand it the starting values.
    before = param.detach().clone()
    try:
        if init == "spread":
            with torch.no_grad():
                param.copy_(spread(param, constraint.values))
        parametrize.register_parametrization(module, name, constraint)
    except BaseException:
        with torch.no_grad():
            param.set_(before)  # type: ignore[call-overload]
        raise
    if isinstance(constraint, Flip):
        bind_flip(module, name)  # so that Bop finds the value set from the parameter alone
