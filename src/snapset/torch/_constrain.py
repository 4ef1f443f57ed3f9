"""Registering, finding and removing snapset's constraints on modules.

One walker, ``constrained_tensors``, finds every constrained tensor of a model; one record,
written by ``register``, leads from a stored parameter back to its constraint. Everything
else in the front (diagnostics, optimizers, files, packing) goes through these two.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._scales import Scaling, bad_scale_message
from .._sets import ValueSet
from .._spec import OutsideSetError, check_init, check_temperature, method_options
from ._methods import METHODS, Constraint, Scale

if TYPE_CHECKING:
    from ._quantize import Quantize

ModuleT = TypeVar("ModuleT", bound=nn.Module)
FilterFn = Callable[[nn.Module, str], bool]

#: The modules whose ``weight`` ``constrain_`` chooses by default: linear layers and every
#: convolution (``nn.Conv1d/2d/3d`` and the transposed ones).
LINEAR_AND_CONV: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def constrain(
    module: ModuleT,
    name: str,
    values: ValueSet | list[float] | tuple[float, ...],
    method: str = "ste",
    *,
    estimator: str | None = None,
    temperature: float | None = None,
    latent_range: float | None = None,
    dither: float | None = None,
    init: str = "spread",
    scale: str | int | None = None,
    scale_mode: str | None = None,
) -> ModuleT:
    """Restrict ``module.<name>`` to the values of a set; return ``module``.

    From now on ``module.<name>`` is always an exact member of ``values`` (in the parameter's
    dtype), in training and in eval. The parameter object keeps its identity, so an optimizer
    built before or after this call trains it. What it stores depends on the method:

    * ``"ste"``: a float latent; nearest value forward, straight-through gradient
      (``estimator``: ``"inward"`` (default), ``"clip"``, ``"identity"``);
    * ``"stochastic"``: the same latent; random rounding to a neighbouring value while
      training, nearest in eval (``ste`` with ``dither=1``; ``dither``, the share of the gap
      around each threshold in which training draws at random, may be set for either: see
      [`STE`][snapset.torch.STE]);
    * ``"gumbel"``: logits over the set for each entry; straight-through Gumbel-softmax with a
      ``temperature`` (default 1.0) that ``set_temperature`` anneals; argmax in eval.

    Latents live on a scale where the set's range is ``[-latent_range, latent_range]``
    (default 0.1, the scale of a fresh float layer's weights), so Adam's usual learning rates
    (1e-3 to 1e-2) suit every set and the float parameters beside it alike.

    ``init`` says how the current (freshly initialised) tensor becomes the starting point:
    ``"spread"`` (default) keeps the entries' order but spreads them over the set so that each
    value is used by the same share of entries; ``"nearest"`` keeps their values, which suits a
    tensor already on the set's scale (pretrained weights, or values you assigned).

    ``scale`` makes it a scaled set, ``w = alpha * v`` with ``v`` exact members of ``values``
    and ``alpha`` a positive float: one for the tensor (``"tensor"``), one per output channel
    (``"channel"``), or one per ``g`` entries along the input axis (an int ``g``).
    ``scale_mode`` says where ``alpha`` comes from: ``"learned"`` (the default; a parameter
    that starts at the weight's ``absmean`` and that a gradient optimizer trains) or a
    statistic of the float weight recomputed at every forward, ``"absmean"`` (BitNet b1.58)
    or ``"absmax"`` (``ste`` and ``stochastic`` only; the latent is then the float weight
    itself, ``init`` does not apply, and the estimator defaults to ``"identity"``, BitNet's).
    See [`Scale`][snapset.torch.Scale].

    Raises ``ValueError`` or ``TypeError`` naming the problem, with the module left untouched.
    A parameter that ``module`` holds twice, or that is the stored tensor of another
    constraint (tied weights), is refused: constraining it would let the other holder compute
    with the stored latents. A tie to a module outside ``module`` is invisible here; constrain
    the whole model with ``constrain_``, which sees and refuses it.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(8, 4), "weight", snapset.Ternary())
        >>> sorted(layer.weight.unique().tolist())
        [-1.0, 0.0, 1.0]
    """
    scaling = Scaling.of(scale, scale_mode, method=method)
    estimator = estimator if scaling is None else scaling.estimator(estimator)
    options = _options(method, init, estimator, temperature, latent_range, dither)
    value_set = ValueSet(values)
    param = _constrainable_parameter(module, name)
    _refuse_tied(module, {(id(module), name): name}, "constrain")
    constraint = METHODS[method](value_set, param, **options).scaled(scaling, param)
    register(module, name, constraint, init)
    return module


def constrain_(
    model: ModuleT,
    values: ValueSet | list[float] | tuple[float, ...],
    method: str = "ste",
    *,
    filter_fn: FilterFn | None = None,
    modules: tuple[type[nn.Module], ...] = LINEAR_AND_CONV,
    estimator: str | None = None,
    temperature: float | None = None,
    latent_range: float | None = None,
    dither: float | None = None,
    init: str = "spread",
    scale: str | int | None = None,
    scale_mode: str | None = None,
    inputs: Quantize | None = None,
) -> ModuleT:
    """Constrain the ``weight`` of every chosen submodule of ``model``, in place; return it.

    A submodule is chosen when it is an instance of one of ``modules`` (default: ``nn.Linear``
    and every convolution, ``LINEAR_AND_CONV``) that has a ``weight`` parameter, and
    ``filter_fn(module, qualified_name)``, if given, returns True: ``filter_fn`` narrows the
    choice, for example to keep the first and last layers in float. ``modules=(nn.Module,)``
    lets it choose among every module with a ``weight`` (embeddings, norms, your own layers).
    Everything is checked before anything changes: if one weight cannot be constrained, none
    is. A chosen weight that another module also holds (tied weights, such as an embedding
    and a head) is refused, naming both. Options are those of ``constrain``.

    ``inputs``, a ``Quantize`` (a discrete activation), also puts a copy of it before the
    input of every chosen submodule, in the same call (as ``quantize_inputs_`` does; its checks
    come first too). BitNet b1.58's ternary weights with 8-bit activations per token are
    ``constrain_(model, Ternary(), scale="tensor", scale_mode="absmean",
    inputs=Quantize(ValueSet(range(-128, 128)), scale="token"))``.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 2))
        >>> model = st.constrain_(model, snapset.Sign(), filter_fn=lambda m, name: name != "2")
        >>> [name for name, _ in st.named_constraints(model)]
        ['0.weight']
        >>> from snapset.torch import Quantize, input_quantizers
        >>> model = st.constrain_(model, snapset.Sign(), inputs=Quantize(snapset.Sign()),
        ...                       filter_fn=lambda m, name: name == "2")
        >>> [name for name, _ in input_quantizers(model)]
        ['2']
    """
    scaling = Scaling.of(scale, scale_mode, method=method)
    estimator = estimator if scaling is None else scaling.estimator(estimator)
    options = _options(method, init, estimator, temperature, latent_range, dither)
    value_set = ValueSet(values)
    plan = []
    for qualified_name, module in model.named_modules():
        if not (
            isinstance(module, modules)
            and _has_weight(module)
            and (filter_fn is None or filter_fn(module, qualified_name))
        ):
            continue
        try:
            param = _constrainable_parameter(module, "weight")
            constraint = METHODS[method](value_set, param, **options).scaled(scaling, param)
        except (ValueError, TypeError) as error:
            where = f"'{qualified_name}'" if qualified_name else "the model itself"
            raise type(error)(f"constrain_ chose {where}: {error}") from None
        constraint.tensor_name = f"{qualified_name}.weight" if qualified_name else "weight"
        plan.append((module, constraint))
    _refuse_tied(model, {(id(m), "weight"): c.tensor_name for m, c in plan}, "constrain_")
    if inputs is not None:
        from ._quantize import quantize_inputs_  # it builds on this module

        chosen = {id(module) for module, _ in plan}
        quantize_inputs_(
            model, inputs, modules=(nn.Module,), filter_fn=lambda m, _: id(m) in chosen
        )
    for module, constraint in plan:
        register(module, "weight", constraint, init)
    if plan:
        _watch_loads(model)
        _watch_moves(model)
    return model


def harden_(model: ModuleT) -> ModuleT:
    """Replace every snapset constraint in ``model`` by a plain tensor of its exact values.

    Each parameter keeps its identity and takes the deterministic (eval-mode) values, so the
    hardened model's outputs equal the constrained model's eval outputs bit for bit, and its
    ``state_dict`` holds only members of the sets. Parametrizations that others stacked on top
    of a snapset constraint stay. A ``GF2Linear`` weight, which no gradient reaches once
    exact, becomes a buffer. Returns ``model``. A flip parameter that holds a value outside
    its set (see [`check_values`][snapset.torch.check_values]) is refused first, with the model
    unchanged.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Binary())
        >>> hardened = st.harden_(layer)
        >>> type(hardened).__name__, sorted(hardened.weight.unique().tolist())
        ('Linear', [0.0, 1.0])
    """
    records = list(constrained_tensors(model))
    for record in records:
        record.constraint.check(record.stored, record.name)
    _changed()
    for record in records:
        module, name, stored = record.module, record.tensor_name, record.stored
        stack = _stack(module, name)
        constraint = record.constraint
        hard = constraint.value(stored).detach().clone()
        alpha = constraint.scales(stored)
        scales = (
            None if alpha is None or constraint.scale is None else (constraint.scale, alpha.clone())
        )
        if stored.grad is not None and stored.grad.shape != hard.shape:
            stored.grad = None
        with torch.no_grad():
            # set_ keeps the Parameter object (and optimizers' references to it) while its
            # storage and, for logits, its shape change to those of the exact values.
            stored.set_(hard)  # type: ignore[call-overload]
        mark_hardened(stored, constraint.values, scales)
        # the record would point at nothing now, and a weak reference does not pickle
        vars(stored).pop(_OWNER, None)
        if len(stack) > 1:
            del stack[0]
            continue
        _own_class(module)
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        if not record.constraint.trainable_when_hard:
            del module._parameters[name]
            module.register_buffer(name, hard)
            mark_hardened(hard, constraint.values, scales)
    for module in model.modules():
        if next(constrained_tensors(module), None) is None:
            _unwatch_loads(module)
            module.__dict__.pop("_apply", None)  # _watch_moves's
    return model


def check_values(model: nn.Module) -> None:
    """Raise [`snapset.OutsideSetError`][] if a flip parameter of ``model`` holds a value
    outside its set; re-project values that a dtype move left in an earlier dtype's rounding.

    Only ``flip`` stores the values themselves (latents and logits always show members), so
    only flip parameters are looked at: O(1) each while only snapset wrote them, one pass over
    the entries after any other write (see [`Flip.check`][snapset.torch.Flip.check]). The
    forward pass, ``harden_``, ``Bop``, ``save``, ``summary`` and ``pack`` call it; the
    message names the parameter and the fix.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = st.constrain_(torch.nn.Sequential(torch.nn.Linear(2, 2)), snapset.Sign(),
        ...                       "flip")
        >>> st.check_values(model)  # every value in its set: nothing to say
        >>> with torch.no_grad():
        ...     _ = model[0].parametrizations.weight.original.mul_(0.5)
        >>> st.check_values(model)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        snapset.OutsideSetError: flip parameter '0.weight' holds 4 values outside ...
    """
    for record in constrained_tensors(model):
        record.constraint.check(record.stored, record.name)


# harden_ marks each tensor it makes plain with its set, so that files and summaries still
# know it (a hardened model is what users save); the mark travels with the tensor object.
_HARDENED = "_snapset_hardened"
_HARDENED_SCALE = "_snapset_hardened_scale"


def hardened_values(tensor: Tensor) -> ValueSet | None:
    """The set whose members (times its scales, for a scaled set: see ``hardened_scales``)
    ``harden_`` left in ``tensor``, or None if ``harden_`` did not make it. The mark says what
    the values were when hardened; a reader checks them.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.harden_(st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign()))
        >>> hardened_values(layer.weight), hardened_values(layer.bias)
        (ValueSet([-1, 1]), None)
    """
    return cast(ValueSet | None, getattr(tensor, _HARDENED, None))


def hardened_scales(tensor: Tensor) -> tuple[Scale, Tensor] | None:
    """The scale (its layout and mode) and the scales ``alpha`` of a tensor that ``harden_``
    made from a scaled set, which then holds ``scale.expand(members, alpha)``; None for an
    unscaled or unmarked tensor.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), scale="channel")
        >>> scale, alpha = hardened_scales(st.harden_(layer).weight)
        >>> alpha.shape, scale.scaling.granularity
        (torch.Size([2, 1]), 'channel')
    """
    return cast(tuple[Scale, Tensor] | None, getattr(tensor, _HARDENED_SCALE, None))


def scaled_members(value: Tensor, values: ValueSet, scale: Scale, alpha: Tensor) -> Tensor:
    """The members ``v`` of ``values`` whose ``scale.expand(v, alpha)`` is ``value`` bit for bit,
    on the CPU: what a tensor that ``harden_`` made from a scaled set holds times its scales.
    A ``ValueError`` says what changed since (shapes, scales, values).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), scale="channel")
        >>> weight = st.harden_(layer).weight
        >>> scale, alpha = hardened_scales(weight)
        >>> scaled_members(weight, snapset.Sign(), scale, alpha).abs().eq(1).all().item()
        True
    """
    value = value.detach().cpu()
    alpha = alpha.detach().cpu().to(value.dtype)
    if tuple(value.shape) != scale.layout.shape or tuple(alpha.shape) != scale.layout.scale_shape:
        raise ValueError("its shape or its scales' shape changed since harden_")
    bad = ~(alpha.isfinite() & (alpha > 0))
    if bool(bad.any()):
        raise ValueError(bad_scale_message("its scales", int(bad.sum()), float(alpha[bad][0])))
    table = torch.from_numpy(values.tables(str(value.dtype)).values).to(value.dtype)
    # the nearest member of each ratio, in float64 so that no rounding of the ratio decides
    ratio = scale.divide(value.double(), alpha.double())
    midpoints = torch.tensor(values.midpoints, dtype=torch.float64)
    members = table[torch.bucketize(ratio, midpoints, right=True)]
    if not torch.equal(scale.expand(members, alpha), value):
        raise ValueError(f"harden_ left alpha times members of {values!r} in it; it changed since.")
    return members


def mark_hardened(
    tensor: Tensor, values: ValueSet | None, scales: tuple[Scale, Tensor] | None = None
) -> None:
    """Mark ``tensor`` as holding members of ``values``, as ``harden_`` does (a loaded file
    does too), times ``scales`` (a scale and its ``alpha``) for a scaled set; ``None``
    removes a mark.

    Examples:
        >>> import torch, snapset
        >>> weight = torch.tensor([1.0, -1.0])
        >>> mark_hardened(weight, snapset.Sign()); hardened_values(weight)
        ValueSet([-1, 1])
        >>> mark_hardened(weight, None); hardened_values(weight) is None
        True
    """
    for name in (_HARDENED, _HARDENED_SCALE):
        if hasattr(tensor, name):
            delattr(tensor, name)
    if values is None:
        return
    setattr(tensor, _HARDENED, values)
    if scales is not None:
        setattr(tensor, _HARDENED_SCALE, scales)


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

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign())
        >>> [(name, c.method) for name, c in st.named_constraints(layer)]
        [('weight', 'ste')]
    """
    for record in constrained_tensors(model):
        yield record.name, record.constraint


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every ``gumbel`` constraint in ``model``; return how many.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign(), "gumbel")
        >>> st.set_temperature(layer, 0.5)
        1
    """
    check_temperature(temperature)
    # the methods that have a temperature (gumbel) say so in their options
    tempered = [c for _, c in named_constraints(model) if "temperature" in c.spec.options]
    for constraint in tempered:
        cast(Any, constraint).temperature = temperature
    return len(tempered)


# ----- the walker and the record -------------------------------------------------------------


@dataclass(frozen=True)
class ConstrainedTensor:
    """One tensor of a model that a snapset constraint restricts."""

    #: Qualified name, as ``named_constraints`` gives it (``"0.weight"``).
    name: str
    #: The module that owns the tensor.
    module: nn.Module
    #: The tensor's name in that module (``"weight"``).
    tensor_name: str
    constraint: Constraint
    #: The stored tensor (latent, logits or values): the parameter that optimizers train.
    stored: nn.Parameter


def constrained_tensors(model: nn.Module) -> Iterator[ConstrainedTensor]:
    """Every tensor of ``model`` whose stored tensor a snapset constraint owns, in module order."""
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in cast(nn.ModuleDict, module.parametrizations):
            stack = _stack(module, name)
            if isinstance(stack[0], Constraint):
                qualified = f"{prefix}.{name}" if prefix else name
                stored = stored_tensor(module, name)
                yield ConstrainedTensor(qualified, module, name, stack[0], stored)


# An optimizer sees parameters, not modules: each stored parameter carries a weak reference to
# the module that owns it and the tensor's name (as a Keras variable carries its method). The
# record keeps nothing alive and is checked on every look-up, so a parameter whose constraint
# was removed (harden_) or replaced has none; a copied or unpickled model has new parameter
# objects, which param_groups records again. An attribute rather than a weak dictionary keyed by
# tensors: such a dictionary runs a Python callback wherever a tensor dies, which may be a
# process group's worker thread while the main thread, holding the GIL, tears the group down.
_OWNER = "_snapset_owner"


# A learned scale's log_gain carries the same kind of record, so that the optimizer guard finds
# the scales an optimizer steps without walking any model.
_SCALE_OWNER = "_snapset_scale_owner"


def remember(module: nn.Module, name: str) -> None:
    """Record that the stored tensor of ``module.<name>`` (and a learned scale's ``log_gain``)
    belongs to its constraint."""
    owner = (weakref.ref(module), name)
    setattr(stored_tensor(module, name), _OWNER, owner)
    scale = cast(Constraint, _stack(module, name)[0]).scale
    if scale is not None and scale.log_gain is not None:
        setattr(scale.log_gain, _SCALE_OWNER, owner)
    _changed()


def constraint_of(param: Tensor) -> Constraint | None:
    """The snapset constraint whose stored tensor ``param`` currently is, or None."""
    found = _recorded(param, _OWNER)
    return found[1] if found is not None and found[0].original is param else None


def scale_owner(param: Tensor) -> Constraint | None:
    """The snapset constraint whose learned scale's ``log_gain`` ``param`` currently is, or
    None.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), scale="tensor")
        >>> scale_owner(layer.parametrizations.weight[0].scale.log_gain).tensor_name
        'weight'
        >>> scale_owner(layer.bias) is None
        True
    """
    found = _recorded(param, _SCALE_OWNER)
    scale = None if found is None else found[1].scale
    return found[1] if found is not None and scale is not None and scale.log_gain is param else None


def _recorded(param: Tensor, record: str) -> tuple[Any, Constraint] | None:
    """The parametrization stack and snapset constraint that ``param``'s ``record`` leads to,
    while both still exist."""
    owner = getattr(param, record, None)
    if owner is None:
        return None
    module_ref, name = owner
    module = module_ref()
    if module is None or not parametrize.is_parametrized(module, name):
        return None
    stack = _stack(module, name)
    return (stack, stack[0]) if isinstance(stack[0], Constraint) else None


def register(module: nn.Module, name: str, constraint: Constraint, init: str = "nearest") -> None:
    """Put ``constraint`` on ``module.<name>`` and record it; ``init="spread"`` first spreads
    the current values over the set. On failure the parameter is left as it was.

    Also: a check of what ``load_state_dict`` brings (``_check_loads``; ``harden_`` removes
    it), and a clear refusal to pickle the module."""
    param = cast(nn.Parameter, module._parameters[name])
    # The parametrization stores right_inverse(param); hand it the starting values.
    before = param.detach().clone()
    try:
        with torch.no_grad():
            param.copy_(constraint.start(param.detach(), init))
        parametrize.register_parametrization(module, name, constraint)
    except BaseException:
        with torch.no_grad():
            param.set_(before)  # type: ignore[call-overload]
        raise
    if constraint.tensor_name == "weight":  # not named by constrain_
        constraint.tensor_name = name
    remember(module, name)
    stored = stored_tensor(module, name)
    constraint.check(stored)  # records that snapset's own write left members of the set
    _watch_loads(module)
    _watch_moves(module)
    type(module).__getstate__ = _refuse_pickling  # type: ignore[method-assign]


def _refuse_pickling(module: nn.Module) -> None:
    raise RuntimeError(
        f"{_module_name(module)} holds snapset constraints, which pickle and "
        "torch.save(model) cannot store (torch serialises parametrized modules only through "
        "state_dict). Save the weights instead: snapset.torch.save(model, path) (packed, exact) "
        "or torch.save(model.state_dict(), path), and build the model with the same constrain "
        "calls before loading; or snapset.torch.harden_(model) first, after which the plain "
        "model pickles. copy.deepcopy(model) works as it is."
    )


# Every write of a constraint's record (remember, harden_) bumps this, so that caches of
# "which parameters are flip parameters" (the optimizer guard's) know to look again.
_GENERATION = [0]


def generation() -> int:
    """A number that changes whenever a constraint is registered or removed."""
    return _GENERATION[0]


def _changed() -> None:
    _GENERATION[0] += 1


def _check_loads(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """A ``load_state_dict`` pre-hook: check every incoming stored tensor and learned scale of
    the constraints in ``module`` before torch copies any (on the model that ``constrain_`` was
    given, before any module copies); the entries of flip parameters become the set's values
    in the parameter's dtype."""
    for record in constrained_tensors(module):
        path = f"{prefix}{record.name[: -len(record.tensor_name)]}"  # "block.0." or ""
        key = f"{path}parametrizations.{record.tensor_name}.original"
        incoming = state_dict.get(key)
        if isinstance(incoming, Tensor):
            where = f"The state for {record.constraint.method} parameter '{prefix}{record.name}'"
            state_dict[key] = record.constraint.check_incoming(incoming, record.stored, where)
        scale = record.constraint.scale
        if scale is not None and scale.start is not None and scale.log_gain is not None:
            held = f"{path}parametrizations.{record.tensor_name}.0.scale."
            _check_incoming_scales(state_dict, held, scale.start, scale.log_gain)


