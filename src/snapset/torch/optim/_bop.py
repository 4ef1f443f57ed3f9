"""Bop, the latent-free flip optimizer, generalised to any ordered value set."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard, TypeVar, cast

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT, _default_to_fused_or_foreach

from ..._kernels import flip_step
from ..._sets import ValueSet
from ..._spec import (
    BOP2_DEFAULTS,
    BOP_DEFAULTS,
    MOMENTUM_RESETS,
    THRESHOLD_MODES,
    check_bop_options,
)
from .._constrain import constraint_of
from .._functional import kernel_arrays
from .._methods import Constraint

__all__ = ["MOMENTUM_RESETS", "THRESHOLD_MODES", "Bop", "Bop2ndOrder", "bop"]

T = TypeVar("T")

# Sharded tensors (FSDP2's parameters and gradients): Bop steps their local shards.
_SHARDED: tuple[type[Tensor], ...] = ()
if torch.distributed.is_available():  # no cost: torch.compiler, used below, imports it
    from torch.distributed.tensor import DTensor

    _SHARDED = (DTensor,)


class Bop(Optimizer):
    def __init__(
        self,
        params: ParamsT,
        threshold: float = BOP_DEFAULTS["threshold"],
        gamma: float = BOP_DEFAULTS["gamma"],
        *,
        threshold_mode: str = BOP_DEFAULTS["threshold_mode"],
        momentum_reset: str = BOP_DEFAULTS["momentum_reset"],
        sigma: float = BOP_DEFAULTS["sigma"],
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "threshold": threshold,
            "gamma": gamma,
            "threshold_mode": threshold_mode,
            "momentum_reset": momentum_reset,
            "sigma": sigma,
            "foreach": foreach,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)
        # Reused room for each step's directions: a fresh tensor of a large parameter's size
        # would cost page faults on every step (on the CPU, several times the arithmetic).
        self._scratch: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of flip parameters; refuse anything Bop cannot move through a set."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_hyperparameters(group)
            index = len(self.param_groups) - 1
            for position, param in enumerate(group["params"]):
                where = f"parameter {position} of param group {index}"
                _owning_constraint(param, where).check(_local(param))
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise
        group.setdefault("nonfinite_steps", 0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("threshold_mode", BOP_DEFAULTS["threshold_mode"])
            group.setdefault("momentum_reset", BOP_DEFAULTS["momentum_reset"])
            group.setdefault("sigma", BOP_DEFAULTS["sigma"])
            group.setdefault("foreach", None)
            group.setdefault("nonfinite_steps", 0)

    def _scratch_like(self, param: Tensor, slot: int = 0) -> Tensor:
        key = (param.device, param.dtype, slot)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < param.numel():
            buffer = self._scratch[key] = torch.empty(
                param.numel(), dtype=param.dtype, device=param.device
            )
        return buffer[: param.numel()].view(param.shape)

    @property
    def nonfinite_steps(self) -> int:
        """How many steps were skipped because a gradient held NaN or infinity."""
        return max((int(group["nonfinite_steps"]) for group in self.param_groups), default=0)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        momentums: list[Tensor],
        second_moments: list[Tensor],
        grad_sqs: list[Tensor],
        steps: list[Tensor],
        values: list[ValueSet],
        constraints: list[Constraint],
    ) -> None:
        # torch's optimizers' signature (lists to fill, nothing returned): torch.compile may
        # run a method of this name eagerly, and then needs exactly that shape.
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("Bop does not support sparse gradients")
            constraint = _owning_constraint(param, f"a parameter of shape {tuple(param.shape)}")
            state = self.state[param]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["grad_sq"] = torch.zeros((), dtype=_stat_dtype(param), device=param.device)
            if group["threshold_mode"] == "second_moment":
                if "second_moment" not in state:  # also when a schedule switched the mode
                    state["second_moment"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format
                    )
                second_moments.append(state["second_moment"])
            params.append(param)
            grads.append(param.grad)
            momentums.append(state["momentum"])
            grad_sqs.append(state["grad_sq"])
            steps.append(state["step"])
            values.append(constraint.values)
            constraints.append(constraint)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; skip it whole if a gradient is not finite.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns
                the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _check_hyperparameters(group)  # a schedule may have set them
        works = [_Work([], [], [], [], [], [], [], []) for _ in self.param_groups]
        for group, work in zip(self.param_groups, works, strict=True):
            self._init_group(group, *work)
        eager = not torch.compiler.is_compiling()
        if eager:
            # Never step a value that something else put off the set (a load, an assignment,
            # another optimizer): O(1) per tensor unless one did.
            for work in works:
                for param, constraint in zip(work.params, work.constraints, strict=True):
                    constraint.check(_local(param))
        norms = [grad_norms(work.grads) for work in works]
        bad = [
            param
            for work, group_norms in zip(works, norms, strict=True)
            for param, norm in zip(work.params, group_norms, strict=True)
            if not bool(norm.isfinite())
        ]
        if bad:
            for group in self.param_groups:
                group["nonfinite_steps"] += 1
            shapes = ", ".join(f"shape {tuple(p.shape)}" for p in bad[:3])
            warnings.warn(
                f"Bop skipped this step: the gradient of {len(bad)} parameter(s) ({shapes}"
                f"{', ...' if len(bad) > 3 else ''}) holds NaN or infinity. No entry moved and "
                f"no momentum changed ({self.nonfinite_steps} steps skipped so far, see "
                "Bop.nonfinite_steps). Look for the cause in the loss or in the other "
                "optimizer's learning rate.",
                RuntimeWarning,
                stacklevel=2,
            )
            return loss
        for group, work, group_norms in zip(self.param_groups, works, norms, strict=True):
            bop(
                work.params,
                work.grads,
                work.momentums,
                work.values,
                work.grad_sqs,
                work.steps,
                group_norms,
                [self._scratch_like(_local(p)) for p in work.params],
                foreach=group["foreach"],
                gamma=group["gamma"],
                threshold=group["threshold"],
                threshold_mode=group["threshold_mode"],
                momentum_reset=group["momentum_reset"],
                second_moments=work.second_moments or None,
                sigma=group["sigma"],
                thresholds=[self._scratch_like(_local(p), 1) for p in work.params]
                if work.second_moments
                else None,
            )
            if eager:  # Bop's own writes are members: record them, so the next check is O(1)
                for param, constraint in zip(work.params, work.constraints, strict=True):
                    constraint.trust(_local(param))
        return loss


Bop.__doc__ = r"""Bop, the flip optimizer, for a parameter over any ordered value set.

