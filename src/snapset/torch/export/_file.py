"""Packed model files: ``save`` and ``load`` in safetensors, with no pickle anywhere.

A file holds, for each constrained tensor, its value set, shape, dtype and its codes packed by
``snapset._packing`` (close to ``log2(k)`` bits a weight), and every other ``state_dict``
tensor as it is. The safetensors header's ``__metadata__`` carries::

    "format": "snapset", "snapset.version": "1",
    "snapset.constrained": JSON {name: {"values": [...], "shape": [...], "dtype": "float32",
                                        "method": "ste", "group": g}}

and the tensor ``name`` is the ``uint8`` stream of codes. Any safetensors reader opens the file.

Loading reads and checks the header itself before it allocates anything: a truncated file, a
damaged header, a tensor that claims more bytes than the file holds, a shape or value set that
does not match the model, each raise ``SnapsetFileError`` naming the problem. All tensors
are decoded into new memory first and copied into the model only when every one is ready, so a
failed load leaves the model exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._packing import Radix, pack_codes, radix_for, unpack_codes
from ..._sets import ValueSet
from .._constrain import ConstrainedTensor, constrained_tensors

__all__ = ["SnapsetFileError", "load", "save"]

FORMAT_VERSION = 1
#: A header larger than this is refused unread (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20

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


class SnapsetFileError(ValueError):
    """A snapset file that is damaged, hostile, or does not fit the model it is loaded into."""


# ----- what a model holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One constrained tensor of a model, as a file holds it: its exact values' codes."""

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

    def codes(self) -> Tensor:
        return self.tensor.constraint.codes(self.tensor.stored)

    def new_stored(self, value: Tensor) -> Tensor:
        """The tensor to store so that the slot shows ``value``; checked to be exact."""
        stored = self.tensor.constraint.right_inverse(value)
        if not torch.equal(self.tensor.constraint.hard(stored), value):
            raise SnapsetFileError(
                f"'{self.tensor.name}': the values do not round-trip its constraint"
            )
        return stored


def _slots(model: nn.Module) -> dict[str, _Slot]:
    return {tensor.name: _Slot(tensor) for tensor in constrained_tensors(model)}


def _plain_state(model: nn.Module, slots: dict[str, _Slot]) -> dict[str, Tensor]:
    """``state_dict`` entries that are not the stored tensor of a slot."""
    skip = set()
    for name, slot in slots.items():
        owner = name[: -len(slot.tensor.tensor_name)]  # "0." of "0.weight"
        skip.add(f"{owner}parametrizations.{slot.tensor.tensor_name}.original")
    return {k: v for k, v in model.state_dict().items() if k not in skip}