def _check_incoming_scales(
    state_dict: dict[str, Any], prefix: str, start: Tensor, log_gain: Tensor
) -> None:
    """Refuse a learned scale's incoming ``start`` and ``log_gain`` (under ``prefix``) that
    have another shape than this model's or make ``alpha = start * exp(log_gain)`` zero,
    negative, NaN or inf in its dtype (which torch converts them to)."""
    fix = "; nothing was loaded into this module."
    parts = {"start": start, "log_gain": log_gain}
    if not any(isinstance(state_dict.get(prefix + part), Tensor) for part in parts):
        return
    held = {}
    for part, target in parts.items():
        incoming = state_dict.get(prefix + part)
        incoming = incoming if isinstance(incoming, Tensor) else target.detach()
        if incoming.shape != target.shape:
            raise ValueError(
                f"The scales '{prefix}{part}' have shape {tuple(incoming.shape)}, and this "
                f"model's have {tuple(target.shape)}: the state was saved from a model with "
                f"another scale= (or another weight shape). Build the model with the same "
                f"constrain calls{fix}"
            )
        held[part] = incoming.to(target.dtype)
    alpha = held["start"] * held["log_gain"].exp()
    bad = ~(alpha.isfinite() & (alpha > 0))
    if bool(bad.any()):
        where = f"The scales start * exp(log_gain) of '{prefix[:-1]}'"
        message = bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))
        raise ValueError(f"{message} Load positive scales{fix}")