Each entry ``w`` of a flip-constrained parameter (``constrain(..., method="flip")``) is an
exact value ``v_i`` of its sorted set ``v_0 < v_1 < ... < v_{k-1}``; there is no latent weight.
Bop keeps an exponential moving average ``m`` of the gradient and moves ``w`` one level when
``m`` is strong enough:

```text
input: gamma, threshold tau, w_0 = v_{i_0} (the params), m_0 = 0, s_0 = 0
for t = 1, 2, ...
    g_t     <- the gradient of f_t at w_{t-1}
    if g_t is not finite anywhere: skip the step (nothing changes)
    m_t     <- (1 - gamma) m_{t-1} + gamma g_t
    s_t     <- (1 - gamma) s_{t-1} + gamma mean(g_t^2)          (one number per tensor)
    theta_t <- tau (abs)   or   tau sqrt(s_t / (1 - (1 - gamma)^t)) (rel)
    i_t     <- max(i_{t-1} - 1, 0)        where m_t > theta_t
               min(i_{t-1} + 1, k - 1)    where m_t < -theta_t
               i_{t-1}                    elsewhere;                w_t <- v_{i_t}
    m_t     <- 0 where the entry moved and the reset rule says so
return w_t
```

A positive average gradient means the loss wants the entry smaller, so it steps one level
down; at either end of the set it stays. For ``{-1, +1}`` this is exactly the Bop of Helwegen
et al. (flip when ``w * m > threshold``); for ``{0, 1}`` it is "a 0 becomes a 1 when the loss
wants the entry to grow, a 1 becomes a 0 when it wants it to shrink".

