"""A guard on every torch optimizer, registered once when ``snapset.torch`` is imported.

Before any optimizer but a flip optimizer steps, it

* refuses, with nothing changed, to step a flip parameter that has a gradient: a gradient
  step (SGD, Adam) moves it off its set, and ``Adam(model.parameters())`` is the commonest way
  to make one;
* zeroes, counts and reports the non-finite gradient entries of the latents and logits of
  ``ste``, ``stochastic`` and ``gumbel``, which would otherwise stay NaN for good;
* keeps a copy of the learned scales (``log_gain`` of a [`Scale`][snapset.torch.Scale]) it
  is about to step, and after the step restores, counts (``Scale.clamped``) and reports each
  entry whose ``alpha = start * exp(log_gain)`` the step made zero, NaN or inf:
  ``w = alpha * v`` needs ``alpha > 0``.
  Only an optimizer that holds learned scales pays for the copy (they are small: one float
  per tensor, channel or group).

A ``GradScaler`` looks at the gradients first and skips a step that overflowed, so loss
scaling works as before. Under ``torch.compile`` the guard steps aside (compiled steps are
checked by the eager consumers: the forward, ``Bop``, ``harden_``, ``save``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..._scales import bad_scale_message
from ..._spec import flip_step_refused
from .._constrain import constraint_of, generation, scale_owner
from .._methods import Constraint, Scale
from ._bop import Bop

__all__ = ["refuse_flip_parameters"]

_Guarded = list[tuple[Tensor, Constraint]]

# Per optimizer: (what its param groups and the constraints were, its flip parameters, its
# latents, its learned scales). A step then costs a key of a few integers and a look at those
# parameters' grads.
_GUARDED: weakref.WeakKeyDictionary[
    Optimizer, tuple[tuple[Any, ...], _Guarded, _Guarded, _Guarded]
] = weakref.WeakKeyDictionary()

# The learned scales an optimizer is about to step, each with a copy of its values: written
# before the step, read and cleared by the post-hook after it.
_BEFORE: weakref.WeakKeyDictionary[Optimizer, list[tuple[Tensor, Constraint, Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def refuse_flip_parameters(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """The guard (a global optimizer step pre-hook): raise ``TypeError`` if ``optimizer``, not
    a flip optimizer, is about to step a flip parameter that has a gradient; zero non-finite
    gradient entries of latents with a ``RuntimeWarning``; copy the learned scales it is about
    to step, so that ``restore_bad_scales`` can undo a step that makes one not finite and > 0.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(2, 1), "weight", snapset.Sign(), "flip")
        >>> adam = torch.optim.Adam(layer.parameters())
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> adam.step()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: Adam cannot step flip parameter 'weight': a gradient step would move it off ...
    """
    if isinstance(optimizer, Bop) or torch.compiler.is_compiling():
        return
    groups = optimizer.param_groups
    key = (generation(), *((id(group["params"]), len(group["params"])) for group in groups))
    cached = _GUARDED.get(optimizer)
    if cached is None or cached[0] != key:
        cached = _GUARDED[optimizer] = (key, *_split(groups))
    _, flips, latents, scales = cached
    stepped = [constraint for param, constraint in flips if param.grad is not None]
    if stepped:
        names = ", ".join(f"'{c.tensor_name}'" for c in stepped[:3])
        what = f"parameter{'s' if len(stepped) > 1 else ''} {names}"
        what += ", ..." if len(stepped) > 3 else ""
        sets = ", ".join(sorted({repr(c.values) for c in stepped}))
        name = type(optimizer).__name__
        raise TypeError(
            f"{flip_step_refused(name, what, sets)} Route flip parameters to snapset.torch.Bop "
            "with snapset.torch.param_groups (groups = param_groups(model); "
            f"Bop(groups.flip); {name}(groups.latent + groups.other)). Nothing was updated."
        )
    graded = [(param.grad, constraint) for param, constraint in latents if param.grad is not None]
    if graded:
        # One test (and on a GPU one synchronisation) for all of them while they are finite.
        sums = [grad.sum().to(graded[0][0].device) for grad, _ in graded]
        if not bool(torch.stack(sums).isfinite().all()):
            for grad, constraint in graded:
                constraint.zero_nonfinite(grad)
    stepped_scales = [(param, c) for param, c in scales if param.grad is not None]
    if stepped_scales:
        hooks = optimizer._optimizer_step_post_hooks.values()
        if all(hook is not restore_bad_scales for hook in hooks):
            optimizer.register_step_post_hook(restore_bad_scales)
        _BEFORE[optimizer] = [(p, c, p.detach().clone()) for p, c in stepped_scales]
    else:  # a copy left by a step that raised is stale
        _BEFORE.pop(optimizer, None)


def restore_bad_scales(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """The guard's step post-hook on an optimizer that steps learned scales: restore each
    entry whose scale the step made zero, NaN or inf to its value before the step, count it
    in ``Scale.clamped`` and warn (``RuntimeWarning``, once per step).

    Examples:
        >>> import torch, warnings, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), scale="tensor")
        >>> scale = layer.parametrizations.weight[0].scale
        >>> sgd = torch.optim.SGD([scale.log_gain], lr=1e6)
        >>> layer.weight.abs().sum().backward()  # a huge step down: exp(log_gain) underflows
        >>> before = scale.alpha.item()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     sgd.step()
        >>> scale.alpha.item() == before, scale.clamped, len(caught)
        (True, 1, 1)
    """
    before = _BEFORE.pop(optimizer, None)
    if not before:
        return
    with torch.no_grad():
        # a log_gain is good where alpha = start * exp(log_gain) is finite and > 0
        good = []
        for param, constraint, _ in before:
            alpha = cast(Tensor, cast(Scale, constraint.scale).start) * param.exp()
            good.append((alpha > 0) & alpha.isfinite())
        # one test (and on a GPU one synchronisation) for all of them while they are good
        if bool(torch.stack([g.all().to(good[0].device) for g in good]).all()):
            return
        names, count, example = [], 0, 0.0
        for (param, constraint, old), ok in zip(before, good, strict=True):
            bad = int((~ok).sum())
            if bad:
                example = example if count else float(param[~ok][0])
                param.copy_(torch.where(ok, param, old))
                scale = constraint.scale
                assert scale is not None  # the guard took it for a scale
                scale.clamped += bad
                scale.check()  # records the restored values as checked
                names.append(f"'{constraint.tensor_name}'")
                count += bad
    where = f"After a step of {type(optimizer).__name__}, the learned scales of {', '.join(names)}"
    warnings.warn(
        f"{bad_scale_message(where, count, example)} The step was undone for "
        f"{'it' if count == 1 else 'them'} (Scale.clamped counts them); a lower learning rate "
        "for the scales avoids it.",
        RuntimeWarning,
        3,  # the caller of optimizer.step
    )


def _split(groups: list[dict[str, Any]]) -> tuple[_Guarded, _Guarded, _Guarded]:
    """The optimizer's constrained parameters: flip parameters, latents or logits, and
    learned scales."""
    flips: _Guarded = []
    latents: _Guarded = []
    scales: _Guarded = []
    for group in groups:
        for param in group["params"]:
            constraint = constraint_of(param)
            if constraint is not None:
                (flips if constraint.stores == "values" else latents).append((param, constraint))
            owner = scale_owner(param)
            if owner is not None:
                scales.append((param, owner))
    return flips, latents, scales