# ----- save -----------------------------------------------------------------------------------


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to a safetensors file with its constrained tensors packed; return the path.

    Each tensor constrained by snapset (a ``GF2Linear`` weight too) is stored as its
    value set, shape, dtype and codes packed at close to ``log2(k)`` bits a weight (1 bit for
    two values, 1.59 for ternary, 2 for four values); every other ``state_dict`` tensor (biases,
    float layers, buffers) is stored as it is. What is saved is the values the model computes
    with in eval mode: latents, logits and optimizer state are not (save a ``state_dict`` with
    ``torch.save`` to resume training). The file is written to a temporary name and renamed, so
    an interrupted save never leaves a half-written file under ``path``.

    Examples:
        >>> import os, tempfile, torch, snapset, snapset.torch as st
        >>> model = st.constrain(torch.nn.Linear(1000, 10), "weight", snapset.Sign())
        >>> path = st.save(model, os.path.join(tempfile.mkdtemp(), "model.safetensors"))
        >>> packed = st.load(None, path)  # a dict of exact tensors
        >>> sorted(packed["weight"].unique().tolist()), packed["bias"].shape
        ([-1.0, 1.0], torch.Size([10]))
    """
    from safetensors.torch import save_file

    slots = _slots(model)
    tensors: dict[str, Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    for name, slot in slots.items():
        radix = radix_for(len(slot.values))
        codes = slot.codes().detach().cpu().numpy()
        tensors[name] = torch.from_numpy(pack_codes(codes, radix))
        described[name] = {
            "values": list(slot.values.values),
            "shape": list(slot.shape),
            "dtype": str(slot.dtype).removeprefix("torch."),
            "method": slot.tensor.constraint.method,
            "group": radix.group,
        }
    for name, tensor in _plain_state(model, slots).items():
        if name in tensors:
            raise ValueError(f"state_dict entry '{name}' clashes with a constrained tensor's name")
        # clone: safetensors refuses tensors that share memory (tied weights)
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    metadata = {
        "format": "snapset",
        "snapset.version": str(FORMAT_VERSION),
        "snapset.constrained": json.dumps(described),
    }
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


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

    @property
    def count(self) -> int:
        return math.prod(self.shape)


class _File:
    """A checked header and a way to read one tensor's bytes; nothing big is read up front."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SnapsetFileError(f"{path}: {size} bytes is too short for a safetensors file")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise SnapsetFileError(
                    f"{path}: the header claims {length} bytes but the file has {size - 8} after "
                    "the length field (truncated or not a safetensors file)"
                )
            raw = handle.read(length)
        self.data_start = 8 + length
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SnapsetFileError(f"{path}: damaged header ({error})") from None
        if not isinstance(header, dict):
            raise SnapsetFileError(f"{path}: damaged header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        self.entries = {
            name: _entry(path, name, spec, size - self.data_start) for name, spec in header.items()
        }
        self.packed = _packed_entries(path, metadata, self.entries)

    def read(self, name: str) -> Tensor:
        entry = self.entries[name]
        with self.path.open("rb") as handle:
            handle.seek(self.data_start + entry.start)
            raw = bytearray(handle.read(entry.end - entry.start))
        if len(raw) != entry.end - entry.start:
            raise SnapsetFileError(f"{self.path}: tensor '{name}' is cut short (truncated file)")
        flat = (
            torch.frombuffer(raw, dtype=entry.dtype) if raw else torch.empty(0, dtype=entry.dtype)
        )
        return flat.reshape(entry.shape)

    def decode(self, name: str, dtype: torch.dtype | None = None) -> Tensor:
        """The exact values of a packed tensor, in ``dtype`` (default: the file's)."""
        packed = self.packed[name]
        data = self.read(name).numpy()
        dtype = dtype or packed.dtype
        try:
            codes = unpack_codes(data, packed.radix, packed.count)
            # the core's table: the numbers as dtype holds them, so this cast rounds nothing
            table = torch.from_numpy(packed.values.tables(str(dtype)).values).to(dtype)
        except ValueError as error:  # impossible codes, or a set that dtype cannot hold
            raise SnapsetFileError(f"{self.path}: tensor '{name}': {error}") from None
        return table[torch.from_numpy(codes)].reshape(packed.shape)


def _entry(path: Path, name: str, spec: object, data_size: int) -> _Entry:
    def bad(why: str) -> SnapsetFileError:
        return SnapsetFileError(f"{path}: damaged header entry '{name}': {why}")

    if not isinstance(spec, dict):
        raise bad("not a JSON object")
    name_of_dtype = spec.get("dtype")
    dtype = _DTYPES.get(name_of_dtype) if isinstance(name_of_dtype, str) else None
    if dtype is None:
        raise bad(f"unknown dtype {spec.get('dtype')!r}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"data_offsets {offsets!r} are not two increasing integers")
    start, end = offsets
    # Python integers: a hostile shape cannot overflow into a small number.
    expected = math.prod(shape) * dtype.itemsize
    if end - start != expected:
        raise bad(
            f"shape {shape} of {dtype} needs {expected} bytes, the offsets give {end - start}"
        )
    if end > data_size:
        raise bad(f"its bytes end at {end}, past the file's {data_size} bytes of data (truncated)")
    return _Entry(dtype, tuple(shape), start, end)


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _packed_entries(path: Path, metadata: object, entries: dict[str, _Entry]) -> dict[str, _Packed]:
    if not isinstance(metadata, dict) or metadata.get("format") != "snapset":
        raise SnapsetFileError(f"{path}: not a snapset file (no 'format: snapset' in its metadata)")
    version = metadata.get("snapset.version")
    if version != str(FORMAT_VERSION):
        raise SnapsetFileError(
            f"{path}: snapset file format version {version!r}; this snapset reads version "
            f"{FORMAT_VERSION} (upgrade snapset to read newer files)"
        )
    try:
        described = json.loads(metadata.get("snapset.constrained", "{}"))
    except (TypeError, json.JSONDecodeError) as error:
        raise SnapsetFileError(
            f"{path}: damaged 'snapset.constrained' metadata ({error})"
        ) from None
    if not isinstance(described, dict):
        raise SnapsetFileError(f"{path}: damaged 'snapset.constrained' metadata (not an object)")
    packed = {}
    for name, spec in described.items():
        try:
            packed[name] = _packed_entry(spec, entries.get(name))
        except (ValueError, TypeError, KeyError) as error:
            raise SnapsetFileError(f"{path}: constrained tensor '{name}': {error}") from None
    return packed


def _packed_entry(spec: dict[str, Any], entry: _Entry | None) -> _Packed:
    if entry is None:
        raise ValueError("its codes are missing")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers")
    dtype = _FLOAT_NAMES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"unknown dtype {spec['dtype']!r}")
    values = ValueSet(spec["values"])
    if not _is_count(spec["group"]):
        raise ValueError(f"group {spec['group']!r} is not a positive integer")
    radix = Radix(len(values), spec["group"])
    count = math.prod(shape)
    if entry.dtype != torch.uint8 or entry.shape != (radix.nbytes(count),):
        raise ValueError(
            f"{count} codes of {len(values)} values take {radix.nbytes(count)} bytes, the file "
            f"holds {entry.dtype} of shape {list(entry.shape)}"
        )
    return _Packed(values, tuple(shape), dtype, str(spec["method"]), radix)


