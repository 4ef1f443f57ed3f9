"""Inputs and outputs of snapset.gf2: 0/1 checks, the numpy/torch round trip, packed words, and
conversions between integers and bit vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", "npt.NDArray[Any]", "torch.Tensor")
Bits = npt.NDArray[np.uint8]
Words = npt.NDArray[np.uint64]
BitOrder = Literal["little", "big"]

WORD = 64

# Set bits of every byte: a popcount that works on numpy < 2 (no np.bitwise_count) too.
_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


@dataclass(frozen=True)
class Kind:
    """What the caller gave: where results go back to (numpy or torch, dtype, device)."""

    torch: bool
    dtype: Any
    device: Any = None


def is_tensor(x: object) -> bool:
    # By module name, so that torch is never imported for numpy callers.
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def to_numpy(x: object) -> tuple[npt.NDArray[Any], Kind]:
    """``x`` as a numpy array on the CPU, and what to give results back as."""
    if is_tensor(x):
        import torch

        t: torch.Tensor = x  # type: ignore[assignment]
        kind = Kind(torch=True, dtype=t.dtype, device=t.device)
        t = t.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # numpy has no bfloat16; 0 and 1 are exact in float32
        return t.numpy(), kind
    array = np.asarray(x)
    return array, Kind(torch=False, dtype=array.dtype)


def to_bits(x: object, name: str, fn: str) -> tuple[Bits, Kind]:
    """Check that ``x`` holds only 0 and 1 and return it as a uint8 array, plus its kind."""
    array, kind = to_numpy(x)
    if array.dtype.kind == "b":
        return array.view(np.uint8), kind
    if array.dtype.kind not in "uif":
        raise ValueError(
            f"gf2.{fn}: {name} has dtype {array.dtype}; GF(2) needs 0/1 numbers or booleans, "
            f"e.g. np.asarray(data, dtype=np.uint8)."
        )
    # One pass for unsigned integers (the usual uint8 bits), two for the others.
    bad = array > 1 if array.dtype.kind == "u" else (array != 0) & (array != 1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[where].item()
        raise ValueError(
            f"gf2.{fn}: {name} must hold only 0 and 1 (or booleans), but {name}{list(where)} = "
            f"{value!r}. Map your data into GF(2) first, e.g. `x % 2` for integers or "
            f"`x > 0.5` for a threshold."
        )
    return array.astype(np.uint8, copy=False), kind


def to_matrices(x: object, name: str, fn: str) -> tuple[Bits, Kind]:
    """``to_bits`` for a matrix or a batch of them: shape ``(..., rows, columns)``."""
    bits, kind = to_bits(x, name, fn)
    if bits.ndim < 2:
        raise ValueError(
            f"gf2.{fn}: {name} must be a matrix (or a batch of them, shape (..., rows, "
            f"columns)), got shape {tuple(bits.shape)}; reshape it to (rows, columns) first."
        )
    return bits, kind


def combine(a: Kind, b: Kind) -> Kind:
    """The kind of a result computed from two inputs: torch wins, dtypes promote."""
    if a.torch or b.torch:
        import torch

        def as_torch(kind: Kind) -> torch.dtype:
            if kind.torch:
                return kind.dtype  # type: ignore[no-any-return]
            return torch.from_numpy(np.zeros(0, dtype=kind.dtype)).dtype

        device = a.device if a.torch else b.device
        return Kind(True, torch.promote_types(as_torch(a), as_torch(b)), device)
    return Kind(False, np.result_type(a.dtype, b.dtype))


def give_back(array: npt.NDArray[Any], kind: Kind) -> Any:
    if kind.torch:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(device=kind.device, dtype=kind.dtype)
    return array.astype(kind.dtype)


def popcount(words: Words) -> npt.NDArray[np.int64]:
    """Set bits per row: the sum over the last axis of the bits of ``uint64`` words."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    counts: npt.NDArray[np.int64] = _POPCOUNT8[as_bytes].sum(axis=-1)
    return counts


# ----- packing ----------------------------------------------------------------------------------