def _watch_moves(model: nn.Module) -> None:
    """Make a dtype move of ``model`` (``.half()``, ``.to(dtype)``) probe every constraint in
    it before any of its modules converts, and re-project flip values onto the new dtype's
    members right after. (torch converts module by module: without the probe, the modules
    before the first constraint that refuses would have converted.)

    An instance attribute, so that only this model is affected; ``copy.deepcopy`` rebinds it
    to the copy, and ``harden_`` removes it."""
    if "_apply" not in model.__dict__:
        model._apply = types.MethodType(_probed_apply, model)  # type: ignore[method-assign]


def _probed_apply(model: nn.Module, fn: Any, recurse: bool = True) -> nn.Module:
    records = list(constrained_tensors(model))
    seen = set()
    for record in records:
        constraint = record.constraint
        dtype = fn(constraint.table).dtype
        key = (constraint.values, getattr(constraint, "latent_range", None), dtype)
        if key not in seen:
            seen.add(key)
            constraint._tables(dtype)
        _probe_scales(record, dtype)
    moved: nn.Module = type(model)._apply(model, fn, recurse)
    for record in records:
        # values written off the set before the move stay so: the next consumer says so
        with contextlib.suppress(OutsideSetError):
            record.constraint.check(record.stored, record.name)
    return moved


