"""Bop, the latent-free flip optimizer, generalised to any ordered value set."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT, _default_to_fused_or_foreach

from ..._sets import ValueSet
from ..._spec import BOP_DEFAULTS, MOMENTUM_RESETS, THRESHOLD_MODES, check_bop_options
from .._constrain import constraint_of
from .._methods import Constraint

__all__ = ["MOMENTUM_RESETS", "THRESHOLD_MODES", "Bop", "bop"]

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
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "threshold": threshold,
            "gamma": gamma,
            "threshold_mode": threshold_mode,
            "momentum_reset": momentum_reset,
            "foreach": foreach,
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)
        # Reused room for each step's directions: a fresh tensor of a large parameter's size
        # would cost page faults on every step (on the CPU, several times the arithmetic).
        self._scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}

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
            group.setdefault("foreach", None)
            group.setdefault("nonfinite_steps", 0)

    def _scratch_like(self, param: Tensor) -> Tensor:
        key = (param.device, param.dtype)
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
        works = [_Work([], [], [], [], [], [], []) for _ in self.param_groups]
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

    Examples:
        >>> import torch, snapset
        >>> from snapset.torch.optim import bop
        >>> w, g = torch.tensor([-1.0, 1.0, -1.0, 1.0]), torch.tensor([-0.5, -0.5, 0.5, 0.5])
        >>> m, s, t = torch.zeros(4), torch.zeros(()), torch.zeros(())
        >>> bop([w], [g], [m], [snapset.Sign()], [s], [t], gamma=0.5, threshold=0.1)
        >>> w.tolist(), m.tolist()
        ([1.0, 1.0, -1.0, -1.0], [-0.25, -0.25, 0.25, 0.25])
    """
    check_bop_options(threshold, gamma, threshold_mode, momentum_reset)
    if not params:
        return
    if norms is None:
        norms = grad_norms(grads)
    # The mean square of each gradient over the whole tensor (a DTensor's numel is the whole
    # tensor's), then the threshold theta of each tensor.
    squares = [n.square().div_(g.numel()) for n, g in zip(norms, grads, strict=True)]
    # Every other operation is elementwise: each rank moves the entries it holds.
    params, grads, momentums = ([_local(t) for t in ts] for ts in (params, grads, momentums))
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(grad_sqs, squares, gamma)
    thetas: list[float | Tensor]
    if threshold_mode == "abs":
        thetas = [threshold] * len(params)
    else:
        corrections = [1.0 - (1.0 - gamma) ** float(step) for step in steps]
        thetas = [
            s.div(c).sqrt_().mul_(threshold) for s, c in zip(grad_sqs, corrections, strict=True)
        ]
    if foreach:
        torch._foreach_lerp_(momentums, grads, gamma)
    else:
        for momentum, grad in zip(momentums, grads, strict=True):
            momentum.lerp_(grad, gamma)
    outs: list[Tensor | None] = [None] * len(params)
    # Compiled code plans its own memory (and AOT autograd refuses the shared scratch's
    # aliased views as inputs that are written to).
    if scratch is not None and not torch.compiler.is_compiling():
        outs = list(scratch)
    for param, momentum, value_set, theta, out in zip(
        params, momentums, values, thetas, outs, strict=True
    ):
        _move(param, momentum, _direction(momentum, theta, out), value_set, momentum_reset)


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
    grad_sqs: list[Tensor]
    steps: list[Tensor]
    values: list[ValueSet]
    constraints: list[Constraint]


def _stat_dtype(tensor: Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def _check_hyperparameters(group: dict[str, Any]) -> None:
    check_bop_options(
        group["threshold"], group["gamma"], group["threshold_mode"], group["momentum_reset"]
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
