"""The methods: parametrizations that map a stored tensor to exact values of a set.

Each method is a small ``nn.Module`` registered with ``torch.nn.utils.parametrize``, and every
one answers the same protocol, so that nothing else in the front needs to know which method
it holds:

* ``method``, ``stores`` (its ``MethodSpec``), ``values`` and ``scale`` (for a scaled set
  ``w = alpha * v``, a [`Scale`][snapset.torch.Scale]; else None);
* ``forward(stored)``: the values the parameter shows (in training, perhaps drawn at
  random), ``alpha * v`` with ``v`` exact members, with the gradient the method sends to the
  stored tensor (and to a learned ``alpha``);
* ``hard(stored)``: the deterministic exact members ``v`` (eval mode, ``save``, ``pack``);
  ``scales(stored)``: their ``alpha`` (None when unscaled); ``value(stored)``: the two
  multiplied, what eval mode and ``harden_`` show;
* ``codes(stored, out=None)``: the index into the sorted set of each entry's hard value, in
  the narrowest dtype (a bool for two values, a byte up to 256);
* ``right_inverse(value)``: the stored tensor that shows ``value``;
* ``value_shape(stored_shape)``: the shape of the values (``gumbel`` stores one more axis);
* ``trainable_when_hard``: whether ``harden_`` leaves the exact values in a parameter.

A method class implements the unscaled map from what it reads (the stored tensor, or for a
statistic scale the stored float weight divided by its scale) to the set: ``show``, ``_hard``,
``_codes`` and ``_right_inverse``; the base class adds the scale around them, once for all.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .._scales import (
    STATISTIC_FLOOR,
    ScaleLayout,
    Scaling,
    bad_scale_message,
    scale_unit,
)
from .._sets import Binary, Tables, ValueSet
from .._spec import (
    ESTIMATORS,
    LATENT_RANGE,
    NOT_BY_FLIP_OPTIMIZER,
    MethodSpec,
    NamedMethod,
    check_temperature,
    gumbel_logit_scale,
    nonfinite_gradient_message,
    nonfinite_stored_message,
    outside_set_error,
)
from .._spec import METHODS as SPECS
from . import _functional as F

__all__ = [
    "METHODS",
    "STE",
    "Constraint",
    "Flip",
    "GF2Weight",
    "GumbelSoftmax",
    "Scale",
    "StochasticRounding",
]


class Scale(nn.Module):
    r"""The scale of a scaled set: a weight shows ``w = alpha * v``, ``v`` exact members.

    ``alpha`` is one float per group of entries that ``scaling`` (a core
    ``snapset._scales.Scaling``) chooses: the whole tensor, each output channel (axis 0), or
    each run of ``g`` entries along the input axis (axis 1). Where it comes from:

    * ``learned``: ``alpha = start * exp(log_gain)``, a fixed ``start`` (a buffer: the
      ``absmean`` statistic of the weight it was made from) times the exponential of a trained
      ``log_gain`` (a parameter that starts at 0), trained by a gradient optimizer (for
      ``flip`` too: Bop moves the codes, ``param_groups`` puts ``log_gain`` among the other
      parameters). In the log domain, as TQT (Jain et al., 2020) trains its thresholds, a step
      moves ``alpha`` by a factor, the same for a scale of 0.03 or of 30, and never past zero;
      a step on ``alpha`` itself would move a small scale by as much as a large one, Adam's
      ``lr`` each time, and soon below zero;
    * ``absmean`` / ``absmax``: ``mean|W|`` or ``max|W|`` of the stored float weight per group,
      divided by the set's unit (``snapset._scales.scale_unit``) and floored at 1e-5,
      recomputed at every forward without a gradient (BitNet b1.58's ``absmean``). The method
      then reads ``W / alpha`` on its latent scale, so the gradient reaches ``W`` straight
      through.

    The product ``alpha * v`` is one multiplication an entry, in the parameter's dtype.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), scale="channel")
        >>> scale = layer.parametrizations.weight[0].scale
        >>> scale.alpha.shape, scale.log_gain.tolist(), scale
        (torch.Size([2, 1]), [[0.0], [0.0]], Scale(granularity='channel', mode='learned'))
    """

    start: Tensor | None
    log_gain: nn.Parameter | None
    #: How many entries of a learned ``log_gain`` the optimizer guard restored to their value
    #: before a step that made ``alpha`` zero, NaN or inf (an exponential out of range) (see
    #: [`snapset.torch.optim.refuse_flip_parameters`][]).
    clamped: int = 0

    def __init__(self, scaling: Scaling, values: ValueSet, weight: Tensor) -> None:
        super().__init__()
        self.scaling = scaling
        self.values = values
        self.layout: ScaleLayout = scaling.layout(
            tuple(weight.shape), 0, 1 if weight.dim() >= 2 else None
        )
        self.unit = scale_unit(values)
        if scaling.learned:
            # summed in float64 and rounded once: the same start whatever order a backend
            # sums in (the Keras front computes it alike)
            start = self.statistic(weight.double(), "absmean").to(weight.dtype)
            self.register_buffer("start", start)
            self.log_gain = nn.Parameter(torch.zeros_like(start))
        else:
            self.start = self.log_gain = None
        self._trusted: tuple[tuple[torch.dtype, int, int], ...] | None = None

    @property
    def learned(self) -> bool:
        """Whether the scales are trained (else a statistic of the float weight)."""
        return self.log_gain is not None

    @property
    def alpha(self) -> Tensor | None:
        """A learned scale's ``start * exp(log_gain)``, with the gradient to ``log_gain``;
        None for a statistic."""
        if self.start is None or self.log_gain is None:
            return None
        return self.start * self.log_gain.exp()

    @torch.no_grad()
    def assign(self, alpha: Tensor) -> None:
        """Make a learned scale ``alpha`` exactly: ``start = alpha`` and ``log_gain = 0`` (what a
        file's scales load as)."""
        if self.start is None or self.log_gain is None:
            raise ValueError(
                f"scale_mode={self.scaling.mode!r} recomputes its scales at every forward; "
                "only a learned scale can be assigned"
            )
        self.start.copy_(alpha)
        self.log_gain.zero_()

    def statistic(self, weight: Tensor, mode: str | None = None) -> Tensor:
        """``mode`` (default: this scale's) of ``weight`` per group, without gradient."""
        layout = self.layout
        stat = weight.detach().abs().reshape(layout.grouped)
        # no axes to reduce (one scale an entry, as "channel" on a vector): torch would reduce
        # every axis for an empty tuple
        if layout.reduce_axes:
            reduce = stat.amax if (mode or self.scaling.mode) == "absmax" else stat.mean
            stat = reduce(layout.reduce_axes, keepdim=True)
        return stat.div_(self.unit).clamp_min_(STATISTIC_FLOOR).reshape(layout.scale_shape)

    def scales(self, stored: Tensor) -> Tensor:
        """The scales (shape ``layout.scale_shape``): ``alpha``, or the statistic of
        ``stored``; a learned one is checked first (see ``check``)."""
        alpha = self.alpha
        if alpha is None:
            return self.statistic(stored)
        if not torch.compiler.is_compiling():
            self.check()
        return alpha

    def expand(self, members: Tensor, alpha: Tensor) -> Tensor:
        """``alpha * members``, each scale times the entries of its group."""
        layout = self.layout
        grouped = members.reshape(layout.grouped) * alpha.reshape(layout.grouped_scale)
        return grouped.reshape(layout.shape)

    def divide(self, weight: Tensor, alpha: Tensor) -> Tensor:
        """``weight / alpha``, each entry by its group's scale."""
        layout = self.layout
        grouped = weight.reshape(layout.grouped) / alpha.reshape(layout.grouped_scale)
        return grouped.reshape(layout.shape)

    def check(self, where: str = "the learned scales") -> None:
        """Raise ``ValueError`` if a learned ``alpha`` holds an entry that is not finite and
        > 0 (O(1) while nothing wrote ``start`` or ``log_gain`` since the last check)."""
        if self.start is None or self.log_gain is None:
            return
        key = (_key(self.start), _key(self.log_gain))
        if key == self._trusted:
            return
        with torch.no_grad():
            alpha = self.start * self.log_gain.exp()
            bad = ~(alpha.isfinite() & (alpha > 0))
            if bool(bad.any()):
                raise ValueError(
                    f"{bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} "
                    "Load or assign positive scales (snapset clamps what its optimizers' steps "
                    "would make so)."
                )
        self._trusted = key

    def extra_repr(self) -> str:
        return f"granularity={self.scaling.granularity!r}, mode={self.scaling.mode!r}"


class Constraint(NamedMethod, nn.Module):
    """Base of snapset's parametrizations: a stored tensor in, exact set values out.

    Lookup tables are non-persistent buffers: they follow ``.to(device)`` and ``.half()``, they are
    rebuilt from the exact [`ValueSet`][snapset.ValueSet] after each such move, and they stay out of
    ``state_dict``, which holds only the stored tensor. The projection therefore depends on nothing
    but ``state_dict`` and the value set named at ``constrain`` time.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Ternary(), "gumbel")
        >>> c = layer.parametrizations.weight[0]
        >>> c.method, c.stores, c.value_shape(layer.parametrizations.weight.original.shape)
        ('gumbel', 'logits', torch.Size([2, 3]))
    """

    #: ``harden_`` leaves the exact values in the parameter (which keeps its identity); a
    #: method whose layer computes with them by arithmetic no gradient crosses (``gf2``) makes
    #: them a buffer instead, out of every optimizer.
    trainable_when_hard: ClassVar[bool] = True
    table: Tensor
    midpoints: Tensor
    #: The scale of a scaled set (``w = alpha * v``), or None for the exact set itself.
    scale: Scale | None
    #: The share of the exact values in the training forward of a weight whose scale is a
    #: statistic (the rest is the float weight it stores): 1 (exact) unless ``set_blend``
    #: warms a float model up.
    blend: float = 1.0

    def __init__(self, values: ValueSet, like: Tensor) -> None:
        super().__init__()
        self.values = values
        #: The tensor's name in messages: its name in the module, or its qualified name in the
        #: model when ``constrain_`` made it (``"0.weight"``).
        self.tensor_name = "weight"
        self.scale = None
        self._build(like.dtype, like.device)

    def scaled(self, scaling: Scaling | None, weight: Tensor) -> Constraint:
        """Scale this constraint's values as ``scaling`` says (None: leave them unscaled),
        for a weight like ``weight`` (a learned scale starts at its ``absmean``); return it."""
        if scaling is not None:
            self.scale = Scale(scaling, self.values, weight.detach())
        return self

    @torch.no_grad()
    def start(self, weight: Tensor, init: str) -> Tensor:
        """The values to store first for a freshly made ``weight`` (see ``INITS``): spread
        over the set (``"spread"``) or as they are (``"nearest"``), divided by a learned scale
        first; a statistic scale keeps the float weight as it is."""
        if self.scale is not None and not self.scale.learned:
            return weight
        alpha = self.scales(weight)
        on_set = weight if alpha is None or self.scale is None else self.scale.divide(weight, alpha)
        if init == "spread":
            spread = self.values.spread(on_set.cpu().double().numpy())
            on_set = torch.from_numpy(spread).to(weight)
        return on_set if alpha is None or self.scale is None else self.scale.expand(on_set, alpha)

    # ----- the protocol: the scale around each method's own map --------------------------

    def forward(self, stored: Tensor) -> Tensor:
        """The values the parameter shows: ``alpha * v``, or ``v`` when unscaled."""
        if self.scale is None:
            return self.show(stored)
        alpha = self.scale.scales(stored)
        shown = self.scale.expand(self.show(self._reads(stored, alpha)), alpha)
        if self.training and self.blend < 1:  # set_blend's warm-up: stored is the float weight
            return F.blend(stored, shown, self.blend)
        return shown

    def hard(self, stored: Tensor) -> Tensor:
        """The deterministic exact members ``v`` of the set (unscaled)."""
        return self._hard(self._reads(stored))

    def codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        """Index (into the sorted set) of each entry's ``hard`` value, one byte an entry or
        less, from the same comparisons that choose the values; ``out``, a tensor of the codes'
        shape and dtype from an earlier call, is reused when given."""
        return self._codes(self._reads(stored), out)

    def coded(self, stored: Tensor) -> tuple[Tensor, Tensor] | None:
        """What ``codes`` compares and the sorted boundaries it compares against: each code is
        how many boundaries its entry reaches (``>=``). None where codes are found otherwise
        (``gumbel``'s largest logit)."""
        boundaries = self._boundaries()
        return None if boundaries is None else (self._reads(stored), boundaries)

    def _boundaries(self) -> Tensor | None:
        return None

    def scales(self, stored: Tensor) -> Tensor | None:
        """The scales ``alpha`` of the deterministic values, detached (None when unscaled)."""
        return None if self.scale is None else self.scale.scales(stored).detach()

    def value(self, stored: Tensor) -> Tensor:
        """The deterministic values the parameter shows: ``alpha * hard`` (what eval mode and
        ``harden_`` show, bit for bit)."""
        members = self.hard(stored)
        alpha = self.scales(stored)
        return members if alpha is None or self.scale is None else self.scale.expand(members, alpha)

    def right_inverse(self, value: Tensor) -> Tensor:
        """The stored tensor whose values are ``value``: its nearest members of the set
        (divided by a learned scale first); a statistic scale stores the float weight itself."""
        if self.scale is None:
            return self._right_inverse(value)
        alpha = self.scale.alpha
        if alpha is None:
            return value
        return self._right_inverse(self.scale.divide(value, alpha.detach()))

    def stored_for(self, members: Tensor) -> Tensor:
        """The stored tensor that shows the exact ``members`` unscaled, whatever the scale
        holds (a file's codes load through it; their scales load beside)."""
        return self._right_inverse(members)

    def _reads(self, stored: Tensor, alpha: Tensor | None = None) -> Tensor:
        """What the method's own map reads: the stored tensor, or, for a statistic scale, the
        float weight divided by its scale on the method's latent scale."""
        if self.scale is None or self.scale.learned:
            return stored
        alpha = self.scale.statistic(stored) if alpha is None else alpha
        return self._latent_of(self.scale.divide(stored, alpha))

    def _latent_of(self, value: Tensor) -> Tensor:
        """The latent that shows values on the set's own scale (methods with a latent)."""
        raise NotImplementedError

    # ----- what each method implements ---------------------------------------------------

    def show(self, stored: Tensor) -> Tensor:
        """The exact members the method shows for what it reads (training: perhaps drawn at
        random), with its gradient."""
        raise NotImplementedError

    def check(self, stored: Tensor, name: str | None = None) -> None:
        """Raise [`snapset.OutsideSetError`][] if ``stored`` shows values outside the set.

        Latents and logits always show members of the set, so only ``flip`` has work to do
        (see [`Flip.check`][snapset.torch.Flip.check]). ``name`` is the tensor's name in
        the message (default: ``tensor_name``).
        """

    def trust(self, stored: Tensor) -> None:
        """Record that ``stored`` shows members of the set after a write snapset made (only
        ``flip`` keeps such a record)."""

    def check_incoming(self, incoming: Tensor, like: Tensor, where: str) -> Tensor:
        """Check a tensor about to be loaded as the stored tensor ``like``; return what to load.

        Latents and logits must be finite (a NaN latent would stay NaN for good): a
        ``ValueError`` says which. ``flip`` overrides this with a check of the values.
        """
        if incoming.is_floating_point() and not bool(incoming.isfinite().all()):
            count = int((~incoming.isfinite()).sum())
            raise ValueError(
                f"{nonfinite_stored_message(where, count, self.stores)} Load a state whose "
                f"{self.stores} are finite; nothing was loaded into this module."
            )
        return incoming

    def zero_nonfinite(self, grad: Tensor) -> None:
        """Zero, count and report the non-finite entries of the stored tensor's gradient, in
        place, before a gradient optimizer steps it (methods with latents do; see
        [`snapset.torch.optim.refuse_flip_parameters`][])."""

    def _hard(self, stored: Tensor) -> Tensor:
        raise NotImplementedError

    def _codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def _right_inverse(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def value_shape(self, stored_shape: torch.Size) -> torch.Size:
        """The shape of the values that a stored tensor of ``stored_shape`` shows."""
        return stored_shape

    def _tables(self, dtype: torch.dtype) -> Tables:
        """The set's tables as ``dtype`` holds them; refuses a dtype that merges two values."""
        return self.values.tables(str(dtype))

    def _build(self, dtype: torch.dtype, device: torch.device) -> None:
        """(Re)derive the buffers for ``dtype`` on ``device``."""
        self._keep(self._tables(dtype), dtype, device)

    def _keep(self, tables: Tables, dtype: torch.dtype, device: torch.device) -> None:
        self._buffer("table", tables.values, dtype, device)
        self._buffer("midpoints", tables.midpoints, dtype, device)

    def _buffer(
        self, name: str, array: npt.NDArray[np.float64], dtype: torch.dtype, device: torch.device
    ) -> None:
        # The tables' numbers are exact in dtype: this cast rounds nothing.
        tensor = torch.from_numpy(array).to(device=device, dtype=dtype)
        self.register_buffer(name, tensor, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Constraint:
        # Probe the target dtype first: one that merges two values of the set is refused
        # before this constraint, its stored tensor or its module changes.
        self._tables(fn(self.table).dtype)
        super()._apply(fn, recurse)
        self._build(self.table.dtype, self.table.device)
        return self

    def extra_repr(self) -> str:
        return repr(self.values)


class _NonfiniteGradients:
    """Non-finite gradients of a stored latent or logits (``ste``, ``stochastic``, ``gumbel``).

    A single NaN gradient entry would make an Adam-trained latent NaN for good, its value
    pinned while the outputs stay finite. Before a gradient optimizer steps the latent, the
    guard that ``snapset.torch`` puts on every optimizer zeroes such entries, counts them in
    ``nonfinite_gradients`` and warns. It runs after ``GradScaler`` has looked: a step the
    scaler skips for an overflow is never seen, so loss scaling works as before.
    """

    tensor_name: str
    _nonfinite = 0

    @property
    def nonfinite_gradients(self) -> int:
        """How many non-finite gradient entries of this constraint were zeroed so far."""
        return self._nonfinite

    def zero_nonfinite(self, grad: Tensor) -> None:
        bad = ~grad.isfinite()
        count = int(bad.sum())
        if count:
            grad.masked_fill_(bad, 0.0)
            self._nonfinite += count
            warnings.warn(
                nonfinite_gradient_message(f"'{self.tensor_name}'", count), RuntimeWarning, 3
            )


class _LatentConstraint(_NonfiniteGradients, Constraint):
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
        estimator: str = ESTIMATORS[0],
        latent_range: float = LATENT_RANGE,
        dither: float | None = None,
    ) -> None:
        self.estimator = estimator
        self.latent_range = float(latent_range)
        #: The share of the gap between two values, centred on their threshold, in which a
        #: training forward draws either value at random (``snapset._spec.METHODS``).
        self.dither = float(self.spec.options["dither"] if dither is None else dither)
        super().__init__(values, like)

    def _tables(self, dtype: torch.dtype) -> Tables:
        return self.values.tables(str(dtype), self.latent_range)

    def _keep(self, tables: Tables, dtype: torch.dtype, device: torch.device) -> None:
        super()._keep(tables, dtype, device)
        assert tables.levels is not None and tables.thresholds is not None  # latent tables
        self._buffer("levels", tables.levels, dtype, device)
        self._buffer("thresholds", tables.thresholds, dtype, device)
        #: Slope of value against latent: the straight-through derivative inside the range.
        self.slope = tables.scale
        steps = self.table.diff()
        # The fast summed projection is used only where it reproduces every value exactly.
        exact = torch.equal(F.summed(self.levels, self.thresholds, self.table, steps), self.table)
        self.register_buffer("steps", steps if exact else None, persistent=False)

    def _hard(self, stored: Tensor) -> Tensor:
        return F.nearest(stored, self.thresholds, self.table, self.steps)

    @torch.no_grad()
    def _codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        # value j where thresholds[j-1] <= u: the comparisons of hard(), counted
        return F.count_at_least(stored, self.thresholds, out)

    def _boundaries(self) -> Tensor:
        return self.thresholds

    def _right_inverse(self, value: Tensor) -> Tensor:
        """Latent of an assigned value: ``(value - centre) / half_range * latent_range``."""
        return (value - self.values.center) * (self.latent_range / self.values.half_range)

    def _latent_of(self, value: Tensor) -> Tensor:
        return self._right_inverse(value)

    def show(self, latent: Tensor) -> Tensor:
        if self.training and self.dither > 0:
            hard = F.stochastic_round(latent, self.levels, self.table, self.dither)
        else:
            hard = self._hard(latent)
        return F.straight_through(latent, hard, self.slope, self.latent_range, self.estimator)

    def extra_repr(self) -> str:
        dither = "" if self.dither == self.spec.options["dither"] else f", dither={self.dither}"
        return (
            f"{self.values!r}, estimator={self.estimator!r}, latent_range={self.latent_range}"
            + dither
        )


class STE(_LatentConstraint):
    r"""Nearest value forward, straight-through gradient to a float latent.

    Stores a latent ``u`` (see ``latent_range``): ``w = centre + half_range * u / r``.
    Forward, in training and eval alike, the nearest value of the set (a tie goes to the larger
    value):

    ```text
    q = nearest(w) in V
    ```

    Backward: ``dq/du = half_range / r`` inside ``[-r, r]``, shaped outside by the estimator (see
    [`snapset.torch.estimator_grad`][]). Courbariaux et al., 2016,
    "Binarized Neural Networks"; Bengio et al., 2013, "Estimating or Propagating Gradients Through
    Stochastic Neurons".

    ``dither`` (default 0) > 0: while training, a latent within that share of the gap around a
    threshold takes either neighbouring value at random, the nearer one the likelier, as
    ``StochasticRounding`` does across the whole gap. With a learning rate that stays high to the
    end (Adam at 1e-2 without a schedule), a latent whose gradient is only noise otherwise drifts
    back and forth across a threshold and ends on a random side (oscillation); inside the band
    the loss sees both values and holds the latent on the side it prefers. See the
    [oscillation page](../concepts/oscillation.md).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> ste = st.STE(snapset.Sign(), torch.empty(0))
        >>> ste(torch.tensor([-0.3, 0.0, 0.02])).tolist()  # a tie goes to the larger value
        [-1.0, 1.0, 1.0]
        >>> st.STE(snapset.Sign(), torch.empty(0), dither=0.25)
        STE(ValueSet([-1, 1]), estimator='inward', latent_range=0.1, dither=0.25)
    """

    spec = SPECS["ste"]


class StochasticRounding(_LatentConstraint):
    r"""Random rounding to a neighbouring value while training, nearest value in eval.

    Same latent as ``STE``. While training, a latent between two neighbouring values
    rounds up with probability proportional to its distance from the lower one, so that
    ``E[q] = w`` inside the range: the straight-through gradient is then the derivative of the
    expectation. Gupta et al., 2015, "Deep Learning with Limited Numerical Precision".
    It is ``STE`` with ``dither=1``; a smaller ``dither`` narrows the random band to that share
    of the gap around each threshold.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> rounding = st.StochasticRounding(snapset.Binary(), torch.empty(0)).eval()
        >>> rounding(torch.tensor([-0.05, 0.05])).tolist()  # eval: the nearest value
        [0.0, 1.0]
    """

    spec = SPECS["stochastic"]


class GumbelSoftmax(_NonfiniteGradients, Constraint):
    r"""A categorical distribution over the set for every entry, trained by Gumbel-softmax.

    Stores ``u = logits * r`` of shape ``(*shape, len(values))``, with ``r = latent_range`` (default
    0.1) for the reason given in ``STE``: the same learning rate suits every method. While training,
    each entry draws ``j = argmax(logits + g)`` with Gumbel noise ``g`` and takes the exact value
    ``v_j``; the gradient is that of ``E = sum_j softmax((logits + g) / tau)_j v_j``. In eval the
    entry takes the value of its largest logit (ties go to the larger value). Anneal ``temperature``
    (tau) with [`snapset.torch.set_temperature`][]. Jang et al., 2017,
    "Categorical Reparameterization with Gumbel-Softmax"; Maddison et al., 2017, "The Concrete
    Distribution".

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> gumbel = st.GumbelSoftmax(snapset.Ternary(), torch.empty(0)).eval()
        >>> gumbel(torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.2, 0.2]])).tolist()
        [-1.0, 1.0]
    """

    spec = SPECS["gumbel"]

    def __init__(
        self,
        values: ValueSet,
        like: Tensor,
        temperature: float = SPECS["gumbel"].options["temperature"],
        latent_range: float = LATENT_RANGE,
    ) -> None:
        super().__init__(values, like)
        self.temperature = temperature
        self.latent_range = float(latent_range)

    @property
    def temperature(self) -> float:
        """The softmax temperature tau of the surrogate gradient (> 0)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        check_temperature(value)
        self._temperature = float(value)

    def _hard(self, stored: Tensor) -> Tensor:
        return self.table[F.argmax_ties_up(stored)]

    @torch.no_grad()
    def _codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        return F.narrow(F.argmax_ties_up(stored), len(self.values))

    def show(self, stored: Tensor) -> Tensor:
        if self.training:
            return F.gumbel_sample(stored / self.latent_range, self.table, self.temperature)
        return self._hard(stored)

    def _right_inverse(self, value: Tensor) -> Tensor:
        """Stored logits peaked at each assigned value: ``(w - v_j)^2`` times the core's
        ``gumbel_logit_scale`` (``-GUMBEL_SHARPNESS * r / half_range^2``), so that a member of
        ``{-1, 1}`` starts with a logit lead of 2 (a sample agrees about 80% of the time) and
        both fronts store the same numbers."""
        scale = gumbel_logit_scale(self.values.half_range, self.latent_range)
        return (value.unsqueeze(-1) - self.table).square_().mul_(scale)

    def value_shape(self, stored_shape: torch.Size) -> torch.Size:
        """The stored shape without its last axis, which runs over the set."""
        return stored_shape[:-1]

    def extra_repr(self) -> str:
        return f"{self.values!r}, temperature={self.temperature}, latent_range={self.latent_range}"


class Flip(Constraint):
    r"""No latent weight: the stored tensor *is* the set value, moved only by a flip optimizer.

    Forward is the identity, ``w = s`` with ``s`` exact members of the set, and the gradient reaches
    the stored tensor unchanged (``dL/ds = dL/dw``). Nothing here moves a value: a flip optimizer
    ([`snapset.torch.Bop`][]) reads the gradient and moves an entry to a
    neighbouring value of the set. A gradient optimizer (SGD, Adam) would push the values off the
    set, so route flip parameters with [`snapset.torch.param_groups`][].
    An assigned value is stored as its nearest member of the set (ties go to the larger value).
    Helwegen et al., 2019, "Latent Weights Do Not Exist: Rethinking Binarized Neural Network
    Optimization".

    The forward never computes with a value outside the set: see
    [`check`][snapset.torch.Flip.check].

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> flip = st.Flip(snapset.Binary(), torch.empty(0))
        >>> flip.right_inverse(torch.tensor([0.5, 0.49, -3.0])).tolist()
        [1.0, 0.0, 0.0]
    """

    spec = SPECS["flip"]

    def __init__(self, values: ValueSet, like: Tensor) -> None:
        super().__init__(values, like)
        # The key of the stored tensor when it was last found to hold members of the set, and
        # the dtypes the tables have held since (a dtype move re-projects through them).
        self._trusted: tuple[torch.dtype, int, int] | None = None
        self._dtypes = [like.dtype]

    def _hard(self, stored: Tensor) -> Tensor:
        return stored

    @torch.no_grad()
    def _codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        return F.count_at_least(stored, self.midpoints, out)

    def _boundaries(self) -> Tensor:
        return self.midpoints

    def show(self, stored: Tensor) -> Tensor:
        # Under torch.compile the check would make dynamo guard on the tensor's version and
        # recompile every step; the optimizer hook and the eager consumers check instead.
        if not torch.compiler.is_compiling():
            self.check(stored)
        return stored

    def _right_inverse(self, value: Tensor) -> Tensor:
        """The nearest member of the set for each assigned entry (ties go up)."""
        _refuse_nan(value, self.values)
        return self.table[torch.bucketize(value, self.midpoints, right=True)]

    def check(self, stored: Tensor, name: str | None = None) -> None:
        """Raise [`snapset.OutsideSetError`][] if ``stored`` holds a value outside the set.

        O(1) while nothing but snapset wrote ``stored``: the check compares a key
        ``(dtype, data_ptr, _version)`` with the one recorded after the last write snapset
        made or checked (``_version`` counts every in-place write: ``copy_``,
        ``load_state_dict``, any optimizer's step). When the key changed it looks at every
        entry once: members of the set are trusted again; values that a dtype move
        (``.double()``, ``.half().float()``, bfloat16 to float16) left in an earlier dtype's
        rounding are re-projected, by their codes, onto this dtype's exact values; anything
        else is refused, the tensor unchanged.

        Examples:
            >>> import torch, snapset, snapset.torch as st
            >>> layer = st.constrain(torch.nn.Linear(2, 1), "weight", snapset.Sign(), "flip")
            >>> stored = layer.parametrizations.weight.original
            >>> with torch.no_grad():
            ...     _ = stored.add_(0.25)  # what Adam would do
            >>> layer.parametrizations.weight[0].check(stored)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            snapset.OutsideSetError: flip parameter 'weight' holds 2 values outside ...
        """
        if _key(stored) == self._trusted:
            return
        with torch.no_grad():
            inside = F.members(stored, self.table)
            if not bool(inside.all()) and not self._reproject(stored):
                raise outside_set_error(
                    f"flip parameter '{name or self.tensor_name}'",
                    self.values,
                    int((~inside).sum()),
                    float(stored[~inside][0]),
                    FLIP_FIX,
                )
        self.trust(stored)

    def trust(self, stored: Tensor) -> None:
        """Record that ``stored`` holds members of the set (after a write snapset made)."""
        self._trusted = _key(stored)
        self._dtypes = [stored.dtype]

    def check_incoming(self, incoming: Tensor, like: Tensor, where: str) -> Tensor:
        """Refuse a tensor to be loaded into ``like`` unless every entry is a member of the set
        as the incoming dtype holds it; return the same members in ``like``'s dtype."""
        dtype = incoming.dtype if incoming.dtype in _FLOATS else torch.float64
        held = incoming.to(dtype)
        table, midpoints = self._tables_as(dtype, held.device)
        inside = F.members(held, table)
        if not bool(inside.all()):
            raise outside_set_error(
                where,
                self.values,
                int((~inside).sum()),
                float(held[~inside][0]),
                "Load a state saved from a model constrained to this set (flip parameters "
                "hold the set's values); nothing was loaded into this module.",
            )
        if dtype == like.dtype:
            return incoming
        return self.table.to(held.device)[F.count_at_least(held, midpoints).long()]

    def _apply(self, fn: Any, recurse: bool = True) -> Flip:
        super()._apply(fn, recurse)
        if self.table.dtype not in self._dtypes:
            self._dtypes.append(self.table.dtype)
        return self

    def _reproject(self, stored: Tensor) -> bool:
        """Move values that hold an earlier dtype's members onto this dtype's; say if it did."""
        for dtype in reversed(self._dtypes):
            back = stored.to(dtype)
            table, midpoints = self._tables_as(dtype, stored.device)
            # the values must be that dtype's members exactly, not merely round to them
            if (
                dtype != stored.dtype
                and torch.equal(back.to(stored.dtype), stored)
                and bool(F.members(back, table).all())
            ):
                stored.copy_(self.table[F.count_at_least(back, midpoints).long()])
                return True
        return False

    def _tables_as(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """The values and midpoints as ``dtype`` holds them (exact: the core rounded them)."""
        tables = self._tables(dtype)
        return tuple(  # type: ignore[return-value]
            torch.from_numpy(array).to(dtype=dtype, device=device)
            for array in (tables.values, tables.midpoints)
        )


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


#: What to do about a flip parameter outside its set: both the forward's and Bop's message.
FLIP_FIX = (
    f"{NOT_BY_FLIP_OPTIMIZER}. Route flip parameters to snapset.torch.Bop with "
    "snapset.torch.param_groups (groups = param_groups(model); Bop(groups.flip); "
    "Adam(groups.latent + groups.other)), or assign set values (module.<name> = tensor stores "
    "the nearest members)."
)


def _key(stored: Tensor) -> tuple[torch.dtype, int, int]:
    return (stored.dtype, stored.data_ptr(), stored._version)


class GF2Weight(Constraint):
    r"""The weight of a [`snapset.torch.GF2Linear`][]: stored logits, shown
    as exact bits.

    Stores a logit ``l`` per entry (the layer's trainable ``logits``); the value is ``sigmoid(l) >=
    1/2``, in {0, 1} (``l = 0`` gives 1). Forward returns that hard weight without gradient: the
    layer trains the logits through its own expected-parity surrogate
    ([`snapset.torch.GF2Linear.log_odds`][]), not through the
    weight. An assigned 0 or 1 is stored as ``-CERTAIN_LOGIT`` or ``+CERTAIN_LOGIT``. Not a method
    of [`snapset.torch.constrain`][]; once hardened, the weight is a buffer
    (the layer's exact GF(2) product has no gradient).

    Examples:
        >>> import torch
        >>> from snapset.torch._methods import GF2Weight
        >>> gf2 = GF2Weight(torch.empty(0))
        >>> gf2(torch.tensor([-3.0, 0.0, 2.5])).tolist()
        [0.0, 1.0, 1.0]
        >>> gf2.right_inverse(torch.tensor([1.0, 0.0])).tolist()
        [12.0, -12.0]
    """

    spec = MethodSpec("gf2", "logits", {})
    trainable_when_hard = False
    #: Magnitude of the logits stored for an assigned bit: ``sigmoid(-12) = 6e-6``, a weight as
    #: good as certain (the training forward then agrees with the exact product to ~1e-3 even
    #: for a hundred inputs), which gradient training can still move (Adam at lr 0.1 reverses it
    #: in about 120 steps). Exact in every float dtype.
    CERTAIN_LOGIT = 12.0

    def __init__(self, like: Tensor) -> None:
        super().__init__(Binary(), like)

    def _hard(self, stored: Tensor) -> Tensor:
        return self._bits(stored).to(stored.dtype)

    @torch.no_grad()
    def _codes(self, stored: Tensor, out: Tensor | None = None) -> Tensor:
        return self._bits(stored, out)

    def show(self, stored: Tensor) -> Tensor:
        return self._hard(stored)

    def _right_inverse(self, value: Tensor) -> Tensor:
        """``+CERTAIN_LOGIT`` where the assigned value is nearer 1 (ties go up), else minus it."""
        _refuse_nan(value, self.values)
        return value.ge(0.5).to(value.dtype).mul_(2 * self.CERTAIN_LOGIT).sub_(self.CERTAIN_LOGIT)

    @staticmethod
    def _bits(stored: Tensor, out: Tensor | None = None) -> Tensor:
        # sigmoid(l) >= 1/2 rather than l >= 0: a tiny negative logit whose sigmoid rounds to
        # 1/2 shows 1, as it always has
        return torch.ge(torch.sigmoid(stored.detach()), 0.5, out=out)


METHODS: dict[str, type[Constraint]] = {
    cls.spec.name: cls for cls in (STE, StochasticRounding, GumbelSoftmax, Flip)
}
"""The methods [`snapset.torch.constrain`][] offers, by name."""


def _refuse_nan(value: Tensor, values: ValueSet) -> None:
    if bool(value.isnan().any()):
        raise ValueError(f"cannot store NaN in a parameter constrained to {values!r}")
