"""The snapset file format, framework-free: one format that both fronts write and read.

A snapset file is a safetensors file: an 8-byte little-endian header length, a JSON header,
then the tensors' bytes. For each tensor whose values come from a set it holds the set, shape,
dtype and the codes packed by ``snapset._packing`` (close to ``log2(k)`` bits a weight), and
every other tensor as it is. The header's ``__metadata__`` carries::

    "format": "snapset", "snapset.version": "1" (or "2" with scales or input quantizers),
    "snapset.constrained": JSON {name: {"values": [...], "shape": [...], "dtype": "float32",
                                        "method": "ste", "group": g}}

and the tensor ``name`` is the ``uint8`` stream of codes. Any safetensors reader opens the file.
``method`` is the constraint's method, or ``"hardened"`` for a plain tensor of set values (one
that ``harden_`` made, or one whose set the caller declared).

**Names and layouts are PyTorch's**, whichever front wrote the file: ``<layer>.weight`` of shape
``(out, in)`` for a dense layer, ``(out, in / groups, *kernel)`` for a convolution,
``<layer>.bias``; the Keras front transposes its kernels on the way (see
``snapset.keras.save``). A file may list its layers in order (``"snapset.layers"``: JSON
``[{"name": "0", "kind": "dense"}, ...]``), which lets a model whose layers are named otherwise
(a Keras model's ``dense_1`` for PyTorch's ``0``) take it layer by layer.

A scaled tensor (``w = alpha * v``, see ``snapset._scales``) adds ``"scale": {"granularity":
"channel", "mode": "learned"}`` to its description, and its scales ``alpha`` are the float
tensor ``name + ".scales"`` in the tensor's dtype, of the shape the core's layout gives for the
codes' shape with PyTorch's axes (outputs along 0, inputs along 1). The codes are those of
``v``; a statistic scale (``absmean``, ``absmax``) is saved as the scales it computed, so the
file holds what the model computes with in eval mode, as for every method. A model with input
quantizers adds::

    "snapset.quantizers": JSON {layer: {"values": [...], "method": "ste", "estimator": "clip",
                                        "scale": "token", "scale_mode": "absmax",
                                        "feature_axis": -1, "num_features": null,
                                        "dtype": "float32"}}

and a learned scale's state is the plain tensors ``layer + ".input_quantizer.start"``
(``.log_gain``, ``.initialized``), as in a PyTorch model's ``state_dict``.

What a reader promises (``Reader``; each front's ``load`` builds on it):

* **One whole file.** The file is opened once and every byte is read through that handle, so a
  load racing a ``save`` of the same path (which renames a new file over it) sees the old file
  or the new one, never tensors from both.
* **Checked before allocated.** The header is read and checked before anything big is
  allocated; every tensor is decoded into new memory, and the fronts decode all of them before
  the first is copied into a model.
* **Bounded work.** A header may claim at most ``MAX_HEADER_BYTES`` bytes, ``MAX_TENSORS``
  tensors, ``MAX_DIMS`` dimensions a tensor, ``MAX_VALUES`` values a set and
  ``MAX_DISTINCT_VALUES`` values in all its distinct sets together; every check is linear in
  the header (plus a sort of each distinct set).
* **Values in their sets.** Packed tensors decode through their set's table in their dtype, so
  they hold members of the set and nothing else; a set that merges or overflows in that dtype
  is refused, as are bool tensors with bytes other than 0 and 1.
* **Scales that fit.** Scales are finite and > 0, in the shape their granularity gives the
  codes' shape.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ._packing import Radix, pack_codes, radix_for, unpack_codes
from ._scales import SCALE_GRANULARITIES, SCALE_MODES, Scaling, bad_scale_message, check_granularity
from ._sets import ValueSet, round_to_dtype
from ._spec import outside_set_error

__all__ = ["Raw", "Reader", "SnapsetFileError", "write_file"]

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
#: The submodule (PyTorch) or attribute (Keras) of a layer that holds its input quantizer, and
#: the prefix of its state in a file.
INPUT_QUANTIZER = "input_quantizer"

#: safetensors' dtype codes and the dtype names snapset uses for them.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
CODES = {name: code for code, name in DTYPES.items()}
FLOATS = ("float64", "float32", "float16", "bfloat16")
_ITEMSIZE = {"bfloat16": 2, "bool": 1}


class Kind:
    """The kinds of layer that both fronts name alike in a file's layer list (``snapset.layers``),
    so that a layer of one front pairs with its twin of the other; any other layer's kind is
    ``torch.<class>`` or ``keras.<class>``, which pairs only within its front."""

    DENSE = "dense"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    MULTIPLIER = "multiplier"
    EMBEDDING = "embedding"
    BATCHNORM = "batchnorm"
    LAYERNORM = "layernorm"


_LARGEST = 2**63 - 1
_Record = TypeVar("_Record")


def itemsize(dtype: str) -> int:
    """Bytes of one entry of the dtype ``dtype`` (a name of ``DTYPES``)."""
    return _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize


class SnapsetFileError(ValueError):
    """A snapset file that is damaged, hostile, or does not fit the model it is loaded into."""


# ----- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A tensor as a file stores it: its dtype name, shape, and bytes (C order)."""

    dtype: str
    shape: tuple[int, ...]
    data: npt.NDArray[np.uint8]

    @classmethod
    def of(cls, array: npt.NDArray[Any], dtype: str | None = None) -> Raw:
        """The bytes of a numpy array; ``dtype`` names what they are when numpy's own name
        differs (a ``uint16`` array of ``bfloat16`` bits)."""
        name = dtype or array.dtype.name
        if name not in CODES:
            raise TypeError(f"a snapset file holds {', '.join(CODES)}, not {name}")
        shape = tuple(array.shape)  # before ascontiguousarray, which makes a 0-d array 1-d
        return cls(name, shape, np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def write_file(
    path: str | os.PathLike[str], tensors: Mapping[str, Raw], metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` and ``metadata`` as a safetensors file at ``path``; return the path.

    The file is written under a temporary name with the mode a new file gets (``0o666`` less
    the umask), read back to check that ``Reader`` accepts its header, and renamed, so ``path``
    always holds a whole file. The tensors lie in order of decreasing entry size, so each is
    aligned for readers that map the file (the header is padded to 8 bytes, as safetensors
    pads it).
    """
    order = sorted(tensors, key=lambda name: (-itemsize(tensors[name].dtype), name))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        raw = tensors[name]
        header[name] = {
            "dtype": CODES[raw.dtype],
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + raw.data.size],
        }
        offset += raw.data.size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(temporary: Path) -> None:
        with temporary.open("r+b") as handle:
            handle.write(len(text).to_bytes(8, "little"))
            handle.write(text)
            for name in order:
                handle.write(tensors[name].data.data)

    target = Path(path)
    _replace(target, write)
    return target


def _replace(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new file through ``write`` as ``write_atomically`` does, and check that
    ``Reader`` reads its header before it takes ``target``'s name."""

    def write_and_check(temporary: Path) -> None:
        write(temporary)
        with temporary.open("rb") as handle:
            Reader(target, handle)  # never leave a file that load refuses (caps, dims)

    try:
        write_atomically(target, write_and_check)
    except SnapsetFileError as error:
        raise ValueError(f"snapset cannot save this model: {error}") from None


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new file through ``write`` under a temporary name beside ``target``, then rename
    it to ``target``; on any failure remove it and leave ``target`` as it was. Every file that
    snapset writes (its own, ONNX, GGUF) goes through here.

    Examples:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "f.bin"
        >>> write_atomically(target, lambda path: path.write_bytes(b"new"))
        >>> def fails(path):
        ...     path.write_bytes(b"half")
        ...     raise OSError("disk full")
        >>> write_atomically(target, fails)
        Traceback (most recent call last):
        OSError: disk full
        >>> target.read_bytes(), [p.name for p in target.parent.iterdir()]
        (b'new', ['f.bin'])
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # Created with 0o666, which the kernel narrows by the umask as for any new file: its mode
    # is the umask's answer, read without os.umask's process-wide set-and-restore (a race with
    # other threads).
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(temporary.stat().st_mode)
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def set_codes(
    values: ValueSet, value: npt.NDArray[np.floating[Any]], dtype: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Each entry's index in the set as ``dtype`` holds it, and where an entry (NaN included)
    is no member; ``value`` holds the entries of a ``dtype`` tensor widened exactly to float32
    or float64 (a front widens float16 and bfloat16 to float32, whose table then holds the
    same numbers). ``ValueError`` for a set that ``dtype`` cannot hold."""
    flat = np.asarray(value).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    table = values.tables(dtype).values.astype(flat.dtype)
    codes = np.minimum(np.searchsorted(table, flat), len(values) - 1)
    return codes, table[codes] != flat


def holds_members(values: ValueSet, value: npt.NDArray[Any], dtype: str) -> bool:
    """Whether every entry of ``value`` (a ``dtype`` tensor, widened as ``set_codes`` says) is
    a member of ``values`` as ``dtype`` holds them: what a tensor marked as hardened must
    hold to be packed. False for a dtype that cannot hold the set, or is no float.

    Examples:
        >>> import numpy as np, snapset
        >>> holds_members(snapset.Sign(), np.array([1.0, -1.0]), "float32")
        True
        >>> holds_members(snapset.Sign(), np.array([1.0, 0.5]), "float32")
        False
    """
    try:
        return not bool(set_codes(values, value, dtype)[1].any())
    except (ValueError, TypeError):  # a dtype that merges the set's values, or no float
        return False


def describe_scaling(scaling: Scaling | None) -> str:
    """How messages name a tensor's scaling.

    Examples:
        >>> describe_scaling(Scaling("channel")), describe_scaling(None)
        ("scaled (scale='channel', scale_mode='learned')", 'unscaled')
    """
    if scaling is None:
        return "unscaled"
    return f"scaled (scale={scaling.granularity!r}, scale_mode={scaling.mode!r})"


def encode(
    name: str,
    values: ValueSet,
    value: npt.NDArray[np.floating[Any]],
    dtype: str,
    method: str,
    fix: str,
) -> tuple[Raw, dict[str, Any]]:
    """The packed codes of ``value`` (a ``dtype`` tensor, widened as ``set_codes`` says) and their
    description; ``OutsideSetError`` (with ``fix``) if an entry is not a member of ``values``
    as ``dtype`` holds it."""
    if dtype not in FLOATS:
        raise TypeError(f"'{name}' is {dtype}; a set's values live in float tensors")
    try:
        codes, outside = set_codes(values, value, dtype)
    except ValueError as error:  # a set that the tensor's dtype cannot hold
        raise ValueError(f"'{name}' is {dtype}, which cannot hold its set: {error}") from None
    count = int(outside.sum())
    if count:
        example = float(np.asarray(value).reshape(-1)[outside][0])
        raise outside_set_error(f"'{name}'", values, count, example, fix)
    radix = radix_for(len(values))
    description = {
        "values": list(values.values),
        "shape": list(np.shape(value)),
        "dtype": dtype,
        "method": method,
        "group": radix.group,
    }
    return Raw.of(pack_codes(codes, radix)), description


def describe_scales(description: dict[str, Any], scaling: Scaling) -> None:
    """Record in a packed tensor's ``description`` that it is scaled by ``scaling``."""
    description["scale"] = {"granularity": scaling.granularity, "mode": scaling.mode}


def file_metadata(
    described: Mapping[str, dict[str, Any]],
    quantizers: Mapping[str, dict[str, Any]],
    layers: list[dict[str, str]],
) -> dict[str, str]:
    """The header's ``__metadata__``: the packed tensors, input quantizers and layer order, at
    the oldest format version that holds them."""
    scaled = any("scale" in spec for spec in described.values())
    metadata = {
        "format": "snapset",
        "snapset.version": str(FORMAT_VERSION) if quantizers or scaled else "1",
        "snapset.constrained": json.dumps(described),
        "snapset.layers": json.dumps(layers),
    }
    if quantizers:
        metadata["snapset.quantizers"] = json.dumps(quantizers)
    return metadata


# ----- reading a file safely -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A tensor of the header: its dtype name, shape, and where its bytes lie."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Packed:
    """A packed tensor of the header: set, shape, dtype name, method, packing and scaling."""

    values: ValueSet
    shape: tuple[int, ...]
    dtype: str
    method: str
    radix: Radix
    #: A scaled tensor's scaling (None: unscaled).
    scaling: Scaling | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


#: The fields of an input quantizer's record.
QUANTIZER_FIELDS = (
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
class QuantizerRecord:
    """An input quantizer a file records: its checked fields and its set, built once."""

    layer: str
    record: dict[str, Any]
    values: ValueSet

    @property
    def prefix(self) -> str:
        """The prefix of its state's tensor names (``"fc.input_quantizer."``)."""
        return f"{self.layer}.{INPUT_QUANTIZER}." if self.layer else f"{INPUT_QUANTIZER}."


class Reader:
    """A file opened once: its checked header, and its tensors read through the same handle,
    so that what is read is one whole file even while another process replaces the path.

    Tensors come out as numpy arrays; a ``bfloat16`` one widened to ``float32`` (exactly), its
    dtype still named by ``entries``. Packed tensors come out as float64 arrays of their exact
    values (``members``, ``scales``), which every front casts to its dtype without rounding.
    """

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
        self.quantizers = _quantizer_records(path, metadata, self.entries, sets)
        #: The layers in the writer's order, ``(name, kind)``; empty for files that list none.
        self.layers = _layers(path, metadata)

    def read(self, name: str) -> npt.NDArray[Any]:
        """The tensor ``name`` as the file stores it, in new memory (``bfloat16`` widened to
        ``float32``)."""
        entry = self.entries[name]
        self._handle.seek(self.data_start + entry.start)
        raw = bytearray(entry.end - entry.start)
        if self._handle.readinto(raw) != len(raw):
            raise SnapsetFileError(f"{self.path}: tensor '{name}' is cut short (truncated file)")
        if entry.dtype == "bool" and raw and np.frombuffer(raw, np.uint8).max() > 1:
            raise SnapsetFileError(
                f"{self.path}: bool tensor '{name}' holds bytes other than 0 and 1 (damaged)"
            )
        if entry.dtype == "bfloat16":  # the top half of a float32: widened exactly
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(entry.shape)
        return np.frombuffer(raw, np.dtype(entry.dtype).newbyteorder("<")).reshape(entry.shape)

    def members(self, name: str, dtype: str | None = None) -> npt.NDArray[np.float64]:
        """The members ``v`` of a packed tensor's set as ``dtype`` (default: the file's) holds
        them, in float64."""
        packed = self.packed[name]
        try:
            codes = unpack_codes(self.read(name), packed.radix, packed.count)
            table = packed.values.tables(dtype or packed.dtype).values
        except (ValueError, TypeError) as error:  # impossible codes, or a dtype that cannot hold
            raise SnapsetFileError(f"{self.path}: tensor '{name}': {error}") from None
        return table[codes].reshape(packed.shape)

    def scales(self, name: str, dtype: str | None = None) -> npt.NDArray[np.float64] | None:
        """The scales ``alpha`` of a packed tensor as ``dtype`` holds them, in float64 (None:
        unscaled), checked to be finite and > 0 there."""
        packed = self.packed[name]
        if packed.scaling is None:
            return None
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
            alpha = round_to_dtype(self.read(name + SCALES), dtype or packed.dtype)
        bad = ~(np.isfinite(alpha) & (alpha > 0))
        if bool(bad.any()):
            where = f"the scales of '{name}'"
            raise SnapsetFileError(
                f"{self.path}: {bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} "
                "The file is damaged (or its scales do not fit this dtype): save the model again."
            )
        return alpha

    def check_quantizer_scales(self, record: QuantizerRecord) -> None:
        """A recorded learned scale must be finite and > 0 (the quantizer would refuse it)."""
        start, log_gain = record.prefix + "start", record.prefix + "log_gain"
        if start not in self.entries or log_gain not in self.entries:
            return
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
            alpha = self.read(start).astype(np.float64) * np.exp(self.read(log_gain))
        bad = ~(np.isfinite(alpha) & (alpha > 0))
        if bool(bad.any()):
            where = f"the learned scales of the input quantizer of '{record.layer}'"
            raise SnapsetFileError(
                f"{self.path}: {bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} "
                "The file is damaged: save the model again."
            )


def _parse_json(path: Path, text: Any, what: str) -> Any:
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, TypeError, RecursionError) as error:
        # ValueError: broken JSON or UTF-8, or an integer literal past Python's digit limit;
        # TypeError: not a string at all; RecursionError: nested deeper than Python recurses.
        raise SnapsetFileError(f"{path}: damaged {what} ({str(error)[:200]})") from None


def _entry(path: Path, name: str, spec: object, data_size: int) -> Entry:
    def bad(why: str) -> SnapsetFileError:
        return SnapsetFileError(f"{path}: damaged header entry '{name}': {why}")

    if not isinstance(spec, dict):
        raise bad("not a JSON object")
    code = spec.get("dtype")
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise bad(f"unknown dtype {clip(spec.get('dtype'))}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    try:
        shape = check_shape(shape)
    except ValueError as error:
        raise bad(str(error)) from None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_count(n) for n in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"data_offsets {clip(offsets)} are not two increasing integers")
    start, end = offsets
    # Python integers: a hostile shape cannot overflow into a small number.
    expected = math.prod(shape) * itemsize(dtype)
    if end - start != expected:
        raise bad(
            f"shape {list(shape)} of {dtype} needs {expected} bytes, the offsets give {end - start}"
        )
    if end > data_size:
        raise bad(f"its bytes end at {end}, past the file's {data_size} bytes of data (truncated)")
    return Entry(dtype, shape, start, end)


def check_shape(shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple, if it is a list of at most ``MAX_DIMS`` counts whose product fits
    in int64; else ``ValueError``."""
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(is_count(n) for n in shape)
        # torch's strides: the product of the dimensions (zeros counted as ones) is an int64
        or math.prod(max(n, 1) for n in shape) > _LARGEST
    ):
        raise ValueError(
            f"shape {clip(shape)} is not a list of at most {MAX_DIMS} non-negative integers "
            "whose product fits in int64"
        )
    return tuple(shape)


def is_count(n: object) -> bool:
    """Whether ``n`` is a non-negative int (and not a bool)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def clip(value: object, limit: int = 80) -> str:
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
        self._fits: set[tuple[ValueSet, str]] = set()
        self._total = 0

    def read(self, raw: object, dtype: str) -> ValueSet:
        if (
            not isinstance(raw, list)
            or len(raw) > MAX_VALUES
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        ):
            raise ValueError(f"values {clip(raw)} are not a list of at most {MAX_VALUES:,} numbers")
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
            values.tables(dtype)  # refuses a set that merges or overflows in the dtype
            self._fits.add((values, dtype))
        return values


def _float_dtype(raw: object) -> str:
    if not isinstance(raw, str) or raw not in FLOATS:
        raise ValueError(f"unknown dtype {clip(raw)}")
    return raw


_FIELDS = ("values", "shape", "dtype", "method", "group")


def _packed_entries(
    path: Path, metadata: object, entries: dict[str, Entry], sets: _Sets
) -> dict[str, Packed]:
    if not isinstance(metadata, dict) or metadata.get("format") != "snapset":
        raise SnapsetFileError(f"{path}: not a snapset file (no 'format: snapset' in its metadata)")
    version = metadata.get("snapset.version")
    if version not in READ_VERSIONS:
        raise SnapsetFileError(
            f"{path}: snapset file format version {clip(version)}; this snapset reads versions "
            f"{' and '.join(READ_VERSIONS)} (upgrade snapset to read newer files)"
        )
    return _records(
        path,
        metadata,
        "snapset.constrained",
        "constrained tensor",
        lambda name, spec: _packed_entry(name, spec, entries, sets),
    )


def _records(
    path: Path,
    metadata: dict[str, Any],
    key: str,
    what: str,
    read: Callable[[str, object], _Record],
) -> dict[str, _Record]:
    """The JSON object of records that the metadata ``key`` holds, each read by ``read``;
    a record that ``read`` refuses names the file, ``what`` it describes and why."""
    raw = _parse_json(path, metadata.get(key, "{}"), f"'{key}' metadata")
    if not isinstance(raw, dict):
        raise SnapsetFileError(f"{path}: damaged '{key}' metadata (not an object)")
    records = {}
    for name, record in raw.items():
        try:
            records[name] = read(name, record)
        except (ValueError, TypeError) as error:
            raise SnapsetFileError(f"{path}: {what} '{name}': {error}") from None
    return records


def _packed_entry(name: str, spec: object, entries: dict[str, Entry], sets: _Sets) -> Packed:
    entry = entries.get(name)
    if entry is None:
        raise ValueError("its codes are missing")
    if not isinstance(spec, dict) or not all(field in spec for field in _FIELDS):
        raise ValueError(f"its description is not an object with fields {', '.join(_FIELDS)}")
    shape = check_shape(spec["shape"])
    dtype = _float_dtype(spec["dtype"])
    if not isinstance(spec["method"], str):
        raise ValueError(f"method {clip(spec['method'])} is not a string")
    values = sets.read(spec["values"], dtype)
    if not is_count(spec["group"]):
        raise ValueError(f"group {clip(spec['group'])} is not a positive integer")
    radix = Radix(len(values), spec["group"])
    count = math.prod(shape)
    if entry.dtype != "uint8" or entry.shape != (radix.nbytes(count),):
        raise ValueError(
            f"{count} codes of {len(values)} values take {radix.nbytes(count)} bytes, the file "
            f"holds {entry.dtype} of shape {list(entry.shape)}"
        )
    if "scale" not in spec:
        return Packed(values, shape, dtype, spec["method"], radix)
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
    return Packed(values, shape, dtype, spec["method"], radix, scaling)


def _scaling(raw: object) -> Scaling:
    """The scaling a packed tensor's ``scale`` field describes (``ValueError`` if none)."""
    if not isinstance(raw, dict) or set(raw) != {"granularity", "mode"}:
        raise ValueError(f"scale {clip(raw)} is not an object with fields granularity, mode")
    granularity, mode = raw["granularity"], raw["mode"]
    check_granularity(granularity, SCALE_GRANULARITIES, "a group size along the input axis")
    if not isinstance(mode, str) or mode not in SCALE_MODES:
        raise ValueError(f"scale mode {clip(mode)} is none of {', '.join(SCALE_MODES)}")
    return Scaling(granularity, mode)


def _quantizer_records(
    path: Path, metadata: dict[str, Any], entries: dict[str, Entry], sets: _Sets
) -> dict[str, QuantizerRecord]:
    return _records(
        path,
        metadata,
        "snapset.quantizers",
        "input quantizer of",
        lambda layer, record: _quantizer_record(layer, record, entries, sets),
    )


def _quantizer_record(
    layer: str, record: object, entries: dict[str, Entry], sets: _Sets
) -> QuantizerRecord:
    if not isinstance(record, dict) or set(record) != set(QUANTIZER_FIELDS):
        raise ValueError(f"its record is not an object with fields {', '.join(QUANTIZER_FIELDS)}")
    values = sets.read(record["values"], _float_dtype(record["dtype"]))
    for field in ("method", "estimator", "scale_mode"):
        if not isinstance(record[field], str) and record[field] is not None:
            raise ValueError(f"{field} {clip(record[field])} is not a string")
    axis, count = record["feature_axis"], record["num_features"]
    if not isinstance(axis, int) or isinstance(axis, bool) or abs(axis) > MAX_DIMS:
        raise ValueError(f"feature_axis {clip(axis)} is not an axis of a tensor")
    quantizer = QuantizerRecord(layer, record, values)
    start = entries.get(quantizer.prefix + "start")
    # a learned per-channel scale holds num_features entries: the file's tensor bounds them
    if count is not None and (not is_count(count) or start is None or start.shape != (count,)):
        raise ValueError(
            f"num_features {clip(count)} does not match its learned scales "
            f"'{quantizer.prefix}start' ({'missing' if start is None else list(start.shape)})"
        )
    return quantizer


def _layers(path: Path, metadata: dict[str, Any]) -> list[tuple[str, str]]:
    raw = _parse_json(path, metadata.get("snapset.layers", "[]"), "'snapset.layers' metadata")
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_TENSORS
        or not all(
            isinstance(layer, dict)
            and set(layer) == {"name", "kind"}
            and all(isinstance(v, str) for v in layer.values())
            for layer in raw
        )
    ):
        raise SnapsetFileError(
            f"{path}: damaged 'snapset.layers' metadata (not a list of {{name, kind}} objects)"
        )
    return [(layer["name"], layer["kind"]) for layer in raw]


def misfit(path: Path, model: str, missing: list[str], unexpected: list[str]) -> SnapsetFileError:
    """The error of a file whose tensors are not those of ``model`` (how a front names it)."""
    found = (("missing", missing), ("unexpected", unexpected))
    listed = "; ".join(f"{what}: {', '.join(names)}" for what, names in found if names)
    return SnapsetFileError(f"{path} does not fit {model}: {listed}")


def layer_renaming(
    path: Path, saved: list[tuple[str, str]], model: list[tuple[str, str]]
) -> Callable[[str], str]:
    """How a file's tensor and layer names read in a model whose layers are ``model``
    (``(name, kind)`` in order): as they are where the names of one side's layers are all among
    the other's (or the file lists none: a model with a layer more or less is then told which
    tensors are missing), else with the layers paired in order, which must then be of the same
    kinds.

    Examples:
        >>> rename = layer_renaming(Path("m"), [("dense", "dense"), ("dense_1", "dense")],
        ...                         [("0", "dense"), ("2", "dense")])
        >>> rename("dense_1.weight"), rename("dense.input_quantizer.start")
        ('2.weight', '0.input_quantizer.start')
        >>> layer_renaming(Path("m"), [("d", "dense")], [("0", "conv2d")])("d.weight")
        Traceback (most recent call last):
        snapset._files.SnapsetFileError: m: its layers do not fit the model's, by name or in \
order: layer 1 is dense 'd' in the file, conv2d '0' in the model
    """
    saved_names, model_names = {name for name, _ in saved}, {name for name, _ in model}
    if not saved or saved_names <= model_names or model_names <= saved_names:
        return lambda name: name
    for index, (mine, theirs) in enumerate(zip(saved, model, strict=False), 1):
        if mine[1] != theirs[1]:
            raise SnapsetFileError(
                f"{path}: its layers do not fit the model's, by name or in order: layer {index} "
                f"is {mine[1]} '{mine[0]}' in the file, {theirs[1]} '{theirs[0]}' in the model"
            )
    if len(saved) != len(model):
        raise SnapsetFileError(
            f"{path}: its layers do not fit the model's, by name or in order: the file holds "
            f"{len(saved)} layers with tensors ({_listed(saved)}), the model {len(model)} "
            f"({_listed(model)})"
        )
    pairs = {mine[0]: theirs[0] for mine, theirs in zip(saved, model, strict=True)}

    def rename(name: str) -> str:
        parts = name.split(".")
        for cut in range(len(parts), -1, -1):  # the innermost layer that holds the tensor
            layer = ".".join(parts[:cut])
            if layer in pairs:
                return ".".join(filter(None, [pairs[layer], *parts[cut:]]))
        return name

    return rename


def _listed(layers: list[tuple[str, str]], limit: int = 6) -> str:
    shown = ", ".join(f"{kind} '{name}'" for name, kind in layers[:limit])
    return shown + (", ..." if len(layers) > limit else "")
