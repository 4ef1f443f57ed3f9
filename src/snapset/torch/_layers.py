"""Layers whose arithmetic is snapset's own (constraints on torch's layers need no clones):
``Multiplier`` and ``GF2Linear``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import gf2
from .._sets import Binary, ValueSet
from .._spec import outside_set_error
from ._constrain import _check_loads, constrain, harden_, register, stored_tensor
from ._gf2_fit import from_samples
from ._methods import GF2Weight

__all__ = ["GF2Linear", "Multiplier"]


class Multiplier(nn.Module):
    """``y = x * w``: a learned per-feature multiplier whose entries lie in a value set.

    The forum's "LearnableMultiplier", done right: ``w`` has ``num_features`` entries, always exact
    members of ``values``, trained through ``method`` (see
    [`snapset.torch.constrain`][]; method options go through ``**options``).
    ``x`` may have any leading dimensions; its last one has ``num_features`` entries.

    ``scale`` and ``scale_mode`` make it a scaled set, ``w = alpha * v``, as in ``constrain``:
    ``scale="tensor"`` for one scale, ``"channel"`` for one per feature (a weight of one axis
    has no input axis, so a group size is refused).

    Examples:
        >>> import torch, snapset.torch as st
        >>> layer = st.Multiplier(4, [1, -1, 0.5, -0.5])
        >>> sorted(layer.weight.tolist())
        [-1.0, -0.5, 0.5, 1.0]
        >>> layer(torch.ones(2, 4)).shape
        torch.Size([2, 4])
        >>> scaled = st.Multiplier(4, [1, -1], scale="tensor")
        >>> alpha = scaled.parametrizations.weight[0].scale.alpha
        >>> torch.equal(scaled.weight.abs(), alpha.expand(4))
        True
    """

    weight: Tensor

    def __init__(
        self,
        num_features: int,
        values: ValueSet | list[float] | tuple[float, ...],
        method: str = "ste",
        *,
        scale: str | int | None = None,
        scale_mode: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: float | str,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(
                f"Invalid num_features: {_brief(num_features)} (must be an int). Multiplier takes "
                "the number of features first, then the values: Multiplier(64, [1, -1]) "
                "(Keras's sk.Multiplier, which infers its size, takes the values alone)."
            )
        if num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features} (must be >= 1)")
        self.num_features = num_features
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        nn.init.uniform_(self.weight, -1.0, 1.0)
        constrain(
            self,
            "weight",
            values,
            method,
            scale=scale,
            scale_mode=scale_mode,
            **options,  # type: ignore[arg-type]
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ----- GF(2) -------------------------------------------------------------------------------


def _check_bits(x: Tensor) -> None:
    if x.is_complex():
        raise ValueError(f"GF2Linear takes real 0/1 inputs, got dtype {x.dtype}")
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        raise ValueError(
            f"GF2Linear takes inputs in {{0, 1}}, got an entry {x[bad][0].item()!r}. Map the "
            f"data into GF(2) first, e.g. `x % 2` for integers or `(x > 0.5).float()` for a "
            f"threshold."
        )


def parity_log_odds(x: Tensor, logits: Tensor) -> Tensor:
    """Log-odds that ``x W^T`` is odd, for independent weights ``W_ji ~ Bernoulli(sigmoid(l_ji))``.

    ``x`` is ``(batch, in)`` with entries in {0, 1}, ``logits`` is ``(out, in)``; returns
    ``(batch, out)``. See ``GF2Linear`` for the maths.
    """
    eps = torch.finfo(logits.dtype).eps
    # |1 - 2p| = 1 - 2 min(p, 1 - p) and min(p, 1 - p) = sigmoid(-|l|): exact for large |l|,
    # where trained weights end up. The clamp keeps log|1 - 2p| finite (with zero gradient)
    # at p = 1/2, where the factor and so the whole product is 0.
    closer = torch.sigmoid(-logits.abs()).clamp(max=0.5 - eps)
    log_magnitude = torch.log1p(-2 * closer)
    # A factor with x_i = 0 is 1 (log 0); with x_i = 1 it is 1 - 2 p_ji: sums over the inputs
    # that are on are matrix products, so no (batch, out, in) tensor is ever made.
    log_product = x @ log_magnitude.T
    negative = torch.remainder(x @ (logits > 0).to(x.dtype).T, 2)
    sign = 1 - 2 * negative
    # With s = sign and L = log|prod| <= 0: P(odd) = (1 - s e^L) / 2, P(even) = (1 + s e^L) / 2,
    # so log-odds = s (log(1 - e^L) - log(1 + e^L)). L = 0 (no input on, or every weight
    # certain) would give an infinite log-odds: cap it just below 0.
    capped = log_product.clamp(max=-eps)
    return sign * (torch.log(-torch.expm1(capped)) - F.softplus(capped))


class GF2Linear(nn.Module):
    """``y = x W^T mod 2``: a linear layer over GF(2), the field {0, 1} with XOR as addition.

    Inputs ``x`` are 0/1 tensors of shape ``(..., in_features)`` (any real or bool dtype);
    ``weight`` is a {0, 1} tensor of shape ``(out_features, in_features)``. Each output bit is
    the parity (XOR) of the inputs its row of ``weight`` selects.

    **Eval mode is exact**: the forward pass is [`snapset.gf2.matmul`][] on packed
    bits with the hard weight, and returns 0/1 in the input's dtype.

    **Training** needs a surrogate, because a parity has no useful gradient. Each weight has a
    logit ``l_ji`` (the trainable parameter ``logits``) and is taken as an independent
    Bernoulli variable ``W_ji ~ Bernoulli(p_ji)``, ``p_ji = sigmoid(l_ji)``. The parity of
    independent bits has a closed form (the piling-up lemma), so the training forward is the
    *exact* probability that the output bit is 1::

        P(y_j = 1 | x) = (1 - prod_i (1 - 2 x_i p_ji)) / 2

    Only inputs that are on contribute a factor ``1 - 2 p_ji``. The product is taken in log
    space, ``L = sum_i x_i log|1 - 2 p_ji|`` (a matrix product), with its sign counted apart,
    and ``log_odds`` returns ``log P(y=1) - log P(y=0) = s (log(1 - e^L) - log(1 + e^L))``
    without cancellation, for ``binary_cross_entropy_with_logits``. In training ``forward``
    returns ``sigmoid(log_odds(x))``, the expected output ``E[y]`` (in the logits' dtype); in
    eval it returns ``y`` (in the input's dtype).
    Once every ``p_ji`` is 0 or 1 the two agree exactly.

    ``weight`` is always the hard {0, 1} weight, in training as in eval (without gradient; tie rule:
    ``p = 1/2`` gives 1), so what you read is what eval computes with; ``probs`` is the soft ``p``.
    It is a constrained tensor like any other (method ``"gf2"``, set
    [`snapset.Binary`][], stored tensor ``logits``):
    [`snapset.torch.harden_`][], [`save`][snapset.torch.save],
    [`load`][snapset.torch.load], [`summary`][snapset.torch.summary] and
    [`FlipTracker`][snapset.torch.FlipTracker] treat it as such, and assigning 0/1 values to
    ``weight`` stores logits of magnitude ``GF2Weight.CERTAIN_LOGIT`` (12). ``harden_`` drops the
    logits for good and keeps ``weight`` as a plain {0, 1} buffer (``state_dict`` key ``weight``),
    which no optimizer sees.

    What it is for: learning a GF(2)-linear map (parity checks, linear codes, LFSR taps,
    linear layers of ciphers) from input/output samples *inside* a model trained by gradient
    descent, possibly with noisy labels. Honest limits: the gradient that reaches a weight
    shrinks like the product of the other factors ``|1 - 2 p|``, so learning parities by
    gradient gets hard fast as the number of inputs an output depends on grows (see the
    recovery table in the GF(2) guide, from ``benchmarks/gf2_recovery.py``: measured, not
    promised). When the data are noise-free and exactly linear, [`snapset.gf2.solve`][]
    recovers ``W`` exactly from about ``in_features`` samples, instantly: use it instead. The
    training forward takes O(batch x out x in) time like ``nn.Linear``; inputs must be exactly 0
    or 1 in both modes.

    Args:
        in_features: inputs per sample.
        out_features: output bits per sample.
        init_prob: initial probability of each weight being 1 (logits start at its logit
            plus a little noise, to break ties). Small values make the initial parities
            short, which keeps early gradients from vanishing; the default ``1 / in_features``
            (capped at 0.25) starts every output near one input.

    Examples:
        >>> import torch, snapset.torch as st
        >>> layer = st.GF2Linear(3, 1).eval()
        >>> with torch.no_grad():
        ...     _ = layer.logits.copy_(torch.tensor([[5.0, 5.0, -5.0]]))  # W = [1, 1, 0]
        >>> layer.weight.tolist()
        [[1.0, 1.0, 0.0]]
        >>> layer(torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])).tolist()  # x1 xor x2
        [[1.0], [0.0]]
        >>> p = layer.train()(torch.tensor([[1.0, 0.0, 0.0]]))  # P(y=1) = p_11 = sigmoid(5)
        >>> round(p.item(), 4)
        0.9933
    """

    weight: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init_prob: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"Invalid in_features: {in_features} (must be >= 1)")
        if out_features < 1:
            raise ValueError(f"Invalid out_features: {out_features} (must be >= 1)")
        if init_prob is None:
            init_prob = min(0.25, 1.0 / in_features)
        if not 0.0 < init_prob < 1.0:
            raise ValueError(f"Invalid init_prob: {init_prob} (must be strictly between 0 and 1)")
        self.in_features = in_features
        self.out_features = out_features
        self.init_prob = init_prob
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, device=device, dtype=dtype)
        )
        register(self, "weight", GF2Weight(self.weight))
        self.reset_parameters()

    @classmethod
    def from_samples(cls, x: Tensor, y: Tensor, **options: Any) -> GF2Linear:
        """A layer whose weight is the GF(2)-linear map that best fits the samples ``x -> y``
        ([`snapset.gf2.lstsq`][]), each weight at probability 0.95 of its value: an algebraic
        start to train end to end from. Options: ``probability``, ``seed``, ``budget``,
        ``miss``, ``device``, ``dtype``.

        Examples:
            >>> import torch, snapset.torch as st
            >>> x = torch.randint(0, 2, (256, 16), generator=torch.Generator().manual_seed(0))
            >>> y = x[:, :3].sum(dim=1, keepdim=True) % 2     # x0 xor x1 xor x2
            >>> st.GF2Linear.from_samples(x, y).weight[0, :4].tolist()
            [1.0, 1.0, 1.0, 0.0]
        """
        return from_samples(cls, x, y, **options)

    @property
    def logits(self) -> nn.Parameter:
        """The trainable logits ``l`` (the weight's stored tensor); gone once hardened."""
        return stored_tensor(self, "weight")

    def reset_parameters(self) -> None:
        """Logits at ``logit(init_prob)`` plus noise of standard deviation 0.1."""
        if self.is_hard:
            raise RuntimeError("GF2Linear.reset_parameters: the layer was hardened (no logits)")
        with torch.no_grad():
            self.logits.normal_(math.log(self.init_prob / (1 - self.init_prob)), 0.1)

    @property
    def is_hard(self) -> bool:
        """Whether ``harden_`` has run (the layer has no logits any more)."""
        return not parametrize.is_parametrized(self, "weight")

    @property
    def probs(self) -> Tensor:
        """``p = sigmoid(logits)``, the probability of each weight being 1 (differentiable)."""
        if self.is_hard:
            return self.weight
        return torch.sigmoid(self.logits)

    def hard_weight(self) -> Tensor:
        """The exact {0, 1} weight, ``p >= 1/2``, as a new tensor without gradient."""
        return self.weight.clone()

    def harden_(self) -> GF2Linear:
        """Replace the logits by the hard weight, in place, for good; returns the layer.

        This is [`snapset.torch.harden_`][] on the layer: afterwards ``weight``
        is a buffer holding exact 0s and 1s, nothing is trainable, and both modes compute the exact
        GF(2) product.
        """
        return harden_(self)

    def log_odds(self, x: Tensor) -> Tensor:
        """``log P(y=1) - log P(y=0)`` for each output bit, under Bernoulli weights.

        The numerically stable thing to train on:
        ``F.binary_cross_entropy_with_logits(layer.log_odds(x), y)``.
        """
        if self.is_hard:
            raise RuntimeError(
                "GF2Linear.log_odds: the layer was hardened; there is nothing left to train and "
                "forward(x) is the exact GF(2) product"
            )
        _check_bits(x)
        flat = x.reshape(-1, self.in_features).to(self.logits.dtype)
        return parity_log_odds(flat, self.logits).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.is_hard:
            return torch.sigmoid(self.log_odds(x))
        _check_bits(x)
        flat = x.reshape(-1, self.in_features)
        weight = self.weight.T.to(x.dtype)
        return gf2.matmul(flat, weight).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        hard = ", hard" if self.is_hard else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{hard}"

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Everything incoming is checked before anything changes: a refused load keeps the
        # trained logits.
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, Tensor):
            bits = weight.double()
            outside = (bits != 0) & (bits != 1)
            if bool(outside.any()):
                raise outside_set_error(
                    f"The state for GF2Linear weight '{prefix}weight'",
                    Binary(),
                    int(outside.sum()),
                    float(bits[outside][0]),
                    "Load the state of a hardened GF2Linear (a weight of exact 0s and 1s); "
                    "nothing was loaded into this layer.",
                )
        if not self.is_hard:
            _check_loads(
                self,
                state_dict,
                prefix,
                local_metadata,
                strict,
                missing_keys,
                unexpected_keys,
                error_msgs,
            )
            # A hardened layer's state (key "weight") loads into a fresh layer by hardening it.
            if weight is not None:
                self.harden_()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