# ----- load -----------------------------------------------------------------------------------


def load(model: nn.Module | None, path: str | os.PathLike[str]) -> Any:
    """Load a file written by ``save`` into ``model`` (returned), or into a dict.

    ``model`` may be constrained the same way as the saved one (same value sets; the method may
    differ, so a file from a ``flip``-trained model loads into an ``ste`` model and back), or a
    plain model of the same architecture, which then holds the exact values, as if hardened.
    Its outputs in eval mode equal the saved model's bit for bit. A constrained tensor gets the
    stored tensor that shows the saved values (the latent at the value, or logits peaked at it).

    With ``model=None`` it returns a ``dict`` of tensors that a plain (hardened) model's
    ``load_state_dict`` accepts: the constrained tensors decoded to their exact values and
    dtype, under their names (``"0.weight"``), and every other tensor as saved.

    Raises ``SnapsetFileError`` (a ``ValueError``) for a damaged file, or one whose names,
    shapes or value sets do not match ``model``; nothing in ``model`` changes then.

    Examples:
        >>> import os, tempfile, torch, snapset, snapset.torch as st
        >>> model = st.constrain(torch.nn.Linear(6, 3), "weight", snapset.Ternary()).eval()
        >>> path = st.save(model, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
        >>> plain = st.load(torch.nn.Linear(6, 3), path)
        >>> x = torch.randn(2, 6)
        >>> torch.equal(plain(x), model(x))
        True
    """
    file = _File(Path(path))
    if model is None:
        return {name: _read_any(file, name) for name in file.entries}
    writes = list(_plan(file, model))
    with torch.no_grad():
        for target, value in writes:
            target.copy_(value)
    return model


def _read_any(file: _File, name: str) -> Tensor:
    return file.decode(name) if name in file.packed else file.read(name)


def _plan(file: _File, model: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
    """Every (target, new value) pair, all decoded and checked before anything is written."""
    slots = _slots(model)
    plain = _plain_state(model, slots)
    wanted = set(slots) | set(plain)
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
        value = _value_for(file, name, slot.shape, slot.dtype, slot.values)
        writes.append((slot.tensor.stored, slot.new_stored(value)))
    for name, tensor in plain.items():
        writes.append((tensor, _value_for(file, name, tuple(tensor.shape), tensor.dtype, None)))
    return iter(writes)


def _value_for(
    file: _File, name: str, shape: tuple[int, ...], dtype: torch.dtype, values: ValueSet | None
) -> Tensor:
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
    value = file.decode(name, dtype) if packed is not None else file.read(name).to(dtype)
    if values is not None and packed is None:
        outside = ~torch.from_numpy(values.contains(value.double().numpy()))
        if bool(outside.any()):
            raise SnapsetFileError(
                f"{file.path}: '{name}' is a plain tensor in the file with entries outside "
                f"{values!r} (e.g. {value[outside][0].item()}), so it cannot load into the "
                "constrained model"
            )
    return value