What happens to ``m`` after a move (``momentum_reset``):

* ``"interior"`` (default): an entry that lands on an interior value of the set restarts
  from ``m = 0``, one that lands on an end keeps its ``m``. A move to an end cannot be
  repeated, so keeping ``m`` there gives Bop's hysteresis (a flip back needs the average to
  cross to the other side of ``-threshold``); in the interior, the stale ``m`` would slide the
  entry on by one level a step, so each further level needs fresh evidence. For two-value
  sets every move lands on an end, and this *is* the paper's Bop.
* ``"never"``: ``m`` is never reset, the paper's rule taken literally; an entry of a
  ``k``-value set slides one level a step for as long as ``|m|`` exceeds the threshold.
* ``"always"``: every moved entry restarts from ``m = 0``.

``threshold_mode="rel"`` measures ``m`` against the root mean square of the tensor's
gradient (``s`` above, a bias-corrected running mean with rate ``gamma``) instead of in the
gradient's units, so the same ``threshold`` (a fraction such as 0.05) suits any loss scale:
multiplying the loss by a power of two leaves the whole run unchanged, bit for bit.

A step whose gradients hold NaN or infinity anywhere (or are so large that their squared
norm overflows) is skipped whole, as ``torch.amp.GradScaler`` does: no entry moves, no
momentum changes, a ``RuntimeWarning`` says which parameters, and ``nonfinite_steps``
counts the skips.

Sharded parameters (``DTensor``s, as FSDP2's ``fully_shard`` makes them; call
[`snapset.torch.param_groups`][] after ``fully_shard``) train as the whole tensors would: each
rank moves the entries of its own shard, and the gradient norms (the RMS of ``"rel"``, the
finiteness test) are the whole tensors', reduced across ranks with one all-reduce per step,
so every rank skips or steps alike.

Bop refuses, with a ``ValueError``, parameters that are not flip-constrained, and with a
[`snapset.OutsideSetError`][] (a ``ValueError``) parameters that hold values outside their
set, when they are added and before each step (a ``load_state_dict`` or an assignment may have
put them there since); it never steps such a value. ``state_dict`` / ``load_state_dict``
resume a run bit for bit. Hyperparameters live in each param group; schedule them with
[`snapset.torch.optim.HyperparameterSchedule`][].

Args:
    params (iterable): flip parameters or dicts defining param groups (for a mixed model,
        ``snapset.torch.param_groups(model).flip``).
    threshold (float, optional): how far ``|m|`` must exceed 0 before an entry moves, in
        the gradient's units (``"abs"``) or as a fraction of its RMS (``"rel"``)
        (default: 1e-8, larq's choice after tuning).
    gamma (float, optional): adaptivity rate of the averages, in ``(0, 1]``; larger adapts
        faster and noisier, like a learning rate (default: 1e-4; small problems want 1e-3
        to 1e-1).
    threshold_mode (str, optional): ``"abs"`` or ``"rel"`` (default: ``"abs"``).
    momentum_reset (str, optional): ``"interior"``, ``"never"`` or ``"always"``
        (default: ``"interior"``).
    foreach (bool, optional): use the multi-tensor (``torch._foreach``) path for the
        averages; by default as torch decides for its own optimizers (on CUDA, yes). Both
        paths give the same result, bit for bit.

Examples:
    >>> import torch, snapset, snapset.torch as st
    >>> layer = st.constrain(torch.nn.Linear(4, 3), "weight", snapset.Binary(), "flip")
    >>> opt = st.Bop([layer.weight], threshold=1e-3, gamma=0.5)
    >>> layer.weight.grad = torch.full((3, 4), -0.01)  # the loss wants every entry to grow
    >>> opt.step()
    >>> layer.weight.tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]

