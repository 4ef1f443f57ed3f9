"""From a parameter to its flip constraint: how Bop learns each parameter's value set.

An optimizer sees parameters, not modules. ``constrain(..., method="flip")`` therefore records,
for each flip-constrained parameter, the module and tensor name that own it. The record is weak
(it keeps neither alive) and is checked on every look-up, so a parameter whose constraint was
removed (``harden_``) or replaced is no longer a flip parameter. A copied or unpickled model
has new parameter objects: :func:`snapset.torch.param_groups` records those again.
"""

from __future__ import annotations

import weakref
from typing import cast

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakTensorKeyDictionary

from ._methods import Flip

_OWNERS = WeakTensorKeyDictionary()  # parameter -> (weakref to module, tensor name)


def bind_flip(module: nn.Module, name: str) -> None:
    """Record that the stored tensor of ``module.<name>`` is flip-constrained."""
    stack = cast(nn.ModuleDict, module.parametrizations)[name]
    _OWNERS[cast(Tensor, stack.original)] = (weakref.ref(module), name)


def flip_constraint(param: Tensor) -> Flip | None:
    """The :class:`Flip` constraint that currently owns ``param``, or None."""
    owner = _OWNERS.get(param)
    if owner is None:
        return None
    module_ref, name = owner
    module = module_ref()
    if module is None or not parametrize.is_parametrized(module, name):
        return None
    stack = cast(
        parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name]
    )
    if stack.original is not param:
        return None
    return next((step for step in stack if isinstance(step, Flip)), None)
