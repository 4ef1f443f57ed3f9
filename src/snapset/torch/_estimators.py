"""The estimators: surrogate derivatives of the rounding, for ``ste`` and ``stochastic``.

Every estimator shares the forward map: the parameter shows the exact nearest value of the set
(``stochastic``: a random neighbour while training), looked up, never computed. They differ
only in the gradient handed to the latent ``u``. On the latent scale the set's range is
``[-r, r]`` (``r = latent_range``) and the value moves ``scale = half_range / r`` per unit of
latent, so inside the range each estimator passes ``g * scale`` for an incoming gradient
``g = dL/dq``. Outside the range they differ: see each function.

Each function takes ``(latent, grad, scale, bound)`` with ``bound = r`` and returns the
gradient for the latent. They compute in place in buffers of their own (one float mask scaled
in place is several times faster on the CPU than boolean masks and ``masked_fill``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

__all__ = ["ESTIMATOR_FUNCTIONS", "clip", "estimator_grad", "identity", "inward"]

Estimator = Callable[[Tensor, Tensor, float, float], Tensor]


def inward(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""snapset's default: outside the range, pass only gradients that lead back in.

    Forward: the exact nearest value of the set. Surrogate derivative, for an incoming
    gradient ``g = dL/dq``:

    ```text
    dL/du = s * g   where |u| <= r or sign(g) = sign(u)
            0       elsewhere
    ```

    Gradient descent moves ``u`` by ``-g``, so the second case is a step back towards
    ``[-r, r]``. Why snapset's own: ``clip`` lets a latent that overshoots (one optimizer step
    is enough) starve for good, and ``identity`` lets it drift far and come back slowly;
    ``inward`` bounds the overshoot by a step or two and never starves.

    Examples:
        >>> import torch
        >>> u, g = torch.tensor([0.05, 0.3, 0.3, -0.3]), torch.tensor([1.0, 1.0, -1.0, 1.0])
        >>> inward(u, g, 10.0, 0.1).tolist()   # outside: only the step back inward passes
        [10.0, 10.0, -0.0, 0.0]
    """
    # Descent heads outward where grad has the sign of the latent's excess beyond the range:
    # (clamp(u) - u) * grad > 0 there.
    keep = latent.clamp(-bound, bound).sub_(latent).mul_(grad).le_(0)
    return keep.mul_(grad).mul_(scale)


def clip(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""The clipped straight-through estimator: nothing passes outside the range.

    Forward: the exact nearest value of the set. Surrogate derivative:
    ``dL/du = s * g * [|u| <= r]``, the derivative of the hard tanh. A latent that leaves the
    range gets no gradient, so its value can no longer change. Courbariaux et al., 2016,
    "Binarized Neural Networks"; larq's ``ste_sign``.

    Examples:
        >>> import torch
        >>> u, g = torch.tensor([0.05, 0.3, -0.3]), torch.tensor([1.0, 1.0, -1.0])
        >>> clip(u, g, 10.0, 0.1).tolist()
        [10.0, 0.0, -0.0]
    """
    return latent.abs().le_(bound).mul_(grad).mul_(scale)


def identity(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""The plain straight-through estimator: everything passes, everywhere.

    Forward: the exact nearest value of the set. Surrogate derivative:
    ``dL/du = s * g`` for every ``u``, as if the rounding were the identity on the value scale.
    A latent may drift far outside the range and take long to come back. Bengio et al., 2013,
    "Estimating or Propagating Gradients Through Stochastic Neurons".

    Examples:
        >>> import torch
        >>> identity(torch.tensor([0.05, 3.0]), torch.tensor([1.0, -1.0]), 10.0, 0.1).tolist()
        [10.0, -10.0]
    """
    return grad * scale


ESTIMATOR_FUNCTIONS: Mapping[str, Estimator] = MappingProxyType(
    {"inward": inward, "clip": clip, "identity": identity}
)
"""Each estimator's function, by the name that ``constrain(..., estimator=...)`` takes."""


def estimator_grad(
    estimator: str, latent: Tensor, grad: Tensor, scale: float, bound: float
) -> Tensor:
    """The gradient for ``latent`` that the named estimator passes for an incoming ``grad``.

    ``scale`` is the slope of value against latent (the set's half range over ``bound``) and
    ``bound`` the latent's range ``r``; see ``inward``, ``clip`` and ``identity``
    for each estimator's closed form.

    Examples:
        >>> import torch, snapset.torch as st
        >>> u, g = torch.tensor([0.0, 0.2, 0.2]), torch.tensor([1.0, 1.0, -1.0])
        >>> [st.estimator_grad(e, u, g, 10.0, 0.1).tolist() for e in st.ESTIMATORS]
        [[10.0, 10.0, -0.0], [10.0, 0.0, -0.0], [10.0, 10.0, -10.0]]
    """
    return ESTIMATOR_FUNCTIONS[estimator](latent, grad, scale, bound)