Reference: Helwegen et al., NeurIPS 2019, "Latent Weights Do Not Exist: Rethinking
Binarized Neural Network Optimization".
"""


class Bop2ndOrder(Bop):
    r"""The second-moment Bop: an entry moves when its average gradient is a large enough
    fraction of its own gradient's RMS; one setting suits any loss scale and any problem.

    Bop's move rule over any ordered set (see [`snapset.torch.Bop`][]), with each entry's
    threshold measured in its own gradient's units, as Adam divides by its second moment:

    ```text
    m_t <- (1 - gamma) m_{t-1} + gamma g_t
    v_t <- (1 - sigma) v_{t-1} + sigma g_t^2
    move one level against sign(m_t) where |m_t| > threshold sqrt(v_t / (1 - (1 - sigma)^t))
    ```

    ``|m| / sqrt(v)`` lies in ``[0, 1]`` when ``sigma = gamma`` (an average's magnitude never
    exceeds its RMS); it is near 1 for an entry whose gradient keeps its sign and near 0 for one
    whose gradient is noise. So ``threshold`` is a fraction, the same for every layer, loss
    and batch size: multiplying the loss by a power of two leaves a run unchanged, bit for bit.
    ``m`` is not bias-corrected, so it builds up over about ``1 / gamma`` steps before anything
    moves; ``v`` is, so the threshold is right from the first step.

    This is ``Bop(..., threshold_mode="second_moment")`` with defaults measured to work across
    problems (``snapset._spec.BOP2_DEFAULTS``; see the docs' page on flip training); everything
    else (momentum resets, skipped non-finite steps, sharded parameters, ``state_dict``) is
    Bop's. Its state holds ``second_moment`` (one number an entry) beside Bop's.

    Decay both rates towards the end of training, as a learning rate decays:
    ``HyperparameterSchedule(opt, ["gamma", "sigma"], lambda t: max(1 - t / total, 0.01))``.
    A scale-free test takes even a tiny gradient as evidence when it keeps its sign, so without
    the decay an entry whose gradient at the solution is small but steady (a noisy target)
    can still flip for a step now and then.

    Args:
        params (iterable): flip parameters or dicts defining param groups.
        threshold (float, optional): the fraction of its gradient's RMS that an entry's
            average gradient must exceed to move (default: 0.04).
        gamma (float, optional): rate of the gradient's average (default: 1e-2).
        sigma (float, optional): rate of the second moment (default: 1e-2).
        momentum_reset (str, optional): as in ``Bop`` (default: ``"always"``: every move
            needs fresh evidence, which measured 0.4 to 0.8 points better on two-value sets).
        foreach (bool, optional): as in ``Bop``.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> _ = torch.manual_seed(0)
        >>> layer = st.constrain(torch.nn.Linear(4, 3), "weight", snapset.Ternary(), "flip")
        >>> opt = st.Bop2ndOrder([layer.weight])  # threshold 0.04, gamma = sigma = 0.01
        >>> moves = []
        >>> for t in range(1, 31):  # a steady gradient, of any size: "make every entry smaller"
        ...     layer.weight.grad = torch.full((3, 4), 1e-6)
        ...     before = layer.weight.clone()
        ...     opt.step()
        ...     if not torch.equal(before, layer.weight):
        ...         moves.append(t)
        >>> moves  # |m| / sqrt(v) = 1 - 0.99^t passes 0.04 at t = 5; each move resets m
        [5, 10]
        >>> layer.weight.unique().tolist()
        [-1.0]

    Reference: Suarez-Ramirez, Gonzalez-Mendoza, Chang, Marin-Hernandez, CVPR Workshops 2021,
    "A Bop and Beyond: A Second Order Optimizer for Binarized Neural Networks".
    """

    def __init__(
        self,
        params: ParamsT,
        threshold: float = BOP2_DEFAULTS["threshold"],
        gamma: float = BOP2_DEFAULTS["gamma"],
        sigma: float = BOP2_DEFAULTS["sigma"],
        *,
        momentum_reset: str = BOP2_DEFAULTS["momentum_reset"],
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            threshold,
            gamma,
            threshold_mode="second_moment",
            momentum_reset=momentum_reset,
            sigma=sigma,
            foreach=foreach,
        )


def bop(
    params: list[Tensor],
    grads: list[Tensor],
    momentums: list[Tensor],
    values: list[ValueSet],
    grad_sqs: list[Tensor],
    steps: list[Tensor],
    norms: list[Tensor] | None = None,
    scratch: list[Tensor] | None = None,
    foreach: bool | None = None,
    *,
    gamma: float,
    threshold: float,
    threshold_mode: str = BOP_DEFAULTS["threshold_mode"],
    momentum_reset: str = BOP_DEFAULTS["momentum_reset"],
    second_moments: list[Tensor] | None = None,
    sigma: float = BOP_DEFAULTS["sigma"],
    thresholds: list[Tensor] | None = None,
) -> None:
    r"""Functional form of ``Bop``: one step, in place, on finite gradients.

    ``values[i]`` is the value set of ``params[i]``, whose entries are members of it;
    ``momentums``, ``grad_sqs`` (0-dim, float32 or wider) and ``steps`` (0-dim, on the CPU)
    are the state that this call updates. ``norms`` are the gradients' L2 norms
    (``grad_norms``), computed here when not given; ``scratch[i]``, a tensor shaped like
    ``params[i]`` that may be shared between parameters, holds the directions (allocated here
    when not given). Checking that the gradients are
    finite is the caller's job (``Bop`` skips the whole step when one is not). Sharded
    tensors (``DTensor``s) move shard by shard, by the norms of the whole gradients.
    ``threshold_mode="second_moment"`` needs ``second_moments`` (zeros at the start, updated
    here at rate ``sigma``); ``thresholds[i]``, like ``scratch[i]``, is room for its test.

    Examples:
        >>> import torch, snapset
        >>> from snapset.torch.optim import bop
        >>> w, g = torch.tensor([-1.0, 1.0, -1.0, 1.0]), torch.tensor([-0.5, -0.5, 0.5, 0.5])
        >>> m, s, t = torch.zeros(4), torch.zeros(()), torch.zeros(())
        >>> bop([w], [g], [m], [snapset.Sign()], [s], [t], gamma=0.5, threshold=0.1)
        >>> w.tolist(), m.tolist()
        ([1.0, 1.0, -1.0, -1.0], [-0.25, -0.25, 0.25, 0.25])
    """
    check_bop_options(threshold, gamma, threshold_mode, momentum_reset, sigma)
    if not params:
        return
    if threshold_mode == "second_moment" and second_moments is None:
        raise ValueError(
            "threshold_mode='second_moment' needs second_moments: one tensor shaped like each "
            "parameter (zeros at the start), which this call updates"
        )
    if norms is None:
        norms = grad_norms(grads)
    # The mean square of each gradient over the whole tensor (a DTensor's numel is the whole
    # tensor's), then the threshold theta of each tensor.
    squares = [n.square().div_(g.numel()) for n, g in zip(norms, grads, strict=True)]
    # Every other operation is elementwise: each rank moves the entries it holds.
    params, grads, momentums = ([_local(t) for t in ts] for ts in (params, grads, momentums))
    second_moments = [_local(t) for t in second_moments or ()]
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(grad_sqs, squares, gamma)
    thetas: list[float | Tensor] = [threshold] * len(params)  # "second_moment": the fraction
    if threshold_mode == "rel":
        corrections = [1.0 - (1.0 - gamma) ** float(step) for step in steps]
        thetas = [
            s.div(c).sqrt_().mul_(threshold) for s, c in zip(grad_sqs, corrections, strict=True)
        ]
    seconds: list[Tensor | None] = list(second_moments) or [None] * len(params)
    corrections = [1.0 - (1.0 - sigma) ** float(step) for step in steps]
    # On the CPU, one compiled pass a parameter; the rest goes through torch's operations.
    rest = [
        i
        for i in range(len(params))
        if not _fused_step(
            params[i], momentums[i], grads[i], seconds[i], values[i], thetas[i], corrections[i],
            gamma=gamma, sigma=sigma, momentum_reset=momentum_reset,
        )
    ]  # fmt: skip
    if not rest:
        return
    params, grads, momentums = _kept(params, rest), _kept(grads, rest), _kept(momentums, rest)
    values, thetas, seconds = _kept(values, rest), _kept(thetas, rest), _kept(seconds, rest)
    corrections = _kept(corrections, rest)
    second_moments = [t for t in seconds if t is not None]
    if foreach:
        torch._foreach_lerp_(momentums, grads, gamma)
        if second_moments:  # Adam's form: v <- (1 - sigma) v + sigma g^2
            torch._foreach_mul_(second_moments, 1.0 - sigma)
            torch._foreach_addcmul_(second_moments, grads, grads, value=sigma)
    else:
        for momentum, grad in zip(momentums, grads, strict=True):
            momentum.lerp_(grad, gamma)
        for moment, grad in zip(second_moments, grads if second_moments else (), strict=True):
            moment.mul_(1.0 - sigma).addcmul_(grad, grad, value=sigma)
    outs: list[Tensor | None] = [None] * len(rest)
    rooms: list[Tensor | None] = [None] * len(rest)
    # Compiled code plans its own memory (and AOT autograd refuses the shared scratch's
    # aliased views as inputs that are written to).
    if not torch.compiler.is_compiling():
        outs = [scratch[i] for i in rest] if scratch is not None else outs
        rooms = [thresholds[i] for i in rest] if thresholds is not None else rooms
    for param, momentum, second, value_set, theta, correction, out, room in zip(
        params, momentums, seconds, values, thetas, corrections, outs, rooms, strict=True
    ):
        if second is None:
            direction = _direction(momentum, theta, out)
        else:  # the scratch is shared between parameters: each one's is made when used
            direction = _entry_direction(momentum, second, correction, threshold, out, room)
        _move(param, momentum, direction, value_set, momentum_reset)


def grad_norms(grads: list[Tensor]) -> list[Tensor]:
    """L2 norm of each gradient, in float32 or wider (NaN or inf when it is not finite).

    The norm of a sharded gradient (a ``DTensor``, as under FSDP2's ``fully_shard``) is the
    whole tensor's, the same on every rank: ``sqrt`` of the sum of the shards' squared norms,
    one all-reduce for all the gradients that share a mesh and a layout.

    Examples:
        >>> import torch
        >>> from snapset.torch.optim import grad_norms
        >>> grad_norms([torch.tensor([3.0, 4.0]), torch.tensor([1.0], dtype=torch.float64)])
        [tensor(5.), tensor(1., dtype=torch.float64)]
    """
    norms: list[Tensor | None] = [None] * len(grads)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, grad in enumerate(grads):
        by_dtype.setdefault(_stat_dtype(grad), []).append(i)
    for dtype, indices in by_dtype.items():
        for i, norm in zip(
            indices, torch._foreach_norm([grads[i] for i in indices], 2, dtype=dtype), strict=True
        ):
            norms[i] = norm
    return _whole([n for n in norms if n is not None])


def _whole(norms: list[Tensor]) -> list[Tensor]:
    """Plain tensors of the whole tensors' norms, for norms that DTensor left partial."""
    by_layout: dict[tuple[Any, ...], list[int]] = {}
    for i, norm in enumerate(norms):
        if _is_sharded(norm):
            by_layout.setdefault((norm.device_mesh, norm.placements), []).append(i)
    for indices in by_layout.values():
        # A stack of partial norms stays partial: one collective reduces them all.
        whole = cast("DTensor", torch.stack([norms[i] for i in indices])).full_tensor()
        for i, norm in zip(indices, whole.unbind(), strict=True):
            norms[i] = norm
    return norms


# ----- the arithmetic ----------------------------------------------------------------------
#
# Every operation is elementwise, so the foreach and single-tensor paths give the same bits.


def _direction(momentum: Tensor, theta: float | Tensor, out: Tensor | None) -> Tensor:
    """``sign(clamp(m, -theta, theta) - m)``: +1 (a level up) where ``m < -theta``, -1 (a
    level down) where ``m > theta``, 0 elsewhere."""
    if isinstance(theta, Tensor):  # two calls only because torch's stubs type them apart
        bounded = torch.clamp(momentum, -theta, theta, out=out)
    else:
        bounded = torch.clamp(momentum, -theta, theta, out=out)
    return bounded.sub_(momentum).sign_()


def _kept(items: list[T], indices: list[int]) -> list[T]:
    return [items[i] for i in indices]


def _entry_direction(
    momentum: Tensor,
    second_moment: Tensor,
    correction: float,
    threshold: float,
    out: Tensor | None,
    room: Tensor | None,
) -> Tensor:
    """``-sign(m)`` where ``m * m > (v / correction) * threshold**2``, else 0: the second-moment
    test ``|m| > threshold * sqrt(v / correction)`` in squares (exactly rounded ops, so the fused
    CPU kernel decides alike), in float32 or wider."""
    stat = _stat_dtype(momentum)
    m = momentum.to(stat)
    if m is not momentum:  # a half-precision parameter: computed in float32, then cast
        out = room = None
    bar = torch.div(second_moment.to(stat), correction, out=room).mul_(threshold * threshold)
    passed = torch.mul(m, m, out=out).gt_(bar)
    return torch.copysign(passed, m, out=passed).neg_().to(momentum.dtype)


def _fused_step(
    param: Tensor,
    momentum: Tensor,
    grad: Tensor,
    second: Tensor | None,
    values: ValueSet,
    theta: float | Tensor,
    correction: float,
    *,
    gamma: float,
    sigma: float,
    momentum_reset: str,
) -> bool:
    """The whole step of one CPU parameter in one compiled pass (``snapset._kernels``): what
    the torch operations of ``bop`` do to it, bit for bit, split between torch's threads.
    False, having done nothing, where it does not apply (another device or dtype, a compiled
    step, no numba)."""
    flat = kernel_arrays(param, momentum, grad, *([second] if second is not None else []))
    if flat is None:
        return False
    table, midpoints = _numpy_tables(values, param.dtype)
    moved = flip_step(
        flat[0],
        flat[1],
        flat[2],
        flat[3] if second is not None else None,
        gamma=gamma,
        sigma=sigma,
        correction=correction,
        threshold=float(theta),
        stride=_plan(values, param.dtype).stride,
        table=table,
        midpoints=midpoints,
        momentum_reset=momentum_reset,
        threads=torch.get_num_threads(),
    )
    if moved is None:
        return False
    if moved:
        # numpy's writes pass torch's version counter by, which autograd and the constraint's
        # trusted key read: an in-place op on one entry (a view shares the counter) bumps it.
        param.detach().view(-1)[:1].mul_(1)
    return True


@functools.lru_cache(maxsize=256)
def _numpy_tables(values: ValueSet, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    plan = _plan(values, dtype)
    numpy_dtype = np.float32 if dtype == torch.float32 else np.float64
    return np.array(plan.table, numpy_dtype), np.array(plan.midpoints, numpy_dtype)


class _Plan(NamedTuple):
    """How to move an entry one level in a given set and dtype."""

    #: The values and the midpoints between them as the dtype holds them (the core's tables).
    table: tuple[float, ...]
    midpoints: tuple[float, ...]
    #: Added times the direction, then clamped to the ends of the table; None: look the index up.
    stride: float | None


_PLANS: dict[tuple[ValueSet, torch.dtype], _Plan] = {}


def _cached_plan(values: ValueSet, dtype: torch.dtype) -> _Plan:
    plan = _PLANS.get((values, dtype))
    if plan is None:
        plan = _PLANS[(values, dtype)] = _new_plan(values, dtype)
    return plan


# torch.compile runs this pure function once and keeps its result, instead of tracing float()
# calls that would each break the graph. (A dict, not functools.lru_cache, on which dynamo
# warns.)
_plan: Callable[[ValueSet, torch.dtype], _Plan] = torch.compiler.assume_constant_result(
    _cached_plan
)


def _new_plan(values: ValueSet, dtype: torch.dtype) -> _Plan:
    tables = values.tables(str(dtype))
    held = (tuple(tables.values.tolist()), tuple(tables.midpoints.tolist()))
    table = torch.from_numpy(tables.values).to(dtype)  # exact: the numbers are dtype's own
    low, high = float(table[0]), float(table[-1])
    if len(values) == 2:
        # Overshoot by twice the gap; the clamp lands exactly on the other value.
        stride = torch.tensor(2.0 * (high - low), dtype=dtype)
        return _Plan(*held, float(stride) if bool(stride.isfinite()) else None)
    gap = table[1] - table[0]
    exact = torch.equal(table[:-1] + gap, table[1:]) and torch.equal(table[1:] - gap, table[:-1])
    return _Plan(*held, float(gap) if exact else None)


def _tables(values: ValueSet, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The values and the midpoints between them, in ``dtype`` on ``device``."""
    if torch.compiler.is_compiling():
        return _new_tables(values, dtype, device)  # constants of the compiled graph
    return _cached_tables(values, dtype, device)


def _new_tables(
    values: ValueSet, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    plan = _plan(values, dtype)
    table = torch.tensor(plan.table, dtype=dtype, device=device)
    midpoints = torch.tensor(plan.midpoints, dtype=dtype, device=device)
    return table, midpoints


_cached_tables = functools.lru_cache(maxsize=256)(_new_tables)


def _move(
    param: Tensor, momentum: Tensor, direction: Tensor, values: ValueSet, momentum_reset: str
) -> None:
    """Move each entry of ``param`` one level along ``direction`` (in place); reset momenta."""
    k, plan = len(values), _plan(values, param.dtype)
    if plan.stride is not None:
        # Evenly spaced sets (two values, ternary, 0..n): one exact add and a clamp.
        before = param.clone() if momentum_reset == "always" else None
        param.add_(direction, alpha=plan.stride).clamp_(plan.table[0], plan.table[-1])
        if before is not None:
            momentum.masked_fill_(param.ne(before), 0.0)
        elif momentum_reset == "interior" and k > 2:
            # A nonzero direction that ends inside the range did move (a blocked one is at an end).
            momentum.masked_fill_(
                direction.ne(0) & param.gt(plan.table[0]) & param.lt(plan.table[-1]), 0.0
            )
        return
    table, midpoints = _tables(values, param.dtype, param.device)
    if k <= 16:
        index = param.gt(midpoints[0]).int()
        for j in range(1, k - 1):
            index.add_(param.gt(midpoints[j]))
    else:
        index = torch.bucketize(param, midpoints, out_int32=True)
    moved_to = (index + direction.int()).clamp_(0, k - 1)
    param.copy_(table[moved_to])
    if momentum_reset == "always":
        momentum.masked_fill_(moved_to.ne(index), 0.0)
    elif momentum_reset == "interior":
        momentum.masked_fill_(moved_to.ne(index) & moved_to.gt(0) & moved_to.lt(k - 1), 0.0)


# ----- checks ------------------------------------------------------------------------------


class _Work(NamedTuple):
    params: list[Tensor]
    grads: list[Tensor]
    momentums: list[Tensor]
    second_moments: list[Tensor]
    grad_sqs: list[Tensor]
    steps: list[Tensor]
    values: list[ValueSet]
    constraints: list[Constraint]


def _stat_dtype(tensor: Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def _check_hyperparameters(group: dict[str, Any]) -> None:
    check_bop_options(
        group["threshold"],
        group["gamma"],
        group["threshold_mode"],
        group["momentum_reset"],
        group["sigma"],
    )


def _owning_constraint(param: Tensor, where: str) -> Constraint:
    constraint = constraint_of(param)
    if constraint is None or constraint.method != "flip":
        raise ValueError(
            f"Bop cannot train {where}: it is not flip-constrained, so Bop does not know which "
            "values it may take. Constrain it with snapset.torch.constrain(module, name, "
            "values, method='flip'), or give it to another optimizer: "
            "groups = snapset.torch.param_groups(model); Bop(groups.flip); "
            "Adam(groups.latent + groups.other). (A copied or unpickled model, and one that "
            "fully_shard wrapped, has new parameters: call snapset.torch.param_groups(model) "
            "once, after fully_shard, to register them.)"
        )
    return constraint


def _local(tensor: Tensor) -> Tensor:
    """The entries this rank holds: a DTensor's local shard (a view, so writes to it and its
    ``_version`` are the DTensor's), any other tensor itself."""
    return tensor.to_local() if _is_sharded(tensor) else tensor


def _is_sharded(tensor: Tensor) -> TypeGuard[DTensor]:
    return isinstance(tensor, _SHARDED)