def _probe_scales(record: ConstrainedTensor, dtype: torch.dtype) -> None:
    """Refuse a move to ``dtype`` that would make a learned scale of ``record`` zero or inf
    (a float16 scale underflows below 6e-8 and overflows above 65504)."""
    scale = record.constraint.scale
    if scale is None or scale.start is None or scale.log_gain is None:
        return
    if scale.log_gain.dtype == dtype:
        return
    moved = scale.start.to(dtype) * scale.log_gain.detach().to(dtype).exp()
    bad = ~(moved.isfinite() & (moved > 0))
    if bool(bad.any()):
        where = f"In {dtype}, the learned scales of '{record.name}'"
        raise ValueError(
            f"{bad_scale_message(where, int(bad.sum()), float(moved[bad][0]))} The move would "
            "round them out of range; nothing was moved. Keep the model in a dtype that holds "
            "its scales."
        )


def _watch_loads(module: nn.Module) -> None:
    if not _load_hooks(module):
        module.register_load_state_dict_pre_hook(_check_loads)


def _unwatch_loads(module: nn.Module) -> None:
    for key in _load_hooks(module):
        del module._load_state_dict_pre_hooks[key]


def _load_hooks(module: nn.Module) -> list[int]:
    return [
        key
        for key, hook in module._load_state_dict_pre_hooks.items()
        if getattr(hook, "hook", None) is _check_loads
    ]


