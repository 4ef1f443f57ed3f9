"""Tensor-level maths of the PyTorch front: exact projections, value codes, stochastic rounding,
Gumbel-softmax and the straight-through function that applies an estimator (``_estimators``).

Every function here takes plain tensors, so the parametrizations in ``_methods`` stay thin and
the maths can be tested against closed forms on its own.

Exactness: a forward value is always *looked up* (or summed from steps proven exact for the
dtype), never computed as ``w + (q - w).detach()``, which rounds.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _kernels
from ._estimators import estimator_grad


def nearest(latent: Tensor, thresholds: Tensor, table: Tensor, steps: Tensor | None) -> Tensor:
    """Exact nearest values of ``latent``; a latent exactly on a threshold goes up.

    ``thresholds`` are the sorted decision boundaries on the latent scale and ``table`` the
    values in the latent's dtype. In eager mode on the CPU one compiled pass
    (``snapset._kernels``) looks each value up. Elsewhere, ``steps`` (the gaps between
    neighbouring values) may be given when summing them is exact in this dtype
    (``summed``): a few elementwise passes, several times faster than ``bucketize``.
    """
    arrays = kernel_arrays(latent, thresholds, table) if thresholds.numel() <= 16 else None
    if arrays is not None:
        out = torch.empty_like(latent)  # contiguous, as latent is
        flat, cuts, values = arrays
        if _kernels.nearest(flat, cuts, values, _memory(out), torch.get_num_threads()):
            return out
    if steps is None or thresholds.numel() > 16:
        return table[reached(latent, thresholds)]
    return summed(latent, thresholds, table, steps)


def summed(latent: Tensor, thresholds: Tensor, table: Tensor, steps: Tensor) -> Tensor:
    """``table[0] + sum(steps[j] * (latent >= thresholds[j]))``: the nearest values where this
    sum is exact in the latent's dtype (the caller checks it on the table itself)."""
    # In-place passes over one buffer: fresh allocations cost more than the arithmetic here.
    out = torch.ge(latent, thresholds[0], out=torch.empty_like(latent)).mul_(steps[0])
    if thresholds.numel() > 1:
        term = torch.empty_like(latent)
        for j in range(1, thresholds.numel()):
            out.add_(torch.ge(latent, thresholds[j], out=term).mul_(steps[j]))
    return out.add_(table[0])


def kernel_arrays(*tensors: Tensor) -> list[np.ndarray] | None:
    """Flat numpy views of ``tensors`` for the compiled kernels of ``snapset._kernels``
    (``_memory``: the caller keeps the tensors alive while it uses them): plain contiguous CPU
    tensors of one dtype, float32 or float64, not empty, in eager mode. None where the kernels
    do not apply: another device or dtype, tensors without storage of their own
    (``torch.func``'s transforms, subclasses), or under ``torch.compile``, whose inductor fuses
    torch's own operations into one pass by itself."""
    first = tensors[0]
    if (
        torch.compiler.is_compiling()
        or first.device.type != "cpu"
        or first.dtype not in _C_TYPES
        or any(t.dtype != first.dtype or t.device != first.device for t in tensors)
        or not all(_plain(t) and t.is_contiguous() and t.numel() > 0 for t in tensors)
    ):
        return None
    return [_memory(t) for t in tensors]


# What numpy reads a CPU tensor's memory as, by dtype.
_C_TYPES: dict[torch.dtype, tuple[type[ctypes.c_float | ctypes.c_double], np.dtype[Any]]] = {
    torch.float32: (ctypes.c_float, np.dtype(np.float32)),
    torch.float64: (ctypes.c_double, np.dtype(np.float64)),
}


def _memory(tensor: Tensor) -> np.ndarray:
    """A flat numpy view of a contiguous CPU tensor's memory, for as long as the tensor lives.

    Not ``tensor.numpy()``: that marks the tensor's storage as never resizable for good, and
    FSDP2's ``fully_shard`` frees an unsharded parameter by resizing its storage to 0.
    """
    ctype, dtype = _C_TYPES[tensor.dtype]
    memory = (ctype * tensor.numel()).from_address(tensor.data_ptr())
    view: np.ndarray = np.frombuffer(memoryview(memory), dtype)
    return view


def _plain(tensor: Tensor) -> bool:
    """A tensor whose data numpy can see: not a subclass, not wrapped by ``torch.func``."""
    return type(tensor) in (Tensor, torch.nn.Parameter) and not (
        torch._C._functorch.is_functorch_wrapped_tensor(tensor)
    )


