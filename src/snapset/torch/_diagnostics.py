"""Diagnostics: flip ratios and value histograms over training, and a model summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .._files import HARDENED
from .._kernels import codes_of_planes, compiled, plane_shape, recode
from .._kernels._flip import bits_of_planes
from .._oscillation import changes
from .._sets import ValueSet
from .._summary import PLAIN, Summary, SummaryRow, with_scale
from ._constrain import (
    ConstrainedTensor,
    check_values,
    constrained_tensors,
    hardened_scales,
    hardened_values,
    scaled_members,
)
from ._functional import kernel_arrays
from ._methods import Scale
from .export._file import hardened_set


def _histogram(codes: Tensor, k: int) -> Tensor:
    if codes.dtype == torch.bool:
        ones = torch.count_nonzero(codes)
        return torch.stack([codes.numel() - ones, ones])
    return torch.bincount(codes.reshape(-1).to(torch.int64 if k > 256 else codes.dtype), None, k)


# ----- flip tracker --------------------------------------------------------------------------


@dataclass
class _Tracked:
    """One tracked tensor: the codes of the last update and the direction of each entry's
    last change (``last``, as ``snapset._oscillation`` keeps it), as bit planes (``planes``:
    the compiled sweep's) or as torch's codes and bools, a spare buffer of the codes' kind,
    and the records."""

    tensor: ConstrainedTensor
    previous: Tensor
    planes: bool
    last: tuple[Tensor, Tensor]
    spare: Tensor | None = None
    flips: list[Tensor] = field(default_factory=list)
    oscillations: list[Tensor] = field(default_factory=list)
    histograms: list[Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, tensor: ConstrainedTensor) -> _Tracked:
        nothing = torch.empty(0, dtype=torch.uint8)
        entry = cls(tensor, nothing, planes=True, last=(nothing, nothing))
        swept = entry.swept()
        if swept is None:
            codes = tensor.constraint.codes(tensor.stored)
            # zeros_like: a sharded tensor's directions are sharded alike
            went_up, went_down = (torch.zeros_like(codes, dtype=torch.bool) for _ in range(2))
            entry = cls(tensor, codes, planes=False, last=(went_up, went_down))
            entry.histograms.append(_histogram(codes, len(tensor.constraint.values)))
        else:
            entry.previous = swept[0]
            entry.histograms.append(swept[3])
        return entry

    @property
    def count(self) -> int:
        """How many entries the tensor has."""
        return self.tensor.constraint.value_shape(self.tensor.stored.shape).numel()

    def codes(self, out: Tensor | None = None) -> Tensor:
        return self.tensor.constraint.codes(self.tensor.stored, out)

    def swept(self) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """New bit planes, how many codes differ from ``previous``, how many of those
        oscillated, and the histogram, in one compiled sweep (``snapset._kernels.recode``,
        which updates ``last``); None where it does not apply (more than 8 values, another
        device or dtype, sharded tensors, ``gumbel``, no numba), and then nothing is changed.
        Against itself, from no direction, where there are no planes yet."""
        coded = self.tensor.constraint.coded(self.tensor.stored)
        if coded is None or not self.planes or not compiled():
            return None
        read, boundaries = coded
        arrays = kernel_arrays(read) if boundaries.numel() <= 7 else None
        if arrays is None:
            return None
        shape = plane_shape(read.numel(), boundaries.numel() + 1)
        planes = self.spare if self.spare is not None else torch.empty(shape, dtype=torch.uint8)
        previous = self.previous if self.previous.numel() else planes
        last = self.last
        if not last[0].numel():  # the first sweep: no direction yet
            never = torch.zeros(plane_shape(read.numel(), 3), dtype=torch.uint8)
            last = never[0], never[1]
        histogram = torch.empty(boundaries.numel() + 1, dtype=torch.int64)
        counts = recode(
            arrays[0],
            boundaries.cpu().numpy(),
            previous.numpy(),
            planes.numpy(),
            (last[0].numpy(), last[1].numpy()),
            histogram.numpy(),
            threads=torch.get_num_threads(),
        )
        if counts is None:
            return None
        self.last = last
        return planes, torch.tensor(counts[0]), torch.tensor(counts[1]), histogram

    def recoded(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """New codes, how many differ from ``previous``, how many of those oscillated, and
        the histogram, by torch's operations (``snapset._oscillation.changes``, which
        updates ``last``)."""
        if self.planes:  # the sweep no longer applies (a device move): from planes to codes
            codes = self.codes()
            unpacked = torch.from_numpy(codes_of_planes(self.previous.numpy(), self.count))
            self.previous = unpacked.to(codes.device, codes.dtype).view(codes.shape)
            bits = torch.from_numpy(bits_of_planes(torch.stack(self.last).numpy(), self.count))
            went_up, went_down = bits.to(codes.device).view(2, *codes.shape)
            self.last = went_up, went_down
            self.planes, self.spare = False, None
        else:
            codes = self.codes(self.spare)
        flipped, oscillating = changes(self.previous, codes, self.last)
        flips, oscillations = torch.count_nonzero(flipped), torch.count_nonzero(oscillating)
        return codes, flips, oscillations, _histogram(codes, len(self.tensor.constraint.values))


class FlipTracker:
    """Flip ratio, oscillation ratio and value histogram of every constrained tensor of a
    model, over training.

    Call ``update`` after each optimizer step (or every ``n`` steps). For each tensor
    constrained by snapset, whatever its method (a flip parameter or a latent one), it
    records the fraction of entries whose exact value changed since the previous update (the
    flip ratio, as larq's ``FlipRatio`` metric), the fraction that changed against the
    direction of their previous change (the oscillation ratio, as Nagel et al., 2022, define
    oscillation: a latent weight whose gradient is only noise, near the end of training, goes
    back and forth across a threshold) and how many entries hold each value of the set.
    Between updates it keeps only the entries' value indices and the direction of their last
    change, never a float copy: on the CPU with numba, as bit planes (one bit an entry and
    boundary between two values, two bits an entry for the direction: three bits an entry for
    two-value sets) that one compiled sweep compares and counts; elsewhere one byte each (a
    bool for two-value sets) and two bools for the direction, compared by torch's operations.
    The counts stay on the tensors' device until read.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), "flip")
        >>> layer.weight = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1]])
        >>> tracker = st.FlipTracker(layer)
        >>> layer.weight = torch.tensor([[-1.0, -1, -1, -1], [1, -1, 1, -1]])  # two flips of 8
        >>> tracker.update()
        >>> tracker.flip_ratios()
        {'weight': [0.25]}
        >>> tracker.histograms()["weight"].tolist()   # rows: updates (and the start)
        [[4, 4], [6, 2]]
        >>> layer.weight = torch.tensor([[1.0, -1, -1, -1], [1, -1, 1, 1]])  # 1 back, 1 new
        >>> tracker.update()
        >>> tracker.oscillation_ratios()  # the entry that went back oscillated
        {'weight': [0.0, 0.125]}
    """

    def __init__(self, model: nn.Module) -> None:
        self._tracked: list[_Tracked] = [_Tracked.of(t) for t in constrained_tensors(model)]
        if not self._tracked:
            raise ValueError(
                f"{type(model).__name__} has no tensor constrained by snapset; constrain one "
                "with snapset.torch.constrain or constrain_ first"
            )

    @property
    def names(self) -> list[str]:
        """Qualified names of the tracked tensors (as ``named_constraints`` gives them)."""
        return [entry.tensor.name for entry in self._tracked]

    @property
    def value_sets(self) -> dict[str, ValueSet]:
        """The value set of each tracked tensor."""
        return {entry.tensor.name: entry.tensor.constraint.values for entry in self._tracked}

    def update(self) -> None:
        """Record the flips and oscillations since the last update and the current
        histograms."""
        for entry in self._tracked:
            # Two code buffers take turns, so an update allocates nothing of the tensor's size.
            codes, flips, oscillations, histogram = entry.swept() or entry.recoded()
            entry.flips.append(flips)
            entry.oscillations.append(oscillations)
            entry.histograms.append(histogram)
            entry.previous, entry.spare = codes, entry.previous

    def forget(self) -> None:
        """Drop the recorded counts, keeping what the next update compares against (each
        entry's value and the direction of its last change): the ratios start afresh, the
        oscillations go on being counted, and memory stays bounded over a long run. The
        histograms keep the last one as their row 0.

        Examples:
            >>> import torch, snapset, snapset.torch as st
            >>> layer = st.constrain(torch.nn.Linear(2, 1), "weight", snapset.Sign(), "flip")
            >>> layer.weight = torch.tensor([[1.0, 1.0]])
            >>> tracker = st.FlipTracker(layer)
            >>> layer.weight = torch.tensor([[-1.0, 1.0]])
            >>> tracker.update()
            >>> tracker.forget()
            >>> layer.weight = torch.tensor([[1.0, 1.0]])  # back the way it came
            >>> tracker.update()
            >>> tracker.flip_ratios(), tracker.oscillation_ratios()
            ({'weight': [0.5]}, {'weight': [0.5]})
        """
        for entry in self._tracked:
            entry.flips.clear()
            entry.oscillations.clear()
            del entry.histograms[:-1]

    def flip_ratios(self) -> dict[str, list[float]]:
        """Fraction of entries whose value changed, per tensor, one number per update."""
        return {entry.tensor.name: _ratios(entry.flips, entry.count) for entry in self._tracked}

    def oscillation_ratios(self) -> dict[str, list[float]]:
        """Fraction of entries that oscillated, per tensor, one number per update.

        An entry oscillates at an update when its value changes against the direction of its
        previous change (to a smaller value after it last grew, or to a larger one after it
        last fell; its first change never does). For a two-value set, it went back to the
        value it had before its last change. Flips that keep going one way (a latent weight
        the gradient drives) are not counted; a share of oscillations that grows late in
        training says entries move by noise, back and forth across a threshold.

        Examples:
            >>> import torch, snapset, snapset.torch as st
            >>> layer = st.constrain(torch.nn.Linear(2, 1), "weight", snapset.Binary(), "flip")
            >>> layer.weight = torch.tensor([[0.0, 0.0]])
            >>> tracker = st.FlipTracker(layer)
            >>> for weight in ([[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]):  # there and back
            ...     layer.weight = torch.tensor(weight)
            ...     tracker.update()
            >>> tracker.flip_ratios(), tracker.oscillation_ratios()
            ({'weight': [0.5, 0.5, 0.5]}, {'weight': [0.0, 0.5, 0.0]})
        """
        return {
            entry.tensor.name: _ratios(entry.oscillations, entry.count) for entry in self._tracked
        }

    def histograms(self) -> dict[str, npt.NDArray[np.int64]]:
        """Entries per value, per tensor: an array of shape ``(updates + 1, len(set))``.

        Row 0 is the state when the tracker was made; columns follow the sorted set.
        """
        return {
            entry.tensor.name: torch.stack(entry.histograms).cpu().numpy().astype(np.int64)
            for entry in self._tracked
        }

    def plot(self, path: str | Path, max_tensors: int = 8) -> Path:
        """Draw flip ratios and value shares over training to a PNG; needs matplotlib.

        See [`snapset.torch.plot_training`][].
        """
        from ._plot import plot_training

        return plot_training(self, path, max_tensors=max_tensors)


def _ratios(counts: list[Tensor], entries: int) -> list[float]:
    """Counts of entries, one per update, as fractions of the tensor's ``entries``."""
    return [int(count) / entries for count in counts]


# ----- summary ----------------------------------------------------------------------------


def summary(model: nn.Module) -> Summary:
    """A per-tensor table of ``model``'s parameters: set, method, count, bits, packed size.

    Every parameter appears once, and so does a buffer that ``harden_`` made of a weight
    (``GF2Linear``'s). A constrained tensor shows its set and method, the bits a weight needs
    once packed and its packed size, as [`snapset.torch.save`][] writes it; so does a tensor
    that ``harden_`` made plain and that still holds members of its set, with the method
    ``"hardened"``. A scaled set's row names its scale (``{-1, 0, 1} x channel``) and counts
    the scales in its bits a weight and its packed size (a learned scale has no row of its
    own), for a hardened one too. Any other parameter shows its actual size. Compression is
    against float32. The totals line gives the model's packed size, as larq's
    ``models.summary`` does for Keras 2. A ``flip`` parameter that left its set raises
    [`snapset.OutsideSetError`][] (see [`check_values`][snapset.torch.check_values]): its
    values are in no set.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain(torch.nn.Linear(4, 3), "weight", snapset.Binary(), "flip")
        >>> print(st.summary(layer))
        | tensor | set    | method | count | bits/weight | packed | float32 |  ratio |
        |--------|--------|--------|------:|------------:|-------:|--------:|-------:|
        | bias   | -      | -      |     3 |          32 |   12 B |    12 B |  1.00x |
        | weight | {0, 1} | flip   |    12 |           1 |    2 B |    48 B | 24.00x |
        | total  |        |        |    15 |             |   14 B |    60 B |  4.29x |
        12 of 15 weights (80.0%) in a value set; 14 B packed, 4.29x smaller than float32.
        >>> [(row.name, row.method) for row in st.summary(st.harden_(layer)).rows]
        [('bias', '-'), ('weight', 'hardened')]
        >>> scaled = st.constrain(torch.nn.Linear(512, 1), "weight", snapset.Ternary(), scale=256)
        >>> row = st.summary(scaled).rows[-1]
        >>> row.scale, round(row.bits_per_weight, 3)  # 1.586 a code, 2 float32 scales / 512
        ('256', 1.711)
    """
    check_values(model)  # a flip parameter off its set is in no set: refused, as save does
    constrained = {id(tensor.stored): tensor for tensor in constrained_tensors(model)}
    # a learned scale is counted in the row of the tensor it scales
    log_gains = {id(_log_gain(t)) for t in constrained.values() if _log_gain(t) is not None}
    # harden_ may leave a weight in a buffer (GF2Linear's): listed with the parameters
    hardened_buffers = [(n, b) for n, b in model.named_buffers() if hardened_values(b) is not None]
    rows = []
    for name, param in [*model.named_parameters(), *hardened_buffers]:
        tensor = constrained.get(id(param))
        if id(param) in log_gains:
            continue
        if tensor is not None:
            constraint = tensor.constraint
            vs = constraint.values
            count = math.prod(constraint.value_shape(param.shape))
            row = SummaryRow(tensor.name, vs, constraint.method, count, vs.bits)
            log_gain = _log_gain(tensor)  # a statistic scale is computed in the stored dtype
            rows.append(_with_scale(row, constraint.scale, param if log_gain is None else log_gain))
            continue
        held = hardened_set(param)
        scaled = _hardened_scaled(param)
        if held is not None or scaled is not None:
            vs = cast(ValueSet, hardened_values(param))
            row = SummaryRow(name, vs, HARDENED, param.numel(), vs.bits)
            rows.append(row if scaled is None else _with_scale(row, *scaled))
        else:
            rows.append(SummaryRow(name, None, PLAIN, param.numel(), param.element_size() * 8))
    return Summary(tuple(rows))


def _log_gain(tensor: ConstrainedTensor) -> Tensor | None:
    scale = tensor.constraint.scale
    return None if scale is None else scale.log_gain


def _with_scale(row: SummaryRow, scale: Scale | None, like: Tensor) -> SummaryRow:
    """``row`` with the scale of a scaled set: its name, and the number of its scales, each
    the width of ``like``'s dtype."""
    if scale is None:
        return row
    return with_scale(row, scale.scaling, scale.layout.count, like.element_size() * 8)


def _hardened_scaled(tensor: Tensor) -> tuple[Scale, Tensor] | None:
    """The scale and scales of a tensor that ``harden_`` made from a scaled set, if it still
    holds ``scale.expand(members, alpha)`` exactly; else None."""
    values, scales = hardened_values(tensor), hardened_scales(tensor)
    if values is None or scales is None or not tensor.is_floating_point():
        return None
    try:
        scaled_members(tensor, values, *scales)
    except ValueError:  # changed since harden_, or cast to a dtype that merges the values
        return None
    return scales
