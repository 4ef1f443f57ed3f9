"""Packed model files: ``save`` and ``load`` in safetensors, with no pickle anywhere.

A file holds, for each tensor whose values come from a set, its value set, shape, dtype and its
codes packed by ``snapset._packing`` (close to ``log2(k)`` bits a weight), and every other
``state_dict`` tensor as it is. The safetensors header's ``__metadata__`` carries::

    "format": "snapset", "snapset.version": "1" (or "2" with scales or input quantizers),
    "snapset.constrained": JSON {name: {"values": [...], "shape": [...], "dtype": "float32",
                                        "method": "ste", "group": g}}

and the tensor ``name`` is the ``uint8`` stream of codes. Any safetensors reader opens the file.
``method`` is the constraint's method, or ``"hardened"`` for a plain tensor of set values (one
that ``harden_`` made, or one whose set the caller declared).

A scaled tensor (``w = alpha * v``, see ``snapset._scales``) adds ``"scale": {"granularity":
"channel", "mode": "learned"}`` to its description, and its scales ``alpha`` are the float
tensor ``name + ".scales"`` in the tensor's dtype, of the shape the core's layout gives for the
codes' shape with PyTorch's axes (outputs along 0, inputs along 1). The codes are those of
``v``; a statistic scale (``absmean``, ``absmax``) is saved as the scales it computed, so the
file holds what the model computes with in eval mode, as for every method. A model with input
quantizers (``quantize_inputs_``) adds::

    "snapset.quantizers": JSON {layer: {"values": [...], "method": "ste", "estimator": "clip",
                                        "scale": "token", "scale_mode": "absmax",
                                        "feature_axis": -1, "num_features": null,
                                        "dtype": "float32"}}

and a learned scale's ``alpha`` (and its ``initialized`` flag) are the plain tensors
``layer + ".input_quantizer.start"`` (``.log_gain``, ``.initialized``), as in the model's
``state_dict``.

What a load promises:

* **One whole file.** The file is opened once and every byte is read through that handle, so a
  load racing a ``save`` of the same path (which renames a new file over it) sees the old file
  or the new one, never tensors from both.
* **Whole or nothing.** The header is read and checked before anything big is allocated, and
  every tensor is decoded into new memory before the first is copied into the model. Anything
  wrong raises ``SnapsetFileError`` and leaves the model as it was; ``load(None, ...)`` then
  returns nothing.
* **Bounded work.** A header may claim at most ``MAX_HEADER_BYTES`` bytes, ``MAX_TENSORS``
  tensors, ``MAX_DIMS`` dimensions a tensor, ``MAX_VALUES`` values a set and
  ``MAX_DISTINCT_VALUES`` values in all its distinct sets together; every check is linear in
  the header (plus a sort of each distinct set).
* **Values in their sets.** Packed tensors decode through their set's table in their dtype, so
  they hold members of the set and nothing else; a set that merges or overflows in that dtype
  is refused, as are bool tensors with bytes other than 0 and 1.
* **Scales that fit.** Scales are finite and > 0, in the shape their granularity gives the
  codes' shape; a quantizer record builds a ``Quantize`` whose state the file holds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..._packing import Radix, pack_codes, radix_for, unpack_codes
from ..._scales import (
    SCALE_GRANULARITIES,
    SCALE_MODES,
    Scaling,
    bad_scale_message,
    check_granularity,
)
from ..._sets import ValueSet
from ..._spec import NOT_BY_FLIP_OPTIMIZER, outside_set_error
from .._constrain import (
    ConstrainedTensor,
    check_values,
    constrained_tensors,
    hardened_scales,
    hardened_values,
    mark_hardened,
    scaled_members,
)
from .._methods import Scale
from .._quantize import INPUT_QUANTIZER, Quantize, input_quantizers, quantize_inputs_

__all__ = ["SnapsetFileError", "load", "save"]

#: The file format this snapset writes: version 2 for a file with scales or input quantizers
#: (which a reader of version 1 would load as unscaled values without their quantizers), and
#: version 1, which every snapset reads, for any other.
FORMAT_VERSION = 2
#: The versions this snapset reads.
READ_VERSIONS = ("1", "2")
#: A header larger than this is refused unread (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20
#: Tensors a file may hold: a model of a billion tensors is not one file.
MAX_TENSORS = 2**20
#: Dimensions of a tensor (whose product must also fit in int64, as torch's strides do).
MAX_DIMS = 64
#: Values of one set: codes of 16 bits (a larger "set" is a number format, not a choice).
MAX_VALUES = 2**16
#: Values of all the distinct sets of a file together (each is sorted and checked once).
MAX_DISTINCT_VALUES = 2**20
#: The ``method`` recorded for a plain tensor of set values (hardened, or its set declared).
HARDENED = "hardened"
#: The suffix of the name under which a scaled tensor's scales are stored.
SCALES = ".scales"

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_FLOAT_NAMES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16}
_FLOAT_NAMES["bfloat16"] = torch.bfloat16
_LARGEST = 2**63 - 1


class SnapsetFileError(ValueError):
    """A snapset file that is damaged, hostile, or does not fit the model it is loaded into."""


# ----- set values in a tensor ------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a file of many tensors often has one set and one dtype
def _table(values: ValueSet, dtype: torch.dtype) -> Tensor:
    """The set's values as ``dtype`` holds them (the core's rounding; this cast rounds nothing).
    Shared between calls: read it, never write to it.

    Raises ``ValueError`` for a set that merges or overflows in ``dtype``, ``TypeError`` for a
    dtype that is not a float.
    """
    return torch.from_numpy(values.tables(str(dtype)).values).to(dtype)


def _set_codes(values: ValueSet, tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Each entry's index in the set as ``tensor``'s dtype holds it, and where an entry (NaN
    included) is no member."""
    table = _table(values, tensor.dtype)
    flat = tensor.detach().reshape(-1).cpu()
    codes = torch.searchsorted(table, flat).clamp_(max=len(values) - 1)
    return codes, table[codes] != flat