def count_at_least(x: Tensor, boundaries: Tensor, out: Tensor | None = None) -> Tensor:
    """Index of the value of each entry: how many sorted ``boundaries`` it reaches (``>=``).

    The same comparisons that choose the values, without building them, in the narrowest
    dtype (``narrow``). ``out``, a tensor of the codes' shape and dtype from an earlier
    call, is reused when given.
    """
    if boundaries.numel() == 1:
        return torch.ge(x, boundaries[0], out=out)
    if boundaries.numel() > 16:
        return narrow(reached(x, boundaries), boundaries.numel() + 1)
    codes = out if out is not None else torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    codes.copy_(x.ge(boundaries[0]))
    for j in range(1, boundaries.numel()):
        codes.add_(x.ge(boundaries[j]))
    return codes


def reached(x: Tensor, boundaries: Tensor) -> Tensor:
    """How many of the sorted ``boundaries`` each entry reaches (``>=``), as int64: what
    ``torch.bucketize(x, boundaries, right=True)`` gives, in a few passes for many boundaries.

    Evenly spaced boundaries (an integer set such as int8's 255) are guessed by arithmetic,
    ``trunc((x - b_0) / step) + 1``, and each guess is corrected by one comparison on either
    side with the boundaries themselves, which settle the answer exactly wherever the guess was
    off by at most one; if any entry is still not between its two boundaries (uneven ones, NaN),
    ``bucketize`` decides every entry instead (and always under ``torch.compile``). About ten
    passes instead of one per boundary.

    Examples:
        >>> b = torch.arange(-127.5, 127.0)  # the 255 midpoints of -128..127
        >>> reached(torch.tensor([-300.0, -127.5, 0.49, 0.5, 1e9]), b).tolist()
        [0, 1, 128, 129, 255]
    """
    n = boundaries.numel()
    # under torch.compile the check's branch on the data would break the graph
    if n < 2 or torch.compiler.is_compiling():
        return torch.bucketize(x, boundaries, right=True)
    first, step = boundaries[0], (boundaries[-1] - boundaries[0]) / (n - 1)
    flat = x.reshape(-1)
    # truncated, not floored (floor is a slow pass on CPU): a guess one too high in (-1, 0)
    # is corrected below like any other
    guess = flat.sub(first).div_(step).nan_to_num_(nan=0.0).clamp_(-1, n)
    count = guess.to(torch.int64).add_(1).clamp_(0, n)  # in [0, n]: edges[count + 1] exists
    inf = boundaries.new_full((1,), float("inf"))
    edges = torch.cat([-inf, boundaries, inf])  # edges[c] <= x < edges[c + 1] for count c

    def edge(at: Tensor) -> Tensor:  # index_select: many times faster than edges[at] on CPU
        return edges.index_select(0, at)

    count += flat.ge(edge(count + 1)).to(torch.int64)
    count.clamp_(max=n)
    count -= flat.lt(edge(count)).to(torch.int64)
    settled = flat.ge(edge(count)) & (flat.lt(edge(count + 1)) | count.eq(n))
    if not bool(settled.all()):
        return torch.bucketize(x, boundaries, right=True)
    return count.reshape(x.shape)


def members(x: Tensor, table: Tensor) -> Tensor:
    """Whether each entry of ``x`` equals one of the (few) numbers of ``table``.

    One comparison per value for small sets: several times faster than ``torch.isin``,
    which sorts.

    Examples:
        >>> members(torch.tensor([1.0, 0.5, -1.0]), torch.tensor([-1.0, 1.0])).tolist()
        [True, False, True]
    """
    if table.numel() > 16:
        return torch.isin(x, table)
    inside = x.eq(table[0])
    for value in table[1:]:
        inside.logical_or_(x.eq(value))
    return inside


def narrow(codes: Tensor, k: int) -> Tensor:
    """Codes into a set of ``k`` values in the narrowest dtype that holds them: a bool for two
    values, a byte up to 256, else ``int16``."""
    return codes.to(torch.bool if k == 2 else torch.uint8 if k <= 256 else torch.int16)