def pack_bits(bits: Bits) -> Words:
    """Pack the last axis of a 0/1 uint8 array into little-endian uint64 words."""
    # packbits works in bytes; little bit order plus little-endian words puts entry j in bit
    # j % 64 of word j // 64 on every machine.
    packed = np.packbits(bits, axis=-1, bitorder="little")
    spare = -packed.shape[-1] % 8
    if spare:
        packed = np.concatenate(
            [packed, np.zeros((*packed.shape[:-1], spare), dtype=np.uint8)], axis=-1
        )
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_words(words: Words, n: int) -> Bits:
    as_bytes = np.ascontiguousarray(words.astype("<u8")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little")


def pack(bits: ArrayT) -> ArrayT:
    """Pack the last axis of a 0/1 array into 64-bit words.

    Entry ``j`` of a row goes to bit ``j % 64`` (least significant first) of word ``j // 64``;
    the unused high bits of the last word are 0. The result has shape
    ``(..., ceil(n / 64))`` and dtype ``uint64`` (numpy ``uint64`` for numpy input,
    ``torch.uint64`` on the input's device for a tensor). A row of at most 64 entries packs to
    the integer [`to_int`][snapset.gf2.to_int] gives in the ``"little"`` bit order.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.pack(np.array([[1, 0, 1], [0, 0, 0]])).tolist()
        [[5], [0]]
        >>> gf2.pack(np.ones(65, dtype=bool)).tolist()
        [18446744073709551615, 1]
    """
    raw, kind = to_bits(bits, "bits", "pack")
    if raw.ndim == 0:
        raise ValueError("gf2.pack: bits must have at least one axis, got a scalar")
    words = pack_bits(raw)
    if kind.torch:
        import torch

        return torch.from_numpy(words).to(kind.device)  # type: ignore[return-value]
    return words  # type: ignore[return-value]


def unpack(words: ArrayT, n: int) -> ArrayT:
    """Inverse of ``pack``: the first ``n`` bits of each row of 64-bit words, as 0/1.

    ``words`` may be numpy ``uint64``/``int64`` or a torch ``uint64``/``int64`` tensor (the same
    64 bits either way). Returns ``uint8`` entries of shape ``(..., n)``.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.unpack(np.array([5], dtype=np.uint64), 4).tolist()
        [1, 0, 1, 0]
        >>> bits = np.random.default_rng(0).integers(0, 2, size=(3, 100))
        >>> bool((gf2.unpack(gf2.pack(bits), 100) == bits).all())
        True
    """
    array, kind = to_numpy(words)
    if array.dtype not in (np.dtype(np.uint64), np.dtype(np.int64)):
        raise ValueError(
            f"gf2.unpack: words must be 64-bit integers as made by gf2.pack, got dtype "
            f"{array.dtype}"
        )
    if array.ndim == 0:
        raise ValueError("gf2.unpack: words must have at least one axis, got a scalar")
    if not 0 <= n <= array.shape[-1] * WORD:
        raise ValueError(
            f"gf2.unpack: n = {n} bits asked for, but {array.shape[-1]} words hold at most "
            f"{array.shape[-1] * WORD}"
        )
    bits = unpack_words(array.view(np.uint64), n)
    if kind.torch:
        import torch

        return torch.from_numpy(bits).to(kind.device)  # type: ignore[return-value]
    return bits  # type: ignore[return-value]


# ----- integers and bit vectors -----------------------------------------------------------------


def _check_order(bitorder: str, fn: str) -> None:
    if bitorder not in ("little", "big"):
        raise ValueError(
            f"gf2.{fn}: bitorder must be 'little' (entry 0 is the least significant bit) or "
            f"'big' (entry 0 is the most significant), got {bitorder!r}"
        )


def from_int(values: Any, n: int, *, bitorder: BitOrder = "little") -> Any:
    """Integers to bit vectors of length ``n``: shape ``values.shape + (n,)``, dtype ``uint8``.

    ``values`` is a Python int (of any size), a (nested) list of them, or an integer array
    (numpy, e.g. ``uint64``, or a torch tensor, which gives a tensor back). With
    ``bitorder="little"`` entry ``i`` of a vector is the coefficient of ``2**i`` (the layout of
    [`pack`][snapset.gf2.pack]); with ``"big"`` the vector reads as the number written in
    binary, most significant bit first. Negative values and values of ``2**n`` or more are
    refused. [`to_int`][snapset.gf2.to_int] is the inverse.

    Examples:
        >>> from snapset import gf2
        >>> gf2.from_int(6, 4).tolist()
        [0, 1, 1, 0]
        >>> gf2.from_int([6, 1], 4, bitorder="big").tolist()
        [[0, 1, 1, 0], [0, 0, 0, 1]]
        >>> gf2.from_int(2**100 + 1, 101)[[0, 100]].tolist()
        [1, 1]
    """
    _check_order(bitorder, "from_int")
    if n < 0:
        raise ValueError(f"gf2.from_int: n must be at least 0, got {n}")
    array, kind = to_numpy(values)
    if array.dtype == object:  # Python ints past 64 bits
        flat = [int(v) for v in array.reshape(-1)]
        if any(v < 0 for v in flat):
            raise ValueError("gf2.from_int: values must be at least 0, got a negative one")
        too_big = [v for v in flat if v >> n]
        if too_big:
            raise ValueError(
                f"gf2.from_int: {too_big[0]} does not fit in n = {n} bits; raise n to at "
                f"least {too_big[0].bit_length()}"
            )
        nbytes = -(-n // 8)
        raw = b"".join(v.to_bytes(nbytes, "little") for v in flat)
        bytes_ = np.frombuffer(raw, dtype=np.uint8).reshape(len(flat), nbytes)
        bits = np.unpackbits(bytes_, axis=-1, count=n, bitorder="little").reshape(*array.shape, n)
    else:
        if array.dtype.kind not in "ui":
            raise ValueError(
                f"gf2.from_int: values must be integers, got dtype {array.dtype}; "
                f"convert them with np.asarray(values, dtype=np.uint64) first."
            )
        if array.dtype.kind == "i" and (array < 0).any():
            raise ValueError("gf2.from_int: values must be at least 0, got a negative one")
        words = array.astype(np.uint64)
        flat_words = words.reshape(-1)
        if n < WORD and (flat_words >> np.uint64(n)).any():
            bad = int(flat_words[(flat_words >> np.uint64(n)) != 0][0])
            raise ValueError(
                f"gf2.from_int: {bad} does not fit in n = {n} bits; raise n to at least "
                f"{bad.bit_length()}"
            )
        bits = np.zeros((*words.shape, n), dtype=np.uint8)
        low = unpack_words(words[..., None], min(n, WORD))
        bits[..., : low.shape[-1]] = low
    if bitorder == "big":
        bits = bits[..., ::-1]
    if kind.torch:
        import torch

        return torch.from_numpy(np.ascontiguousarray(bits)).to(kind.device)
    return np.ascontiguousarray(bits)


def to_int(bits: Any, *, bitorder: BitOrder = "little") -> Any:
    """Bit vectors (the last axis) to integers; the inverse of [`from_int`][snapset.gf2.from_int].

    A single vector gives a Python int (of any size). A batch ``(..., n)`` gives a numpy
    ``uint64`` array of shape ``(...)`` when ``n <= 64``, else a numpy ``object`` array of
    Python ints. ``bitorder`` as in ``from_int``.

    Examples:
        >>> import numpy as np
        >>> from snapset import gf2
        >>> gf2.to_int([0, 1, 1, 0])
        6
        >>> gf2.to_int(np.array([[0, 1, 1, 0], [0, 0, 0, 1]]), bitorder="big").tolist()
        [6, 1]
        >>> gf2.to_int(np.ones(70, dtype=bool)) == 2**70 - 1
        True
    """
    _check_order(bitorder, "to_int")
    raw, _ = to_bits(bits, "bits", "to_int")
    if raw.ndim == 0:
        raise ValueError("gf2.to_int: bits must have at least one axis, got a scalar")
    if bitorder == "big":
        raw = raw[..., ::-1]
    n = raw.shape[-1]
    if raw.ndim == 1 or n > WORD:
        as_bytes = np.packbits(raw, axis=-1, bitorder="little")
        flat = as_bytes.reshape(int(np.prod(raw.shape[:-1])), -(-n // 8))
        ints = [int.from_bytes(row.tobytes(), "little") for row in flat]
        if raw.ndim == 1:
            return ints[0]
        out = np.empty(len(ints), dtype=object)
        out[:] = ints
        return out.reshape(raw.shape[:-1])
    return pack_bits(raw)[..., 0] if n else np.zeros(raw.shape[:-1], dtype=np.uint64)
