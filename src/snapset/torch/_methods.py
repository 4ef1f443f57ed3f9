"""The methods: parametrizations that map a stored tensor to exact values of a set.

Each method is a small ``nn.Module`` registered with ``torch.nn.utils.parametrize``. It states
what it stores, how the forward value is chosen (always an exact member of the set, in the
parameter's dtype), how the gradient reaches the stored tensor, and how a value assigned to the
parameter is stored (``right_inverse``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._sets import ValueSet
from . import _functional as F


class Constraint(nn.Module):
    """Base of snapset's parametrizations: a stored tensor in, exact set values out.

    Lookup tables are non-persistent buffers: they follow ``.to(device)`` and ``.half()``, they
    are rebuilt from the exact :class:`~snapset.ValueSet` after each such move, and they stay out
    of ``state_dict``, which holds only the stored tensor. The projection therefore depends on
    nothing but ``state_dict`` and the value set named at ``constrain`` time.
    """

    method: ClassVar[str]
    table: Tensor
    thresholds: Tensor
    levels: Tensor
    steps: Tensor | None

    def __init__(self, values: ValueSet, like: Tensor) -> None:
        super().__init__()
        self.values = values
        self._build(like.dtype, like.device)

    def hard(self, stored: Tensor) -> Tensor:
        """The deterministic exact values (what eval mode and ``harden_`` use)."""
        raise NotImplementedError

    def _build(self, dtype: torch.dtype, device: torch.device) -> None:
        vs = self.values
        levels64 = torch.tensor(vs.to_latent(vs.values), dtype=torch.float64)
        thresholds64 = torch.tensor(vs.to_latent(vs.midpoints), dtype=torch.float64)
        table = torch.tensor(vs.values, dtype=torch.float64).to(dtype)
        levels, thresholds = levels64.to(dtype), thresholds64.to(dtype)
        _check_distinguishable(vs, dtype, table, levels, thresholds)
        table, levels, thresholds = table.to(device), levels.to(device), thresholds.to(device)
        steps: Tensor | None = table.diff()
        # The fast summed projection is used only where it reproduces every value exactly.
        if not torch.equal(F.nearest(levels, thresholds, table, steps), table):
            steps = None
        for name, tensor in [
            ("table", table),
            ("levels", levels),
            ("thresholds", thresholds),
            ("steps", steps),
        ]:
            self.register_buffer(name, tensor, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Constraint:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self._build(self.table.dtype, self.table.device)
        return self

    def extra_repr(self) -> str:
        return repr(self.values)


class _LatentConstraint(Constraint):
    """Stores a float latent on the scale where the set's range is ``[-1, 1]``."""

    def __init__(self, values: ValueSet, like: Tensor, estimator: str = "inward") -> None:
        if estimator not in F.ESTIMATORS:
            raise ValueError(
                f"Unknown estimator {estimator!r}; valid estimators: "
                + ", ".join(repr(e) for e in F.ESTIMATORS)
            )
        super().__init__(values, like)
        self.estimator = estimator
        self.scale = values.half_range

    def hard(self, stored: Tensor) -> Tensor:
        return F.nearest(stored, self.thresholds, self.table, self.steps)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Latent of an assigned value: ``(value - centre) / half_range``."""
        return (value - self.values.center) / self.values.half_range

    def extra_repr(self) -> str:
        return f"{self.values!r}, estimator={self.estimator!r}"


class STE(_LatentConstraint):
    r"""Nearest value forward, straight-through gradient to a float latent.

    Stores a latent ``t`` on the scale where the set's range ``[min, max]`` is ``[-1, 1]``:
    ``w = centre + half_range * t``. Forward, in training and eval alike:

    .. math:: q = \mathrm{nearest}(w) \in V \quad(\text{ties go to the larger value})

    Backward: ``dq/dt = half_range`` inside ``[-1, 1]``, shaped outside by the estimator
    (see :func:`snapset.torch.estimator_grad`). Courbariaux et al., 2016, "Binarized Neural
    Networks"; Bengio et al., 2013, "Estimating or Propagating Gradients Through Stochastic
    Neurons".
    """

    method = "ste"

    def forward(self, latent: Tensor) -> Tensor:
        return F.straight_through(latent, self.hard(latent), self.scale, self.estimator)


class StochasticRounding(_LatentConstraint):
    r"""Random rounding to a neighbouring value while training, nearest value in eval.

    Same latent as :class:`STE`. While training, a latent between two neighbouring values
    rounds up with probability proportional to its distance from the lower one, so that
    ``E[q] = w`` inside the range: the straight-through gradient is then the derivative of the
    expectation. Gupta et al., 2015, "Deep Learning with Limited Numerical Precision".
    """

    method = "stochastic"

    def forward(self, latent: Tensor) -> Tensor:
        if self.training:
            hard = F.stochastic_round(latent, self.levels, self.table)
        else:
            hard = self.hard(latent)
        return F.straight_through(latent, hard, self.scale, self.estimator)


class GumbelSoftmax(Constraint):
    r"""A categorical distribution over the set for every entry, trained by Gumbel-softmax.

    Stores logits of shape ``(*shape, len(values))``. While training, each entry draws
    ``j = argmax(logits + g)`` with Gumbel noise ``g`` and takes the exact value ``v_j``; the
    gradient is that of ``E = sum_j softmax((logits + g) / tau)_j v_j``. In eval the entry takes
    the value of its largest logit (ties go to the larger value). Anneal ``temperature`` (tau)
    with :func:`snapset.torch.set_temperature`. Jang et al., 2017, "Categorical
    Reparameterization with Gumbel-Softmax"; Maddison et al., 2017, "The Concrete Distribution".
    """

    method = "gumbel"
    #: Sharpness of the logits stored for an assigned value: ``-SHARPNESS * ((w - v_j) / h)^2``.
    SHARPNESS = 2.0

    def __init__(self, values: ValueSet, like: Tensor, temperature: float = 1.0) -> None:
        super().__init__(values, like)
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        """The softmax temperature tau of the surrogate gradient (> 0)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"Invalid temperature: {value} (must be > 0)")
        self._temperature = float(value)

    def hard(self, stored: Tensor) -> Tensor:
        return self.table[F.argmax_ties_up(stored)]

    def forward(self, logits: Tensor) -> Tensor:
        if self.training:
            return F.gumbel_sample(logits, self.table, self.temperature)
        return self.hard(logits)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Logits peaked at each assigned value: ``-2 ((value - v_j) / half_range)^2``."""
        distance = (value.unsqueeze(-1) - self.table) / self.values.half_range
        return distance.square().mul_(-self.SHARPNESS)

    def extra_repr(self) -> str:
        return f"{self.values!r}, temperature={self.temperature}"


METHODS: dict[str, type[Constraint]] = {
    cls.method: cls for cls in (STE, StochasticRounding, GumbelSoftmax)
}


def spread(weight: Tensor, values: ValueSet) -> Tensor:
    """Map a freshly initialised weight onto the set's range, using every value equally.

    Entries keep their order: the smallest ``1/k`` of the entries land in the bin of the
    smallest value, and so on, spread evenly inside each bin. A layer with at least ``k``
    entries therefore uses every value, whatever its init's scale (PyTorch's default inits are
    far narrower than ``{0, 1}`` or ``{-1, 0, 1}``, whose nearest rounding would be all zeros).
    """
    k, n = len(values), weight.numel()
    flat = weight.detach().reshape(-1).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64, device=weight.device)
    ranks[flat.argsort(stable=True)] = torch.arange(n, dtype=torch.float64, device=weight.device)
    position = (ranks + 0.5) * (k / n)  # in (0, k): the integer part picks the bin
    bins = position.floor().clamp_(max=k - 1)
    edges = torch.tensor(
        [values.values[0], *values.midpoints, values.values[-1]],
        dtype=torch.float64,
        device=weight.device,
    )
    low, high = edges[bins.long()], edges[bins.long() + 1]
    spread_values = low + (position - bins) * (high - low)
    return spread_values.reshape(weight.shape).to(weight.dtype)


def _check_distinguishable(
    vs: ValueSet, dtype: torch.dtype, table: Tensor, levels: Tensor, thresholds: Tensor
) -> None:
    if not bool(table.isfinite().all()):
        raise ValueError(f"{vs!r} does not fit in {dtype}: a value overflows to infinity")
    apart = (table.diff() > 0) & (thresholds > levels[:-1]) & (thresholds < levels[1:])
    if not bool(apart.all()):
        i = int((~apart).nonzero()[0])
        raise ValueError(
            f"{vs!r} cannot be told apart in {dtype}: {vs.values[i]} and {vs.values[i + 1]} "
            "round together. Use a wider dtype (torch.float32 or torch.float64) or values "
            "further apart."
        )