def hardened_set(tensor: Tensor) -> ValueSet | None:
    """The set ``harden_`` marked ``tensor`` with, if every entry is still a member; else None.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.harden_(st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign()))
        >>> hardened_set(layer.weight)
        ValueSet([-1, 1])
        >>> with torch.no_grad():
        ...     layer.weight[0, 0] = 0.5  # left the set since
        >>> hardened_set(layer.weight) is None
        True
    """
    values = hardened_values(tensor)
    if values is None or not tensor.is_floating_point():
        return None
    try:
        outside = _set_codes(values, tensor)[1]
    except ValueError:  # cast since to a dtype that merges the set's values
        return None
    return None if bool(outside.any()) else values


# ----- what a model holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One constrained tensor of a model: the exact values it shows and how to store them."""

    tensor: ConstrainedTensor

    @property
    def values(self) -> ValueSet:
        return self.tensor.constraint.values

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.constraint.value_shape(self.tensor.stored.shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.stored.dtype

    @property
    def scale(self) -> Scale | None:
        return self.tensor.constraint.scale

    def hard(self) -> Tensor:
        return self.tensor.constraint.hard(self.tensor.stored).detach()

    def scales(self) -> Tensor | None:
        return self.tensor.constraint.scales(self.tensor.stored)

    def writes(self, members: Tensor, alpha: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        """The (target, value) pairs that make the slot show ``members`` (times ``alpha`` for a
        scaled set), checked to be exact."""
        constraint, scale = self.tensor.constraint, self.scale
        writes = []
        if scale is None or alpha is None:
            stored = constraint.right_inverse(members)
        elif scale.start is None or scale.log_gain is None:  # a statistic: the float weight itself
            stored = scale.expand(members, alpha)
        else:
            # the members' stored form on the set's own scale, beside the file's learned alpha
            # (as Scale.assign: start = alpha, log_gain = 0)
            stored = constraint.stored_for(members)
            writes += [(scale.start, alpha), (scale.log_gain, torch.zeros_like(scale.log_gain))]
        if not torch.equal(constraint.hard(stored), members):
            raise SnapsetFileError(
                f"'{self.tensor.name}': the values do not round-trip its constraint"
            )
        # a statistic scale is recomputed from the float weight: it must give the saved one
        if (
            scale is not None
            and not scale.learned
            and alpha is not None
            and not torch.equal(scale.statistic(stored), alpha)
        ):
            raise SnapsetFileError(
                f"'{self.tensor.name}': scale_mode={scale.scaling.mode!r} recomputes the scales "
                "from the float weight, and alpha * v gives back other scales than the saved "
                "ones, so no float weight snapset builds shows the saved values exactly; load "
                "the file into a plain model of the same architecture (exact, as if hardened); "
                "to resume training, save and load a state_dict with torch.save"
            )
        return [(self.tensor.stored, stored), *writes]


def _slots(model: nn.Module) -> dict[str, _Slot]:
    return {tensor.name: _Slot(tensor) for tensor in constrained_tensors(model)}


def _plain_state(model: nn.Module, slots: dict[str, _Slot]) -> dict[str, Tensor]:
    """``state_dict`` entries that are neither the stored tensor of a slot nor its constraint's
    own state (a learned scale's ``start`` and ``log_gain``; its alpha is saved beside the
    codes)."""
    skip, own = set(), []
    for name, slot in slots.items():
        owner = name[: -len(slot.tensor.tensor_name)]  # "0." of "0.weight"
        prefix = f"{owner}parametrizations.{slot.tensor.tensor_name}."
        skip.add(f"{prefix}original")
        own.append(f"{prefix}0.")  # the snapset constraint is the first of its stack
    prefixes = tuple(own)
    return {
        k: v for k, v in model.state_dict().items() if k not in skip and not k.startswith(prefixes)
    }


def _tensor_objects(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by ``state_dict`` name: the objects that carry ``harden_``'s mark
    (``state_dict`` holds detached views without it)."""
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    return dict(named)


# ----- save -----------------------------------------------------------------------------------


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    values: Mapping[str, ValueSet | list[float] | tuple[float, ...]] | None = None,
) -> Path:
    """Write ``model`` to a safetensors file with its set-valued tensors packed; return the path.

    Each tensor constrained by snapset (a ``GF2Linear`` weight too) is stored as its value set,
    shape, dtype and codes packed at close to ``log2(k)`` bits a weight (1 bit for two values,
    1.59 for ternary, 2 for four values). So is each plain tensor that ``harden_`` made, as long
    as it still holds members of its set (one whose values left the set since is written as it
    is, with a warning), and each plain tensor named in ``values``, which maps ``state_dict``
    names to their sets. Every other ``state_dict`` tensor (biases, float layers, buffers) is
    stored as it is. What is saved is the values the model computes with in eval mode: latents,
    logits and optimizer state are not (save a ``state_dict`` with ``torch.save`` to resume
    training).

    Nothing is rounded on the way: a constrained tensor or a tensor named in ``values`` that
    holds a value outside its set (a ``flip`` parameter stepped by Adam, NaN) raises
    ``snapset.OutsideSetError`` and nothing is written. The file is written under a temporary
    name with the mode a new file gets (``0o666`` less the umask), read back to check that
    ``load`` accepts its header, and renamed, so ``path`` always holds a whole file.

    Needs the ``save`` extra (``pip install 'snapset[save]'``); ``load`` needs nothing more.

    Examples:
        >>> import os, tempfile, torch, snapset, snapset.torch as st
        >>> model = st.constrain(torch.nn.Linear(1000, 10), "weight", snapset.Sign())
        >>> path = st.save(model, os.path.join(tempfile.mkdtemp(), "model.safetensors"))
        >>> packed = st.load(None, path)  # a dict of exact tensors
        >>> sorted(packed["weight"].unique().tolist()), packed["bias"].shape
        ([-1.0, 1.0], torch.Size([10]))
        >>> plain = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = plain.weight.copy_(torch.tensor([[1.0, -1, 1, 1], [-1, -1, 1, -1]]))
        >>> path = st.save(plain, path, values={"weight": snapset.Sign()})  # packed too
        >>> st.load(None, path)["weight"].tolist()
        [[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, -1.0]]
    """
    try:
        from safetensors.torch import save_file
    except ImportError as error:
        raise ImportError(
            "snapset.torch.save writes safetensors files: pip install 'snapset[save]' "
            "(or pip install safetensors)"
        ) from error
    tensors, described = _contents(model, values or {})
    quantizers = {name: _quantizer_record(q) for name, q in input_quantizers(model)}
    scaled = any("scale" in spec for spec in described.values())
    metadata = {
        "format": "snapset",
        "snapset.version": str(FORMAT_VERSION) if quantizers or scaled else "1",
        "snapset.constrained": json.dumps(described),
    }
    if quantizers:
        metadata["snapset.quantizers"] = json.dumps(quantizers)
    target = Path(path)
    _replace(target, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
    return target


def _contents(
    model: nn.Module, declared: Mapping[str, ValueSet | list[float] | tuple[float, ...]]
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """The tensors to write and the description of the packed ones, all checked."""
    check_values(model)  # flip parameters: refused off their sets, re-projected after .double()
    slots = _slots(model)
    plain = _plain_state(model, slots)
    unknown = sorted(set(declared) - set(plain))
    if unknown:
        names = list(plain)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise ValueError(
            f"save(values=...) names {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not a plain tensor of "
            f"{type(model).__name__}; its plain tensors: {shown or 'none'}"
        )
    tensors: dict[str, Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    for name, slot in slots.items():
        method = slot.tensor.constraint.method
        tensors[name], described[name] = _packed(name, slot.values, slot.hard(), method, _OFF_SET)
        alpha = slot.scales()
        if slot.scale is not None and alpha is not None:
            _add_scales(tensors, described, name, slot.scale.scaling, alpha)
    objects = _tensor_objects(model)
    for name, tensor in plain.items():
        if name in tensors:
            raise ValueError(f"state_dict entry '{name}' clashes with a constrained tensor's name")
        if name in declared:
            declared_set = ValueSet(declared[name])
            tensors[name], described[name] = _packed(
                name, declared_set, tensor, HARDENED, _NOT_DECLARED_SET
            )
            continue
        mark = hardened_values(objects[name]) if name in objects else None
        if mark is not None:
            try:
                scaled = hardened_scales(objects[name])
                members = tensor if scaled is None else scaled_members(tensor, mark, *scaled)
                tensors[name], described[name] = _packed(name, mark, members, HARDENED, _CHANGED)
                if scaled is not None:
                    scale, alpha = scaled
                    _add_scales(tensors, described, name, scale.scaling, alpha.to(tensor.dtype))
                continue
            except (ValueError, TypeError) as error:  # trained or cast since harden_
                warnings.warn(
                    f"snapset.torch.save writes '{name}' unpacked, as it is: {error}", stacklevel=3
                )
        # clone: safetensors refuses tensors that share memory (tied weights)
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    return tensors, described


_OFF_SET = (
    f"{NOT_BY_FLIP_OPTIMIZER}: train flip parameters with snapset.torch.Bop "
    "(snapset.torch.param_groups routes them) or assign members of the set. Nothing was written."
)
_NOT_DECLARED_SET = (
    "Name the set its values come from, or leave it out of values=. Nothing was written."
)
_CHANGED = "harden_ left members of the set in it; it changed since."


def _packed(
    name: str, values: ValueSet, value: Tensor, method: str, fix: str
) -> tuple[Tensor, dict[str, Any]]:
    """The packed codes of ``value`` and their description; ``OutsideSetError`` (with ``fix``)
    if an entry is not a member of ``values`` as the tensor's dtype holds it."""
    if not value.is_floating_point():
        raise TypeError(f"'{name}' is {value.dtype}; a set's values live in float tensors")
    try:
        codes, outside = _set_codes(values, value)
    except ValueError as error:  # a set that the tensor's dtype cannot hold
        raise ValueError(f"'{name}' is {value.dtype}, which cannot hold its set: {error}") from None
    count = int(outside.sum())
    if count:
        example = float(value.detach().reshape(-1).cpu()[outside][0])
        raise outside_set_error(f"'{name}'", values, count, example, fix)
    radix = radix_for(len(values))
    description = {
        "values": list(values.values),
        "shape": list(value.shape),
        "dtype": str(value.dtype).removeprefix("torch."),
        "method": method,
        "group": radix.group,
    }
    return torch.from_numpy(pack_codes(codes.numpy(), radix)), description


def _add_scales(
    tensors: dict[str, Tensor],
    described: dict[str, dict[str, Any]],
    name: str,
    scaling: Scaling,
    alpha: Tensor,
) -> None:
    """Store the scales of the packed tensor ``name`` beside its codes, in its dtype."""
    described[name]["scale"] = {"granularity": scaling.granularity, "mode": scaling.mode}
    dtype = _FLOAT_NAMES[described[name]["dtype"]]
    tensors[name + SCALES] = alpha.detach().to(dtype).cpu().contiguous().clone()


def _quantizer_record(quantizer: Quantize) -> dict[str, Any]:
    """What a file records of an input quantizer: the arguments that build it again."""
    scaling = quantizer.scaling
    scale: str | float | None = None
    if scaling is not None:
        scale = scaling.value if scaling.value is not None else scaling.granularity
    return {
        "values": list(quantizer.values.values),
        "method": quantizer.method,
        "estimator": quantizer.estimator,
        "scale": scale,
        "scale_mode": None if scaling is None else scaling.mode,
        "feature_axis": quantizer.feature_axis,
        "num_features": quantizer.num_features,
        "dtype": str(quantizer.rounding.table.dtype).removeprefix("torch."),
    }


def _replace(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new file through ``write`` under a temporary name, check that ``load`` reads its
    header, and rename it to ``target``; on any failure remove it and leave ``target`` as it was."""
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # Created with 0o666, which the kernel narrows by the umask as for any new file: its mode
    # is the umask's answer, read without os.umask's process-wide set-and-restore (a race with
    # other threads). The writer leaves 0o600 (safetensors does), which would hide the file
    # from other users and containers, so that mode is put back.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(temporary.stat().st_mode)
        write(temporary)
        os.chmod(temporary, mode)
        with temporary.open("rb") as handle:
            _File(target, handle)  # never leave a file that load refuses (caps, dims)
        os.replace(temporary, target)
    except SnapsetFileError as error:
        temporary.unlink(missing_ok=True)
        raise ValueError(f"snapset cannot save this model: {error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ----- reading a file safely -------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class _Packed:
    values: ValueSet
    shape: tuple[int, ...]
    dtype: torch.dtype
    method: str
    radix: Radix
    #: A scaled tensor's scaling (None: unscaled).
    scaling: Scaling | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


class _File:
    """A file opened once: its checked header, and its tensors read through the same handle,
    so that what is read is one whole file even while another process replaces the path."""

    def __init__(self, path: Path, handle: BufferedReader) -> None:
        self.path = path
        self._handle = handle
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SnapsetFileError(f"{path}: {size} bytes is too short for a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise SnapsetFileError(
                f"{path}: the header claims {length} bytes but the file has {size - 8} after "
                f"the length field (truncated, not a safetensors file, or over the "
                f"{MAX_HEADER_BYTES:,} bytes a header may take)"
            )
        self.data_start = 8 + length
        header = _parse_json(path, handle.read(length), "header")
        if not isinstance(header, dict):
            raise SnapsetFileError(f"{path}: damaged header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if len(header) > MAX_TENSORS:
            raise SnapsetFileError(
                f"{path}: the header lists {len(header):,} tensors, more than the "
                f"{MAX_TENSORS:,} a snapset file may hold"
            )
        self.entries = {
            name: _entry(path, name, spec, size - self.data_start) for name, spec in header.items()
        }
        sets = _Sets()
        self.packed = _packed_entries(path, metadata, self.entries, sets)
        #: The entries that hold a packed tensor's scales (not tensors of the model).
        self.scale_names = {
            name + SCALES for name, packed in self.packed.items() if packed.scaling is not None
        }
        self.quantizers = _quantizer_entries(path, metadata, self.entries, sets)

    def read(self, name: str) -> Tensor:
        """The tensor ``name`` as the file stores it, in new memory."""
        entry = self.entries[name]
        self._handle.seek(self.data_start + entry.start)
        raw = bytearray(entry.end - entry.start)
        if self._handle.readinto(raw) != len(raw):
            raise SnapsetFileError(f"{self.path}: tensor '{name}' is cut short (truncated file)")
        if entry.dtype == torch.bool and raw and np.frombuffer(raw, np.uint8).max() > 1:
            raise SnapsetFileError(
                f"{self.path}: bool tensor '{name}' holds bytes other than 0 and 1 (damaged)"
            )
        if not raw:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return torch.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape)

    def members(self, name: str, dtype: torch.dtype | None = None) -> Tensor:
        """The members ``v`` of a packed tensor's set, in ``dtype`` (default: the file's),
        marked as ``harden_`` marks a plain tensor of set values."""
        packed = self.packed[name]
        data = self.read(name).numpy()
        try:
            codes = unpack_codes(data, packed.radix, packed.count)
            table = _table(packed.values, dtype or packed.dtype)
        except (ValueError, TypeError) as error:  # impossible codes, or a dtype that cannot hold
            raise SnapsetFileError(f"{self.path}: tensor '{name}': {error}") from None
        value = table[torch.from_numpy(codes)].reshape(packed.shape)
        mark_hardened(value, packed.values)
        return value

    def scales(self, name: str, dtype: torch.dtype | None = None) -> Tensor | None:
        """The scales ``alpha`` of a packed tensor in ``dtype`` (None: unscaled), checked to be
        finite and > 0 there."""
        packed = self.packed[name]
        if packed.scaling is None:
            return None
        alpha = self.read(name + SCALES).to(dtype or packed.dtype)
        bad = ~(alpha.isfinite() & (alpha > 0))
        if bool(bad.any()):
            where = f"the scales of '{name}'"
            raise SnapsetFileError(
                f"{self.path}: {bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} "
                "The file is damaged (or its scales do not fit this dtype): save the model again."
            )
        return alpha

    def decode(self, name: str, dtype: torch.dtype | None = None) -> Tensor:
        """The exact values of a packed tensor, ``alpha * v`` for a scaled one, in ``dtype``,
        marked as ``harden_`` marks what it makes plain (with the scales, for a scaled one)."""
        members = self.members(name, dtype)
        alpha = self.scales(name, dtype)
        packed = self.packed[name]
        if alpha is None or packed.scaling is None:
            return members
        scale = Scale(packed.scaling, packed.values, members)
        value = scale.expand(members, alpha)
        mark_hardened(value, packed.values, (scale, alpha))
        return value


def _parse_json(path: Path, text: Any, what: str) -> Any:
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, TypeError, RecursionError) as error:
        # ValueError: broken JSON or UTF-8, or an integer literal past Python's digit limit;
        # TypeError: not a string at all; RecursionError: nested deeper than Python recurses.
        raise SnapsetFileError(f"{path}: damaged {what} ({str(error)[:200]})") from None


def _entry(path: Path, name: str, spec: object, data_size: int) -> _Entry:
    def bad(why: str) -> SnapsetFileError:
        return SnapsetFileError(f"{path}: damaged header entry '{name}': {why}")

    if not isinstance(spec, dict):
        raise bad("not a JSON object")
    name_of_dtype = spec.get("dtype")
    dtype = _DTYPES.get(name_of_dtype) if isinstance(name_of_dtype, str) else None
    if dtype is None:
        raise bad(f"unknown dtype {_clip(spec.get('dtype'))}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    try:
        shape = _shape(shape)
    except ValueError as error:
        raise bad(str(error)) from None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"data_offsets {_clip(offsets)} are not two increasing integers")
    start, end = offsets
    # Python integers: a hostile shape cannot overflow into a small number.
    expected = math.prod(shape) * dtype.itemsize
    if end - start != expected:
        raise bad(
            f"shape {list(shape)} of {dtype} needs {expected} bytes, the offsets give {end - start}"
        )
    if end > data_size:
        raise bad(f"its bytes end at {end}, past the file's {data_size} bytes of data (truncated)")
    return _Entry(dtype, shape, start, end)


def _shape(shape: object) -> tuple[int, ...]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_count(n) for n in shape)
        # torch's strides: the product of the dimensions (zeros counted as ones) is an int64
        or math.prod(max(n, 1) for n in shape) > _LARGEST
    ):
        raise ValueError(
            f"shape {_clip(shape)} is not a list of at most {MAX_DIMS} non-negative integers "
            "whose product fits in int64"
        )
    return tuple(shape)


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut short for a message: a hostile header may hold huge values."""
    if isinstance(value, (list, dict, str)) and len(value) > limit:
        return f"<a {type(value).__name__} of {len(value):,} entries>"
    if isinstance(value, list) and any(isinstance(n, int) and n.bit_length() > 256 for n in value):
        return f"<a list of {len(value)} entries with huge integers>"
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


class _Sets:
    """The value sets a header names, each built (sorted, checked) once; the distinct ones
    together hold at most ``MAX_DISTINCT_VALUES`` values."""

    def __init__(self) -> None:
        self._known: dict[tuple[float, ...], ValueSet] = {}
        self._fits: set[tuple[ValueSet, torch.dtype]] = set()
        self._total = 0

    def read(self, raw: object, dtype: torch.dtype) -> ValueSet:
        if (
            not isinstance(raw, list)
            or len(raw) > MAX_VALUES
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        ):
            raise ValueError(
                f"values {_clip(raw)} are not a list of at most {MAX_VALUES:,} numbers"
            )
        key = tuple(raw)
        values = self._known.get(key)
        if values is None:
            self._total += len(raw)
            if self._total > MAX_DISTINCT_VALUES:
                raise ValueError(
                    f"its sets hold more than the {MAX_DISTINCT_VALUES:,} distinct values a "
                    "snapset file may hold"
                )
            values = self._known[key] = ValueSet(raw)
        if (values, dtype) not in self._fits:
            _table(values, dtype)  # refuses a set that merges or overflows in the dtype
            self._fits.add((values, dtype))
        return values


_FIELDS = ("values", "shape", "dtype", "method", "group")


def _packed_entries(
    path: Path, metadata: object, entries: dict[str, _Entry], sets: _Sets
) -> dict[str, _Packed]:
    if not isinstance(metadata, dict) or metadata.get("format") != "snapset":
        raise SnapsetFileError(f"{path}: not a snapset file (no 'format: snapset' in its metadata)")
    version = metadata.get("snapset.version")
    if version not in READ_VERSIONS:
        raise SnapsetFileError(
            f"{path}: snapset file format version {_clip(version)}; this snapset reads versions "
            f"{' and '.join(READ_VERSIONS)} (upgrade snapset to read newer files)"
        )
    described = _parse_json(
        path, metadata.get("snapset.constrained", "{}"), "'snapset.constrained' metadata"
    )
    if not isinstance(described, dict):
        raise SnapsetFileError(f"{path}: damaged 'snapset.constrained' metadata (not an object)")
    packed = {}
    for name, spec in described.items():
        try:
            packed[name] = _packed_entry(name, spec, entries, sets)
        except (ValueError, TypeError) as error:
            raise SnapsetFileError(f"{path}: constrained tensor '{name}': {error}") from None
    return packed


def _packed_entry(name: str, spec: object, entries: dict[str, _Entry], sets: _Sets) -> _Packed:
    entry = entries.get(name)
    if entry is None:
        raise ValueError("its codes are missing")
    if not isinstance(spec, dict) or not all(field in spec for field in _FIELDS):
        raise ValueError(f"its description is not an object with fields {', '.join(_FIELDS)}")
    shape = _shape(spec["shape"])
    dtype = _FLOAT_NAMES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"unknown dtype {_clip(spec['dtype'])}")
    if not isinstance(spec["method"], str):
        raise ValueError(f"method {_clip(spec['method'])} is not a string")
    values = sets.read(spec["values"], dtype)
    if not _is_count(spec["group"]):
        raise ValueError(f"group {_clip(spec['group'])} is not a positive integer")
    radix = Radix(len(values), spec["group"])
    count = math.prod(shape)
    if entry.dtype != torch.uint8 or entry.shape != (radix.nbytes(count),):
        raise ValueError(
            f"{count} codes of {len(values)} values take {radix.nbytes(count)} bytes, the file "
            f"holds {entry.dtype} of shape {list(entry.shape)}"
        )
    if "scale" not in spec:
        return _Packed(values, shape, dtype, spec["method"], radix)
    scaling = _scaling(spec["scale"])
    layout = scaling.layout(shape, 0, 1 if len(shape) >= 2 else None)
    scales = entries.get(name + SCALES)
    if scales is None or scales.dtype != dtype or scales.shape != layout.scale_shape:
        held = "none" if scales is None else f"{scales.dtype} of shape {list(scales.shape)}"
        raise ValueError(
            f"scale={scaling.granularity!r} on shape {list(shape)} needs scales "
            f"'{name}{SCALES}' of {dtype} and shape {list(layout.scale_shape)}, the file holds "
            f"{held} (a damaged file: save the model again)"
        )
    return _Packed(values, shape, dtype, spec["method"], radix, scaling)


def _scaling(raw: object) -> Scaling:
    """The scaling a packed tensor's ``scale`` field describes (``ValueError`` if none)."""
    if not isinstance(raw, dict) or set(raw) != {"granularity", "mode"}:
        raise ValueError(f"scale {_clip(raw)} is not an object with fields granularity, mode")
    granularity, mode = raw["granularity"], raw["mode"]
    check_granularity(granularity, SCALE_GRANULARITIES, "a group size along the input axis")
    if not isinstance(mode, str) or mode not in SCALE_MODES:
        raise ValueError(f"scale mode {_clip(mode)} is none of {', '.join(SCALE_MODES)}")
    return Scaling(granularity, mode)


_QUANTIZER_FIELDS = (
    "values",
    "method",
    "estimator",
    "scale",
    "scale_mode",
    "feature_axis",
    "num_features",
    "dtype",
)


@dataclass(frozen=True)
class _QuantizerEntry:
    """An input quantizer a file records: what builds it, and the names of its state."""

    build: Callable[[], Quantize]
    record: dict[str, Any]
    state: dict[str, str]  # the quantizer's state_dict key -> the file's tensor name


def _quantizer_entries(
    path: Path, metadata: dict[str, Any], entries: dict[str, _Entry], sets: _Sets
) -> dict[str, _QuantizerEntry]:
    records = _parse_json(
        path, metadata.get("snapset.quantizers", "{}"), "'snapset.quantizers' metadata"
    )
    if not isinstance(records, dict):
        raise SnapsetFileError(f"{path}: damaged 'snapset.quantizers' metadata (not an object)")
    quantizers = {}
    for layer, record in records.items():
        try:
            quantizers[layer] = _quantizer_entry(layer, record, entries, sets)
        except (ValueError, TypeError) as error:
            raise SnapsetFileError(f"{path}: input quantizer of '{layer}': {error}") from None
    return quantizers


def _quantizer_entry(
    layer: str, record: object, entries: dict[str, _Entry], sets: _Sets
) -> _QuantizerEntry:
    if not isinstance(record, dict) or set(record) != set(_QUANTIZER_FIELDS):
        raise ValueError(f"its record is not an object with fields {', '.join(_QUANTIZER_FIELDS)}")
    dtype = _FLOAT_NAMES.get(record["dtype"]) if isinstance(record["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"unknown dtype {_clip(record['dtype'])}")
    values = sets.read(record["values"], dtype)
    for field in ("method", "estimator", "scale_mode"):
        if not isinstance(record[field], str) and record[field] is not None:
            raise ValueError(f"{field} {_clip(record[field])} is not a string")
    axis, count = record["feature_axis"], record["num_features"]
    if not isinstance(axis, int) or isinstance(axis, bool) or abs(axis) > MAX_DIMS:
        raise ValueError(f"feature_axis {_clip(axis)} is not an axis of a tensor")
    prefix = f"{layer}.{INPUT_QUANTIZER}." if layer else f"{INPUT_QUANTIZER}."  # "": the model
    start = entries.get(prefix + "start")
    # a learned per-channel scale holds num_features entries: the file's tensor bounds them
    if count is not None and (not _is_count(count) or start is None or start.shape != (count,)):
        raise ValueError(
            f"num_features {_clip(count)} does not match its learned scales "
            f"'{prefix}start' ({'missing' if start is None else list(start.shape)})"
        )

    def build() -> Quantize:
        quantizer = Quantize(
            values,
            record["method"],
            estimator=record["estimator"],
            scale=record["scale"],
            scale_mode=record["scale_mode"],
            feature_axis=axis,
            num_features=count,
        )
        return quantizer.to(dtype)

    built = build()
    state = {key: prefix + key for key in built.state_dict()}
    for key, tensor in built.state_dict().items():
        entry = entries.get(state[key])
        if entry is None or entry.shape != tuple(tensor.shape) or entry.dtype != tensor.dtype:
            raise ValueError(
                f"its {key} '{state[key]}' is missing or not {tensor.dtype} of shape "
                f"{list(tensor.shape)}"
            )
    return _QuantizerEntry(build, _quantizer_record(built), state)


# ----- load -----------------------------------------------------------------------------------


def load(model: nn.Module | None, path: str | os.PathLike[str]) -> Any:
    """Load a file written by ``save`` into ``model`` (returned), or into a dict.

    ``model`` may be constrained the same way as the saved one (same value sets; the method may
    differ, so a file from a ``flip``-trained model loads into an ``ste`` model and back), or a
    plain model of the same architecture, which then holds the exact values, as if hardened
    (its tensors carry ``harden_``'s mark, so ``save`` packs them again and ``summary`` shows
    their sets). Its outputs in eval mode equal the saved model's bit for bit. A constrained
    tensor gets the stored tensor that shows the saved values (the latent at the value, or
    logits peaked at it).

    A scaled tensor (``w = alpha * v``) loads into a model constrained with the same scaling
    (``scale`` and ``scale_mode``), whose learned ``alpha`` takes the saved scales, or into a
    plain tensor, which then holds ``alpha * v`` bit for bit, marked with its set and scales as
    ``harden_`` marks it. A statistic scale (``absmean``, ``absmax``) recomputes its scales from
    the float weight, which the file does not hold: such a target is given ``alpha * v`` as its
    float weight, and the load is refused unless that gives back the saved scales exactly.

    Input quantizers that the file records (see ``quantize_inputs_``) must match the model's,
    layer by layer; a layer that has none gets one, built from the file, so that a plain model
    computes what the saved one computes.

    With ``model=None`` it returns a ``dict`` of tensors that a plain (hardened) model's
    ``load_state_dict`` accepts: the packed tensors decoded to their exact values (``alpha *
    v`` for a scaled one) and dtype, under their names (``"0.weight"``), and every other tensor
    as saved (an input quantizer's learned scale among them).

    The file is opened once and read whole through that handle (a ``save`` racing on the same
    path never mixes two files), and everything is decoded and checked before the first tensor
    of ``model`` changes. Raises ``SnapsetFileError`` (a ``ValueError``) for a damaged or
    hostile file, or one whose names, shapes, value sets, scales or input quantizers do not
    match ``model``; nothing in ``model`` changes then. Needs no extra: it reads safetensors
    itself.

    Examples:
        >>> import os, tempfile, torch, snapset, snapset.torch as st
        >>> model = st.constrain(torch.nn.Linear(6, 3), "weight", snapset.Ternary()).eval()
        >>> path = st.save(model, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
        >>> plain = st.load(torch.nn.Linear(6, 3), path)
        >>> x = torch.randn(2, 6)
        >>> torch.equal(plain(x), model(x))
        True
        >>> scaled = st.constrain(torch.nn.Linear(6, 3), "weight", snapset.Sign(), scale="channel")
        >>> path = st.save(scaled.eval(), path)
        >>> torch.equal(st.load(torch.nn.Linear(6, 3), path)(x), scaled(x))
        True
    """
    with Path(path).open("rb") as handle:
        file = _File(Path(path), handle)
        if model is None:
            return {
                name: _read_any(file, name) for name in file.entries if name not in file.scale_names
            }
        writes, installs = _plan(file, model)
    with torch.no_grad():
        for target, value in writes:
            target.copy_(value)
    for target, value in writes:
        # a plain tensor that now holds a packed set's values is marked as harden_ marks it;
        # one that now holds a file's plain values loses an older mark
        mark_hardened(target, hardened_values(value), hardened_scales(value))
    for layer, quantizer in installs:
        quantize_inputs_(model, quantizer, modules=(nn.Module,), filter_fn=_named(layer))
    return model


def _read_any(file: _File, name: str) -> Tensor:
    return file.decode(name) if name in file.packed else file.read(name)


def _named(layer: str) -> Callable[[nn.Module, str], bool]:
    return lambda module, name: name == layer


def _plan(
    file: _File, model: nn.Module
) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[str, Quantize]]]:
    """Every (target, new value) pair and every input quantizer to put in, all decoded and
    checked before anything is written."""
    slots = _slots(model)
    plain = _plain_state(model, slots)
    installs = _quantizers_to_install(file, model)
    wanted = set(slots) | set(plain) | file.scale_names
    wanted |= {name for layer, _ in installs for name in file.quantizers[layer].state.values()}
    missing, unexpected = sorted(wanted - set(file.entries)), sorted(set(file.entries) - wanted)
    if missing or unexpected:
        raise SnapsetFileError(
            f"{file.path} does not fit {type(model).__name__}: "
            + "; ".join(
                f"{what}: {', '.join(names)}"
                for what, names in (("missing", missing), ("unexpected", unexpected))
                if names
            )
        )
    writes: list[tuple[Tensor, Tensor]] = []
    for name, slot in slots.items():
        _check_fits(file, name, slot.shape, slot.values)
        _check_scaling(file, name, slot.scale)
        if name in file.packed:
            members, alpha = file.members(name, slot.dtype), file.scales(name, slot.dtype)
        else:
            members, alpha = _plain_members(file, name, slot.dtype, slot.values), None
        writes += slot.writes(members, alpha)
    objects = _tensor_objects(model)
    for name, tensor in plain.items():
        _check_fits(file, name, tuple(tensor.shape), None)
        if name in file.packed:
            value = file.decode(name, tensor.dtype)
        else:
            value = file.read(name).to(tensor.dtype)
        # the parameter or buffer itself, which keeps the mark (state_dict's view would not)
        writes.append((objects.get(name, tensor), value))
    for layer, quantizer in installs:
        entry = file.quantizers[layer]
        quantizer.load_state_dict({key: file.read(name) for key, name in entry.state.items()})
    for layer in file.quantizers:
        _check_quantizer_scales(file, layer)
    return writes, installs


def _check_fits(file: _File, name: str, shape: tuple[int, ...], values: ValueSet | None) -> None:
    packed = file.packed.get(name)
    file_shape = packed.shape if packed is not None else file.entries[name].shape
    if file_shape != shape:
        raise SnapsetFileError(
            f"{file.path}: '{name}' has shape {list(file_shape)} in the file but {list(shape)} in "
            "the model"
        )
    if values is not None and packed is not None and packed.values != values:
        raise SnapsetFileError(
            f"{file.path}: '{name}' holds values of {packed.values!r} but the model constrains it "
            f"to {values!r}"
        )


def _check_scaling(file: _File, name: str, scale: Scale | None) -> None:
    packed = file.packed.get(name)
    saved = None if packed is None else packed.scaling
    wanted = None if scale is None else scale.scaling
    if saved != wanted:
        raise SnapsetFileError(
            f"{file.path}: '{name}' is {_scaled(saved)} in the file but {_scaled(wanted)} in the "
            "model; constrain it as the saved model was (scale=..., scale_mode=...), or load the "
            "file into a plain model"
        )


def _scaled(scaling: Scaling | None) -> str:
    if scaling is None:
        return "unscaled"
    return f"scaled (scale={scaling.granularity!r}, scale_mode={scaling.mode!r})"


def _plain_members(file: _File, name: str, dtype: torch.dtype, values: ValueSet) -> Tensor:
    """A plain tensor of the file that loads into a constrained tensor: members of its set."""
    value = file.read(name).to(dtype)
    outside = _set_codes(values, value)[1]
    if bool(outside.any()):
        raise SnapsetFileError(
            f"{file.path}: '{name}' is a plain tensor in the file with entries outside "
            f"{values!r} (e.g. {value.reshape(-1)[outside][0].item()}), so it cannot load "
            "into the constrained model"
        )
    return value


def _quantizers_to_install(file: _File, model: nn.Module) -> list[tuple[str, Quantize]]:
    """The input quantizers the file records and ``model`` lacks, built; ``SnapsetFileError``
    if the model's input quantizers and the file's differ."""
    present = dict(input_quantizers(model))
    extra = sorted(set(present) - set(file.quantizers))
    if extra:
        raise SnapsetFileError(
            f"{file.path} records no input quantizer of {', '.join(map(repr, extra))}, which the "
            "model has: remove them (snapset.torch.remove_input_quantizers_) or load a file "
            "saved with them"
        )
    installs = []
    for layer, entry in file.quantizers.items():
        if layer in present:
            mine = _quantizer_record(present[layer])
            differ = [
                f"{field} ({_clip(entry.record[field])} in the file, {_clip(mine[field])} in "
                "the model)"
                for field in _QUANTIZER_FIELDS
                if field != "dtype" and mine[field] != entry.record[field]
            ]
            if differ:
                raise SnapsetFileError(
                    f"{file.path}: the input quantizer of '{layer}' differs from the model's in "
                    f"{', '.join(differ)}; build the model's quantizers as the saved model's "
                    "were, or load into a model without them"
                )
            continue
        try:
            target = model.get_submodule(layer)
        except AttributeError:
            raise SnapsetFileError(
                f"{file.path} records an input quantizer of '{layer}', which "
                f"{type(model).__name__} does not have"
            ) from None
        if hasattr(target, INPUT_QUANTIZER):
            raise SnapsetFileError(
                f"{file.path}: '{layer}' needs an input quantizer, and its attribute "
                f"'{INPUT_QUANTIZER}' is taken by something else; rename it"
            )
        installs.append((layer, entry.build()))
    return installs


def _check_quantizer_scales(file: _File, layer: str) -> None:
    """A recorded learned scale must be finite and > 0 (the quantizer would refuse it)."""
    state = file.quantizers[layer].state
    if "start" not in state or "log_gain" not in state:
        return
    alpha = file.read(state["start"]) * file.read(state["log_gain"]).exp()
    bad = ~(alpha.isfinite() & (alpha > 0))
    if bool(bad.any()):
        where = f"the learned scales of the input quantizer of '{layer}'"
        raise SnapsetFileError(
            f"{file.path}: {bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} "
            "The file is damaged: save the model again."
        )
