"""The summary table of a model's weights: set, method, count, bits a weight and packed size.

This module knows nothing of torch or keras. Each front walks its model and makes one
``SummaryRow`` per weight tensor (``snapset.torch.summary``, ``snapset.keras.summary``); what a
row means, how its sizes are counted and how the table reads are written here once, so that
the same architecture gives the same numbers and the same text in both fronts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ._packing import radix_for
from ._scales import Scaling
from ._sets import ValueSet

__all__ = ["PLAIN", "Summary", "SummaryRow", "with_scale"]

#: The method of a plain (float) tensor, in no value set.
PLAIN = "-"


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


def with_scale(row: SummaryRow, scaling: Scaling | None, count: int, bits: int) -> SummaryRow:
    """``row`` with the scale of a scaled set (unchanged for None): ``count`` scales of
    ``bits`` each, named by granularity, and by mode when it is a statistic.

    Both fronts count a learned scale in the width of its trained variable's dtype, and a
    statistic in the stored weight's (the dtype it is computed in).

    Examples:
        >>> import snapset
        >>> row = SummaryRow("w", snapset.Ternary(), "ste", 512, 2)
        >>> scaled = with_scale(row, Scaling("channel", "absmean"), 4, 32)
        >>> scaled.scale, scaled.scale_count, scaled.scale_bits
        ('channel absmean', 4, 32)
        >>> with_scale(row, Scaling(256), 2, 16).scale
        '256'
    """
    if scaling is None:
        return row
    text = str(scaling.granularity) + ("" if scaling.learned else f" {scaling.mode}")
    return dataclasses.replace(row, scale=text, scale_count=count, scale_bits=bits)


@dataclass(frozen=True)
class Summary:
    """Per-tensor table of a model's parameters: set, method, count, bits and sizes.

    ``str(summary)`` is a markdown table with a totals line; ``rows`` holds the numbers.

    Examples:
        >>> import snapset
        >>> print(Summary((SummaryRow("w", snapset.Sign(), "flip", 64, 1),
        ...                SummaryRow("b", None, "-", 4, 32))))
        | tensor | set     | method | count | bits/weight | packed | float32 |  ratio |
        |--------|---------|--------|------:|------------:|-------:|--------:|-------:|
        | w      | {-1, 1} | flip   |    64 |           1 |    8 B |   256 B | 32.00x |
        | b      | -       | -      |     4 |          32 |   16 B |    16 B |  1.00x |
        | total  |         |        |    68 |             |   24 B |   272 B | 11.33x |
        64 of 68 weights (94.1%) in a value set; 24 B packed, 11.33x smaller than float32.
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


def _set_text(values: ValueSet | None) -> str:
    if values is None:
        return "-"
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
