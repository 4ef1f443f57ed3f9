"""Re-estimating BatchNorm's running statistics with the exact weights a model evaluates with.

BatchNorm's running statistics average over training steps in which the weights kept moving
(and, for ``stochastic`` and ``gumbel``, were random draws), so they do not belong to the exact
weights that eval mode computes with (Nagel et al., ICML 2022, "Overcoming Oscillations in
Quantization-Aware Training", BatchNorm re-estimation). ``torch.optim.swa_utils.update_bn``
runs the whole model in train mode, where snapset's constraints draw random weights: here only
the BatchNorm layers train.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .._spec import batch_inputs, batchnorm_refused, check_batches

__all__ = ["reestimate_batchnorm"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

BatchNorm = nn.modules.batchnorm._BatchNorm


def reestimate_batchnorm(
    model: ModuleT, data: Iterable[Any], batches: int | None = None
) -> ModuleT:
    """Recompute the running statistics of every BatchNorm in ``model`` from ``data``, with
    the exact weights; return ``model``.

    Every ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d``/``2d``/``3d``,
    ``SyncBatchNorm``, a ``LazyBatchNorm*`` once initialized) forgets its running statistics
    (``reset_running_stats``) and averages those of the batches of ``data`` cumulatively
    (``momentum=None``): the running mean is the average of the batches' means and the running
    variance that of their unbiased variances, each batch counting once whatever its size, as
    torch computes them. The batches run through the model under ``torch.no_grad()`` with
    every other module in eval mode, so that snapset's constraints and
    [`Quantize`][snapset.torch.Quantize] show their exact, deterministic values and dropout is
    off, and the BatchNorm modules in train mode (each normalizes with its batch's statistics,
    as in training). Call it after training, before eval, ``harden_``, ``save`` or an export.

    ``data``: an iterable of batches (a ``DataLoader``, a list of tensors), already on the
    model's device. A batch is the model's input (``model(batch)``), or a tuple or list
    ``(inputs, targets, ...)`` whose first element is (``model(batch[0])``); an input that is
    a dict is passed as keyword arguments (``model(**inputs)``, as transformers' batches are).
    ``batches``: use at most that many (None: all of them).

    Afterwards each module's ``training`` flag and each BatchNorm's ``momentum`` are what they
    were. Raises ``ValueError`` (the model unchanged) for a model without BatchNorm, a
    BatchNorm with ``track_running_stats=False`` or not yet initialized (lazy), data that gives
    no batch, or ``batches`` <= 0 (``TypeError`` if not an int or None). If the forward
    raises, the running statistics are restored too, and the error propagates: a failed call
    changes nothing.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        >>> model = st.constrain_(model, snapset.Sign(), method="stochastic")
        >>> x = torch.randn(64, 3)
        >>> model = st.reestimate_batchnorm(model, [x])
        >>> model.training, model[1].momentum  # as they were
        (True, 0.1)
        >>> exact = model.eval()[0](x)  # the exact Sign weights
        >>> torch.allclose(model[1].running_mean, exact.mean(0))
        True
    """
    check_batches(batches)
    norms = _batchnorms(model)
    modes = [(module, module.training) for module in model.modules()]
    momenta = [norm.momentum for norm in norms]
    saved = [_running_stats(norm) for norm in norms]
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average
            norm.train()
        if _run(model, data, batches) == 0:
            raise batchnorm_refused("empty")
    except BaseException:
        for norm, stats in zip(norms, saved, strict=True):
            _restore(norm, stats)
        raise
    finally:
        for module, mode in modes:
            module.training = mode
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return model


def _batchnorms(model: nn.Module) -> list[BatchNorm]:
    """The BatchNorm modules of ``model``, each once; refuses those it cannot re-estimate."""
    found: list[BatchNorm] = []
    for name, module in model.named_modules():
        if not isinstance(module, BatchNorm):
            continue
        where = f"BatchNorm '{name or type(module).__name__}'"
        if not module.track_running_stats:
            raise batchnorm_refused("untracked", where)
        if isinstance(module.running_mean, nn.parameter.UninitializedBuffer):
            raise batchnorm_refused("unbuilt", where)
        found.append(module)
    if not found:
        raise batchnorm_refused("none", f"model '{type(model).__name__}'")
    return found


@torch.no_grad()
def _run(model: nn.Module, data: Iterable[Any], batches: int | None) -> int:
    """Run ``model`` on the inputs of ``data``'s first ``batches`` batches; their number."""
    count = 0
    for batch in itertools.islice(data, batches):
        given = batch_inputs(batch)
        if given.named:
            model(**given.inputs)
        else:
            model(given.inputs)
        count += 1
    return count


def _running_stats(norm: BatchNorm) -> list[Tensor]:
    """Copies of ``norm``'s running statistics and batch count, to restore on failure."""
    return [buffer.clone() for buffer in _buffers(norm)]


def _restore(norm: BatchNorm, stats: list[Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in zip(_buffers(norm), stats, strict=True):
            buffer.copy_(saved)


def _buffers(norm: BatchNorm) -> list[Tensor]:
    return [
        buffer
        for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        if buffer is not None
    ]
