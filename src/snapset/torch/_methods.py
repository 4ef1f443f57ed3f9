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

    def __init__(self, values: ValueSet, like: Tensor) -> None:
        super().__init__()
        self.values = values
        self._build(like.dtype, like.device)

    def hard(self, stored: Tensor) -> Tensor:
        """The deterministic exact values (what eval mode and ``harden_`` use)."""
        raise NotImplementedError

    def _build(self, dtype: torch.dtype, device: torch.device) -> None:
        """(Re)derive the buffers for ``dtype``; refuse a dtype that merges two values."""
        table = torch.tensor(self.values.values, dtype=torch.float64).to(dtype)
        if not bool(table.isfinite().all()):
            raise ValueError(f"{self.values!r} does not fit in {dtype}: a value overflows")
        _check_increasing(self.values, dtype, table)
        self.register_buffer("table", table.to(device), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Constraint:
        super()._apply(fn, recurse)
        self._build(self.table.dtype, self.table.device)
        return self

    def extra_repr(self) -> str:
        return repr(self.values)


class _LatentConstraint(Constraint):
    """Stores a float latent ``u`` on a scale where the set's range is ``[-r, r]``.

    ``w = centre + half_range * u / r`` with ``r = latent_range`` (default 0.1, the scale of a
    freshly initialised float layer's weights). So a learning rate means the same for any set
    (``{0, 1}``, ``{-1, 1}`` or ``[0, 100]``) and for the float parameters beside it: with Adam
    at lr 1e-3, a latent crosses its whole range in about ``2r / lr = 200`` consistent steps.
    """

    levels: Tensor
    thresholds: Tensor
    steps: Tensor | None

    def __init__(
        self,
        values: ValueSet,
        like: Tensor,
        estimator: str = "inward",
        latent_range: float = 0.1,
    ) -> None:
        if estimator not in F.ESTIMATORS:
            raise ValueError(
                f"Unknown estimator {estimator!r}; valid estimators: "
                + ", ".join(repr(e) for e in F.ESTIMATORS)
            )
        if not latent_range > 0:
            raise ValueError(f"Invalid latent_range: {latent_range} (must be > 0)")
        self.estimator = estimator
        self.latent_range = float(latent_range)
        # Slope of value against latent: the straight-through derivative inside the range.
        self.scale = values.half_range / self.latent_range
        super().__init__(values, like)

    def _build(self, dtype: torch.dtype, device: torch.device) -> None:
        super()._build(dtype, device)
        vs, r = self.values, self.latent_range
        levels = torch.tensor(vs.to_latent(vs.values) * r, dtype=torch.float64).to(dtype)
        thresholds = torch.tensor(vs.to_latent(vs.midpoints) * r, dtype=torch.float64).to(dtype)
        _check_increasing(vs, dtype, torch.stack([levels[:-1], thresholds, levels[1:]], 1))
        levels, thresholds = levels.to(device), thresholds.to(device)
        steps: Tensor | None = self.table.diff()
        # The fast summed projection is used only where it reproduces every value exactly.
        if not torch.equal(F.nearest(levels, thresholds, self.table, steps), self.table):
            steps = None
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("thresholds", thresholds, persistent=False)
        self.register_buffer("steps", steps, persistent=False)

    def hard(self, stored: Tensor) -> Tensor:
        return F.nearest(stored, self.thresholds, self.table, self.steps)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Latent of an assigned value: ``(value - centre) / half_range * latent_range``."""
        return (value - self.values.center) * (self.latent_range / self.values.half_range)

    def extra_repr(self) -> str:
        return f"{self.values!r}, estimator={self.estimator!r}, latent_range={self.latent_range}"


class STE(_LatentConstraint):
    r"""Nearest value forward, straight-through gradient to a float latent.

    Stores a latent ``u`` (see ``latent_range``): ``w = centre + half_range * u / r``.
    Forward, in training and eval alike, the nearest value of the set (a tie goes to the larger
    value):

    .. math:: q = \mathrm{nearest}(w) \in V

    Backward: ``dq/du = half_range / r`` inside ``[-r, r]``, shaped outside by the estimator
    (see :func:`snapset.torch.estimator_grad`). Courbariaux et al., 2016, "Binarized Neural
    Networks"; Bengio et al., 2013, "Estimating or Propagating Gradients Through Stochastic
    Neurons".
    """

    method = "ste"

    def forward(self, latent: Tensor) -> Tensor:
        hard = self.hard(latent)
        return F.straight_through(latent, hard, self.scale, self.latent_range, self.estimator)


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
        return F.straight_through(latent, hard, self.scale, self.latent_range, self.estimator)


class GumbelSoftmax(Constraint):
    r"""A categorical distribution over the set for every entry, trained by Gumbel-softmax.

    Stores ``u = logits * r`` of shape ``(*shape, len(values))``, with ``r = latent_range``
    (default 0.1) for the reason given in :class:`STE`: the same learning rate suits every
    method. While training, each entry draws ``j = argmax(logits + g)`` with Gumbel noise ``g``
    and takes the exact value ``v_j``; the gradient is that of
    ``E = sum_j softmax((logits + g) / tau)_j v_j``. In eval the entry takes the value of its
    largest logit (ties go to the larger value). Anneal ``temperature`` (tau) with
    :func:`snapset.torch.set_temperature`. Jang et al., 2017, "Categorical Reparameterization
    with Gumbel-Softmax"; Maddison et al., 2017, "The Concrete Distribution".
    """

    method = "gumbel"
    #: Logits of an assigned value ``w``: ``-SHARPNESS * ((w - v_j) / half_range)^2``, so a
    #: member of ``{-1, 1}`` starts with a logit lead of 2 (a sample agrees about 80% of the time).
    SHARPNESS = 0.5

    def __init__(
        self, values: ValueSet, like: Tensor, temperature: float = 1.0, latent_range: float = 0.1
    ) -> None:
        if not latent_range > 0:
            raise ValueError(f"Invalid latent_range: {latent_range} (must be > 0)")
        super().__init__(values, like)
        self.temperature = temperature
        self.latent_range = float(latent_range)

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

    def forward(self, stored: Tensor) -> Tensor:
        if self.training:
            return F.gumbel_sample(stored / self.latent_range, self.table, self.temperature)
        return self.hard(stored)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Stored logits peaked at each assigned value (see ``SHARPNESS``)."""
        distance = (value.unsqueeze(-1) - self.table) / self.values.half_range
        return distance.square().mul_(-self.SHARPNESS * self.latent_range)

    def extra_repr(self) -> str:
        return f"{self.values!r}, temperature={self.temperature}, latent_range={self.latent_range}"


class Flip(Constraint):
    r"""No latent weight: the stored tensor *is* the set value, moved only by a flip optimizer.

    Forward is the identity, ``w = s`` with ``s`` exact members of the set, and the gradient
    reaches the stored tensor unchanged (``dL/ds = dL/dw``). Nothing here moves a value: a flip
    optimizer (:class:`snapset.torch.Bop`) reads the gradient and moves an entry to a
    neighbouring value of the set. A gradient optimizer (SGD, Adam) would push the values off
    the set, so route flip parameters with :func:`snapset.torch.param_groups`. An assigned value
    is stored as its nearest member of the set (ties go to the larger value). Helwegen et al.,
    2019, "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization".
    """

    method = "flip"
    midpoints: Tensor

    def _build(self, dtype: torch.dtype, device: torch.device) -> None:
        super()._build(dtype, device)
        midpoints = torch.tensor(self.values.midpoints, dtype=torch.float64).to(dtype)
        rows = torch.stack([self.table[:-1].cpu(), midpoints, self.table[1:].cpu()], 1)
        _check_increasing(self.values, dtype, rows)
        self.register_buffer("midpoints", midpoints.to(device), persistent=False)

    def hard(self, stored: Tensor) -> Tensor:
        return stored

    def forward(self, stored: Tensor) -> Tensor:
        return stored

    def right_inverse(self, value: Tensor) -> Tensor:
        """The nearest member of the set for each assigned entry (ties go up)."""
        if bool(value.isnan().any()):
            raise ValueError(f"cannot store NaN in a parameter constrained to {self.values!r}")
        return self.table[torch.bucketize(value, self.midpoints, right=True)]


METHODS: dict[str, type[Constraint]] = {
    cls.method: cls for cls in (STE, StochasticRounding, GumbelSoftmax, Flip)
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


def _check_increasing(vs: ValueSet, dtype: torch.dtype, sequence: Tensor) -> None:
    """Refuse a dtype in which two neighbouring values (or their boundary) merge.

    ``sequence`` is the values, or one row ``(value_i, boundary_i, value_i+1)`` per neighbour
    pair; each must increase strictly.
    """
    rows = sequence if sequence.dim() == 2 else sequence.unfold(0, 2, 1)
    merged = ~(rows.diff(dim=-1) > 0).all(dim=-1)
    if bool(merged.any()):
        i = int(merged.nonzero()[0])
        raise ValueError(
            f"{vs!r} cannot be told apart in {dtype}: {vs.values[i]} and {vs.values[i + 1]} "
            "round together. Use a wider dtype (torch.float32 or torch.float64) or values "
            "further apart."
        )