# ----- helpers -------------------------------------------------------------------------------


def stored_tensor(module: nn.Module, name: str) -> nn.Parameter:
    """The stored tensor of the parametrized ``module.<name>``."""
    return cast(nn.Parameter, _stack(module, name).original)


def _stack(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name])


def _has_weight(module: nn.Module) -> bool:
    return module._parameters.get("weight") is not None or parametrize.is_parametrized(
        module, "weight"
    )


def _refuse_tied(model: nn.Module, chosen: dict[tuple[int, str], str], verb: str) -> None:
    """Refuse a chosen ``(module id, tensor name) -> qualified name`` whose parameter another
    module of ``model`` also holds, or that is already another constraint's stored tensor."""
    holders: dict[int, list[tuple[tuple[int, str], str]]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is not None:
                where = f"{prefix}.{name}" if prefix else name
                slot = (id(module), name)
                if all(slot != seen for seen, _ in holders.get(id(param), [])):
                    holders.setdefault(id(param), []).append((slot, where))
    for module in model.modules():
        for name, param in module._parameters.items():
            slot = (id(module), name)
            if slot not in chosen or param is None:
                continue
            others = [where for seen, where in holders[id(param)] if seen != slot]
            owner = constraint_of(param)
            if owner is not None:
                others.append(f"the stored tensor of a {owner.method} constraint")
            if others:
                raise ValueError(
                    f"{verb} chose '{chosen[slot]}', whose parameter is also "
                    f"{', '.join(repr(o) for o in others)} (tied weights): constraining it "
                    "would leave the other holder computing with the stored tensor, not with "
                    "the set's values. Untie them first (for example "
                    "head.weight = nn.Parameter(head.weight.detach().clone())), or leave it out "
                    "(constrain_'s filter_fn)."
                )


def _options(
    method: str,
    init: str,
    estimator: str | None,
    temperature: float | None,
    latent_range: float | None,
    dither: float | None,
) -> dict[str, Any]:
    """``method``'s options, checked and with defaults filled in, after checking ``init``."""
    given = {
        "estimator": estimator,
        "temperature": temperature,
        "latent_range": latent_range,
        "dither": dither,
    }
    options = method_options(
        method, given, front="snapset.torch", methods=tuple(METHODS), unsupported=("seed",)
    )
    check_init(init)
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
