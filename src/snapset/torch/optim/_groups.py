"""Routing parameters between a flip optimizer and a gradient optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .._constrain import constrained_tensors, remember

__all__ = ["ParamGroups", "param_groups"]


@dataclass
class ParamGroups:
    """A model's trainable parameters, split by how they train.

    ``flip``: the stored tensors of ``method="flip"`` constraints, for a flip optimizer
    ([`snapset.torch.Bop`][]). ``latent``: the stored tensors (latents, logits) of
    the other snapset methods, and ``other``: every remaining parameter, both for a gradient
    optimizer. ``str(groups)`` reports how many tensors and entries went where.
    """

    flip: list[nn.Parameter] = field(default_factory=list)
    latent: list[nn.Parameter] = field(default_factory=list)
    other: list[nn.Parameter] = field(default_factory=list)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{group: (number of tensors, number of entries)}``."""
        return {
            name: (len(params), sum(p.numel() for p in params))
            for name, params in [
                ("flip", self.flip),
                ("latent", self.latent),
                ("other", self.other),
            ]
        }

    def __str__(self) -> str:
        return "; ".join(
            f"{name}: {tensors} tensor{'s' if tensors != 1 else ''}, {entries:,} entries"
            for name, (tensors, entries) in self.counts().items()
        )


def param_groups(model: nn.Module) -> ParamGroups:
    """Split ``model``'s trainable parameters into ``.flip``, ``.latent`` and ``.other``.

    The rule, in one line: a stored tensor that holds the set's values (``flip``) is ``flip``,
    one that holds latents or logits (``ste``, ``stochastic``, ``gumbel``, a
    ``GF2Linear``'s logits) is ``latent``, everything else is ``other``. Parameters with
    ``requires_grad=False`` are left out, and a shared parameter appears once. Calling this on
    a copied or unpickled model also registers its constrained parameters for ``Bop``.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
        >>> _ = st.constrain(model[0], "weight", snapset.Binary(), "flip")
        >>> _ = st.constrain(model[1], "weight", snapset.Sign(), "ste")
        >>> groups = st.param_groups(model)
        >>> print(groups)
        flip: 1 tensor, 32 entries; latent: 1 tensor, 8 entries; other: 2 tensors, 6 entries
        >>> flip_opt = st.Bop(groups.flip, threshold=1e-4, gamma=1e-2)
        >>> float_opt = torch.optim.Adam(groups.latent + groups.other, lr=1e-3)
    """
    kinds: dict[int, str] = {}
    for tensor in constrained_tensors(model):
        remember(tensor.module, tensor.tensor_name)
        # a stored tensor that holds the values themselves moves by flips; latents and logits
        # by gradient steps
        kinds[id(tensor.stored)] = "flip" if tensor.constraint.stores == "values" else "latent"
    groups = ParamGroups()
    for param in model.parameters():
        if param.requires_grad:
            getattr(groups, kinds.get(id(param), "other")).append(param)
    return groups
