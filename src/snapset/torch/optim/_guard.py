"""A guard on every torch optimizer, registered once when ``snapset.torch`` is imported.

Before any optimizer but a flip optimizer steps, it

* refuses, with nothing changed, to step a flip parameter that has a gradient: a gradient
  step (SGD, Adam) moves it off its set, and ``Adam(model.parameters())`` is the commonest way
  to make one;
* zeroes, counts and reports the non-finite gradient entries of the latents and logits of
  ``ste``, ``stochastic`` and ``gumbel``, which would otherwise stay NaN for good.

A ``GradScaler`` looks at the gradients first and skips a step that overflowed, so loss
scaling works as before. Under ``torch.compile`` the guard steps aside (compiled steps are
checked by the eager consumers: the forward, ``Bop``, ``harden_``, ``save``).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..._spec import flip_step_refused
from .._constrain import constraint_of, generation
from .._methods import Constraint
from ._bop import Bop

__all__ = ["refuse_flip_parameters"]

_Guarded = list[tuple[Tensor, Constraint]]

# Per optimizer: (what its param groups and the constraints were, its flip parameters, its
# latents). A step then costs a key of a few integers and a look at those parameters' grads.
_GUARDED: weakref.WeakKeyDictionary[Optimizer, tuple[tuple[Any, ...], _Guarded, _Guarded]] = (
    weakref.WeakKeyDictionary()
)


def refuse_flip_parameters(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """The guard (a global optimizer step pre-hook): raise ``TypeError`` if ``optimizer``, not
    a flip optimizer, is about to step a flip parameter that has a gradient; zero non-finite
    gradient entries of latents with a ``RuntimeWarning``.

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
    _, flips, latents = cached
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


def _split(groups: list[dict[str, Any]]) -> tuple[_Guarded, _Guarded]:
    """The optimizer's constrained parameters: flip parameters, and latents or logits."""
    flips: _Guarded = []
    latents: _Guarded = []
    for group in groups:
        for param in group["params"]:
            constraint = constraint_of(param)
            if constraint is not None:
                (flips if constraint.stores == "values" else latents).append((param, constraint))
    return flips, latents
