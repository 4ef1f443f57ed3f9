"""Diagnostics: flip ratios and value histograms over training, and a model summary."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .._packing import radix_for
from .._sets import ValueSet
from ._constrain import (
    ConstrainedTensor,
    check_values,
    constrained_tensors,
    hardened_scales,
    hardened_values,
    scaled_members,
)
from ._methods import Scale
from .export._file import HARDENED, hardened_set


def _histogram(codes: Tensor, k: int) -> Tensor:
    if codes.dtype == torch.bool:
        ones = torch.count_nonzero(codes)
        return torch.stack([codes.numel() - ones, ones])
    return torch.bincount(codes.reshape(-1).to(torch.int64 if k > 256 else codes.dtype), None, k)


# ----- flip tracker --------------------------------------------------------------------------


@dataclass
class _Tracked:
    tensor: ConstrainedTensor
    previous: Tensor
    spare: Tensor | None
    flips: list[Tensor]
    histograms: list[Tensor]

    def codes(self, out: Tensor | None = None) -> Tensor:
        return self.tensor.constraint.codes(self.tensor.stored, out)


class FlipTracker:
    """Flip ratio and value histogram of every constrained tensor of a model, over training.

    Call ``update`` after each optimizer step (or every ``n`` steps). For each tensor
    constrained by snapset, whatever its method (a flip parameter or a latent one), it
    records the fraction of entries whose exact value changed since the previous update (the
    flip ratio, as larq's ``FlipRatio`` metric) and how many entries hold each value of the set.
    Between updates it keeps only the entries' value indices (one byte each, one bit's worth
    for two-value sets), never a float copy; the counts stay on the tensors' device until read.

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
    """

    def __init__(self, model: nn.Module) -> None:
        self._tracked: list[_Tracked] = []
        for tensor in constrained_tensors(model):
            codes = tensor.constraint.codes(tensor.stored)
            histogram = _histogram(codes, len(tensor.constraint.values))
            self._tracked.append(_Tracked(tensor, codes, None, [], [histogram]))
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
        """Record the flips since the last update and the current histograms."""
        for entry in self._tracked:
            # Two code buffers take turns, so an update allocates nothing of the tensor's size:
            # the previous codes, once compared, are overwritten by the comparison.
            codes = entry.codes(entry.spare)
            if codes.dtype == torch.bool:
                changed = entry.previous.logical_xor_(codes)
            else:
                changed = entry.previous.sub_(codes)  # nonzero exactly where the codes differ
            entry.flips.append(torch.count_nonzero(changed))
            entry.histograms.append(_histogram(codes, len(entry.tensor.constraint.values)))
            entry.previous, entry.spare = codes, entry.previous

    def flip_ratios(self) -> dict[str, list[float]]:
        """Fraction of entries whose value changed, per tensor, one number per update."""
        return {
            entry.tensor.name: [int(f) / entry.previous.numel() for f in entry.flips]
            for entry in self._tracked
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


# ----- summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    """One parameter tensor of a ``Summary``."""

    name: str
    #: The value set, or None for a plain (float) parameter.
    values: ValueSet | None
    #: The snapset method, ``"hardened"`` for a plain tensor of set values that ``harden_``
    #: made, or ``"-"`` for a plain parameter.
    method: str
    #: Number of weights (for ``gumbel``, entries of the value, not of the stored logits).
    count: int
    #: Bits a code needs on its own: ``ceil(log2(len(set)))``, or the dtype's width.
    bits: int
    #: For a scaled set (``w = alpha * v``), its scale: ``"tensor"``, ``"channel"`` or a group
    #: size, and the mode when it is a statistic (``"tensor absmean"``); else None.
    scale: str | None = None
    #: How many scales the tensor has, and the bits of each (its dtype's width).
    scale_count: int = 0
    scale_bits: int = 0

    @property
    def packed_bytes(self) -> int:
        """Bytes of the codes as [`snapset.torch.save`][] packs them, and of their scales, or
        of the plain tensor.

        Codes are packed in mixed radix (``snapset._packing``): ``ceil(count * bits / 8)`` for
        two, four or sixteen values, fewer for others (ternary: 1.59 bits a weight).
        """
        if self.values is None:
            return math.ceil(self.count * self.bits / 8)
        scales = math.ceil(self.scale_count * self.scale_bits / 8)
        return radix_for(len(self.values)).nbytes(self.count) + scales

    @property
    def bits_per_weight(self) -> float:
        """Bits a weight costs in a long packed tensor (1.59 for ternary), its share of the
        scales included (as GGUF counts TQ2_0, 2 bits a code and a float16 scale per 256
        codes, at 2.0625), or the dtype's width.

        Examples:
            >>> import snapset
            >>> row = SummaryRow("w", snapset.ValueSet([-2, -1, 1, 2]), "ste", 512, 2,
            ...                  "256", scale_count=2, scale_bits=16)
            >>> row.bits_per_weight
            2.0625
        """
        if self.values is None:
            return float(self.bits)
        codes = radix_for(len(self.values)).bits_per_weight
        return codes + self.scale_count * self.scale_bits / self.count if self.count else codes

    @property
    def float32_bytes(self) -> int:
        """Bytes of the same weights in float32."""
        return 4 * self.count

    @property
    def compression(self) -> float:
        """``float32_bytes / packed_bytes``."""
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0


@dataclass(frozen=True)
class Summary:
    """Per-tensor table of a model's parameters: set, method, count, bits and sizes.

    ``str(summary)`` is a markdown table with a totals line; ``rows`` holds the numbers.
    """

    rows: tuple[SummaryRow, ...]

    @property
    def count(self) -> int:
        """All parameters (weights) of the model."""
        return sum(row.count for row in self.rows)

    @property
    def constrained_count(self) -> int:
        """The weights restricted to a value set."""
        return sum(row.count for row in self.rows if row.values is not None)

    @property
    def packed_bytes(self) -> int:
        """The model's size with set-valued weights packed and the others as they are."""
        return sum(row.packed_bytes for row in self.rows)

    @property
    def float32_bytes(self) -> int:
        """The model's size in float32."""
        return sum(row.float32_bytes for row in self.rows)

    @property
    def compression(self) -> float:
        """``float32_bytes / packed_bytes``."""
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    def __str__(self) -> str:
        header = ["tensor", "set", "method", "count", "bits/weight", "packed", "float32", "ratio"]
        lines = [
            [
                row.name,
                _set_text(row.values) + (f" x {row.scale}" if row.scale else ""),
                row.method,
                f"{row.count:,}",
                f"{row.bits_per_weight:.3g}",
                _size(row.packed_bytes),
                _size(row.float32_bytes),
                f"{row.compression:.2f}x",
            ]
            for row in self.rows
        ]
        lines.append(
            [
                "total",
                "",
                "",
                f"{self.count:,}",
                "",
                _size(self.packed_bytes),
                _size(self.float32_bytes),
                f"{self.compression:.2f}x",
            ]
        )
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
        right = {3, 4, 5, 6, 7}

        def render(cells: list[str]) -> str:
            padded = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "| " + " | ".join(padded) + " |"

        rule = (
            "|"
            + "|".join(
                ("-" * (w + 1) + ":" if i in right else "-" * (w + 2)) for i, w in enumerate(widths)
            )
            + "|"
        )
        share = self.constrained_count / self.count if self.count else 0.0
        footer = (
            f"{self.constrained_count:,} of {self.count:,} weights ({share:.1%}) in a value "
            f"set; {_size(self.packed_bytes)} packed, {self.compression:.2f}x smaller than float32."
        )
        return "\n".join([render(header), rule, *(render(cells) for cells in lines), footer])

    def __repr__(self) -> str:
        return str(self)


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
            rows.append(SummaryRow(name, None, "-", param.numel(), param.element_size() * 8))
    return Summary(tuple(rows))


def _log_gain(tensor: ConstrainedTensor) -> Tensor | None:
    scale = tensor.constraint.scale
    return None if scale is None else scale.log_gain


def _with_scale(row: SummaryRow, scale: Scale | None, like: Tensor) -> SummaryRow:
    """``row`` with the scale of a scaled set: its name, and the number of its scales, each
    the width of ``like``'s dtype."""
    if scale is None:
        return row
    scaling = scale.scaling
    text = str(scaling.granularity) + ("" if scaling.learned else f" {scaling.mode}")
    bits = like.element_size() * 8
    return dataclasses.replace(row, scale=text, scale_count=scale.layout.count, scale_bits=bits)


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


def _set_text(values: ValueSet | None) -> str:
    if values is None:
        return "-"
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