def stochastic_round(latent: Tensor, levels: Tensor, table: Tensor, dither: float = 1.0) -> Tensor:
    """Round at random to one of the two neighbouring values, unbiased on the latent scale.

    ``levels`` are the values on the latent scale. A latent ``t`` between levels
    ``l_j <= t < l_{j+1}`` (gap ``g``) becomes value ``j + 1`` with probability
    ``(t - l_j) / g`` and value ``j`` otherwise; latents outside the range are clamped first.
    ``dither < 1`` narrows the random band to that share of the gap, centred on the threshold:
    the probability ``(t - l_j - (1 - dither) g / 2) / (dither g)`` is below 0 under the band
    and above 1 over it, so those latents round down or up for sure (``dither=1``: the formula
    above, bit for bit). ``dither`` must be > 0 (0 is the nearest value: no draw at all).

    Examples:
        >>> levels, table = torch.tensor([-0.1, 0.1]), torch.tensor([0.0, 1.0])
        >>> stochastic_round(torch.tensor([-0.05, 0.05]), levels, table, dither=0.5).tolist()
        [0.0, 1.0]
    """
    t = latent.clamp(levels[0], levels[-1])
    low = (torch.bucketize(t, levels, right=True) - 1).clamp_(0, levels.numel() - 2)
    below, above = levels[low], levels[low + 1]
    gap = above - below
    p_up = (t - below - (1 - dither) / 2 * gap) / (dither * gap)
    up = torch.rand_like(t) < p_up  # a probability above 1 or below 0 needs no clamp here
    return table[low + up]


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact ``hard`` values. Backward: the estimator's derivative w.r.t. latent."""

    @staticmethod
    def forward(latent: Tensor, hard: Tensor, scale: float, bound: float, estimator: str) -> Tensor:
        return hard

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        latent, _, scale, bound, estimator = inputs
        ctx.save_for_backward(latent)
        ctx.scale, ctx.bound, ctx.estimator = scale, bound, estimator

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (latent,) = ctx.saved_tensors
        grad_latent = latent_grad(ctx.estimator, latent, grad, ctx.scale, ctx.bound)
        return grad_latent, None, None, None, None


def latent_grad(estimator: str, latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    """``estimator_grad``, bit for bit: in eager mode on the CPU one compiled pass
    (``snapset._kernels``) instead of torch's several (not where the gradient itself needs a
    graph: ``create_graph=True``)."""
    arrays = None if grad.requires_grad else kernel_arrays(latent, grad)
    if arrays is not None and estimator in _kernels.ESTIMATOR_KERNELS:
        out = torch.empty_like(latent)
        (u, g), threads = arrays, torch.get_num_threads()
        if _kernels.estimator_grad(estimator, u, g, scale, bound, _memory(out), threads):
            return out
    return estimator_grad(estimator, latent, grad, scale, bound)


def straight_through(
    latent: Tensor, hard: Tensor, scale: float, bound: float, estimator: str
) -> Tensor:
    """Return ``hard`` (exactly) with the estimator's gradient flowing to ``latent``."""
    return _StraightThrough.apply(latent, hard, scale, bound, estimator)  # type: ignore[no-any-return]


def argmax_ties_up(scores: Tensor) -> Tensor:
    """Index of the largest score along the last dim; ties go to the larger index (value)."""
    last = scores.shape[-1] - 1
    return last - scores.flip(-1).argmax(-1)


class _GumbelStraightThrough(torch.autograd.Function):
    """Forward: the value of the sampled category. Backward: through the softmax expectation."""

    @staticmethod
    def forward(noisy_logits: Tensor, table: Tensor, temperature: float) -> Tensor:
        return table[argmax_ties_up(noisy_logits)]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        noisy_logits, table, temperature = inputs
        ctx.save_for_backward(noisy_logits, table)
        ctx.temperature = temperature

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        noisy_logits, table = ctx.saved_tensors
        return gumbel_expectation_grad(noisy_logits, table, ctx.temperature, grad), None, None


def gumbel_expectation_grad(
    noisy_logits: Tensor, table: Tensor, temperature: float, grad: Tensor
) -> Tensor:
    """Gradient of ``E = sum_j softmax(y / tau)_j v_j`` w.r.t. ``y``, times ``grad``.

    Closed form: ``dE/dy_i = s_i (v_i - E) / tau`` with ``s = softmax(y / tau)``.
    """
    probs = torch.softmax(noisy_logits / temperature, dim=-1)
    expectation = probs @ table
    return grad.unsqueeze(-1) * probs * (table - expectation.unsqueeze(-1)) / temperature


def gumbel_sample(logits: Tensor, table: Tensor, temperature: float) -> Tensor:
    """Straight-through Gumbel-softmax (Jang et al., 2017; Maddison et al., 2017).

    Draws one category per entry from ``softmax(logits)`` with the Gumbel-max trick and returns
    its exact value; the gradient is that of the expected value under
    ``softmax((logits + gumbel_noise) / temperature)``.
    """
    info = torch.finfo(logits.dtype)
    uniform = torch.rand_like(logits).clamp_(info.tiny, 1.0 - info.eps)
    noisy = logits - torch.log(-torch.log(uniform))
    return _GumbelStraightThrough.apply(noisy, table, temperature)  # type: ignore[no-any-return]


def blend(start: Tensor, end: Tensor, amount: float) -> Tensor:
    """``start + amount * (end - start)``, with gradients to both (``set_blend``'s warm-up from
    a float ``start`` to an exact ``end``); ``end`` itself, bit for bit, where ``amount`` is 1."""
    return end if amount >= 1 else torch.lerp(start, end, amount)
