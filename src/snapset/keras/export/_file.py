"""Packed model files for the Keras front: the PyTorch front's format, so a file moves across.

The format and every check of a file that is read are the core's (``snapset._files``); names
and layouts are PyTorch's. Here: how a Keras model's variables are named and laid out in a
file, and how a file's values go back into a Keras model.

Each layer is named by its path of layer names (``"block.dense_1"``) and its variables by
their PyTorch names, in PyTorch's layout:

=====================================  ======================================================
Keras layer                            tensors in the file
=====================================  ======================================================
``Dense`` (Keras's or snapset's)       ``weight`` = ``kernel`` transposed to ``(out, in)``;
                                       ``bias``
``Conv1D``, ``Conv2D``                 ``weight`` = ``kernel`` ``(*k, in / groups, out)``
                                       moved to ``(out, in / groups, *k)``; ``bias``
``snapset.keras.Multiplier``           ``weight`` = ``kernel``
``BatchNormalization``                 ``weight``, ``bias``, ``running_mean``,
                                       ``running_var`` (``gamma``, ``beta``, ``moving_mean``,
                                       ``moving_variance``), and ``num_batches_tracked`` (0)
``LayerNormalization``                 ``weight``, ``bias`` (``gamma``, ``beta``)
``Embedding``                          ``weight`` = ``embeddings``
any other layer                        each variable by its own name, as it is
=====================================  ======================================================

A ``Flatten`` of a convolution's output orders the features otherwise in each framework
(Keras: channels last; PyTorch: channels first), which no file can tell: the dense layer after
it loads, and computes something else. Pool first (``GlobalAveragePooling2D``), or put
``keras.layers.Permute((3, 1, 2))`` before the ``Flatten`` so that Keras flattens channels
first too.

Scales are laid out with their weight (a ``Dense`` kernel's ``(1, out)`` channel scales are
``(out, 1)`` in the file), and an input quantizer's state is ``<layer>.input_quantizer.start``
(``.log_gain``, ``.initialized``), its ``feature_axis`` that of PyTorch's input (1 for the
channels of a convolution, -1 for a dense layer's features).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import ml_dtypes
import numpy as np
import numpy.typing as npt
from keras import ops

from ..._files import (
    HARDENED,
    INPUT_QUANTIZER,
    QUANTIZER_FIELDS,
    SCALES,
    Kind,
    Packed,
    Raw,
    Reader,
    SnapsetFileError,
    clip,
    describe_scales,
    describe_scaling,
    encode,
    file_metadata,
    holds_members,
    layer_renaming,
    misfit,
    write_file,
)
from ..._scales import bad_scale_message
from ..._sets import ValueSet
from ..._spec import NOT_BY_FLIP_OPTIMIZER
from .._layers import Conv1D, Conv2D, Dense, Multiplier, SetLayer
from .._methods import (
    Method,
    Scale,
    checked_numpy,
    hardened_parts,
    learned_alpha,
    mark_hardened,
    method_of,
    scales_numpy,
)
from .._quantize import Quantize

__all__ = ["load", "save"]

_NUMPY_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _numpy_dtype(name: str) -> np.dtype[Any]:
    return _NUMPY_DTYPES.get(name) or np.dtype(name)


# ----- how a layer's variables are named and laid out ----------------------------------------


def _kernel_axes(ndim: int) -> tuple[int, ...]:
    """Keras's kernel ``(*k, in, out)`` as PyTorch's ``(out, in, *k)``."""
    return (ndim - 1, ndim - 2, *range(ndim - 2))


@dataclass(frozen=True)
class _Kind:
    """A kind of layer that both fronts name alike: its name in a file's layer list, the file's
    name of each variable, and which variable is laid out otherwise (``kernel``)."""

    name: str
    names: dict[str, str]
    moved: tuple[str, ...] = ()
    #: Tensors a PyTorch layer of the kind has and Keras's has not: written as 0, read past.
    extra: tuple[str, ...] = ()


_DENSE = _Kind(Kind.DENSE, {"kernel": "weight", "bias": "bias"}, ("kernel",))
_NORM = {"gamma": "weight", "beta": "bias"}
_KINDS: tuple[tuple[tuple[type, ...], _Kind], ...] = (
    ((Dense, keras.layers.Dense), _DENSE),
    ((Conv1D, keras.layers.Conv1D), _Kind(Kind.CONV1D, _DENSE.names, ("kernel",))),
    ((Conv2D, keras.layers.Conv2D), _Kind(Kind.CONV2D, _DENSE.names, ("kernel",))),
    ((Multiplier,), _Kind(Kind.MULTIPLIER, {"kernel": "weight"})),
    ((keras.layers.Embedding,), _Kind(Kind.EMBEDDING, {"embeddings": "weight"})),
    ((keras.layers.LayerNormalization,), _Kind(Kind.LAYERNORM, _NORM)),
    (
        (keras.layers.BatchNormalization,),
        _Kind(
            Kind.BATCHNORM,
            {**_NORM, "moving_mean": "running_mean", "moving_variance": "running_var"},
            extra=("num_batches_tracked",),
        ),
    ),
)


def _kind(layer: keras.Layer) -> _Kind:
    for classes, kind in _KINDS:
        if isinstance(layer, classes):
            return kind
    return _Kind(f"keras.{type(layer).__name__}", {})


@dataclass
class _Slot:
    """One variable of the model as a file holds it."""

    name: str  # the file's name
    variable: Any
    weight: str  # the layer's name of the weight ("kernel")
    layer: keras.Layer
    axes: tuple[int, ...] | None  # Keras layout -> file layout, or None: the same
    method: Method | None

    def to_file(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return array if self.axes is None else np.transpose(array, self.axes)

    def from_file(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return array if self.axes is None else np.transpose(array, np.argsort(self.axes))

    @property
    def dtype(self) -> str:
        return str(keras.backend.standardize_dtype(self.variable.dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the values in the file's layout."""
        shape = tuple(self.variable.shape)
        if self.method is not None:
            shape = tuple(self.method.value_shape(shape))
        return shape if self.axes is None else tuple(shape[a] for a in self.axes)


@dataclass
class _Layer:
    name: str
    layer: keras.Layer
    kind: _Kind
    slots: list[_Slot] = field(default_factory=list)
    quantizer: Quantize | None = None


def _walk(layer: keras.Layer, prefix: str) -> Iterator[tuple[str, keras.Layer]]:
    """Every layer with its path of names, containers after what they contain."""
    for sublayer in getattr(layer, "layers", []):
        yield from _walk(sublayer, f"{prefix}.{sublayer.name}" if prefix else sublayer.name)
    yield prefix, layer


def _layers(model: keras.Layer) -> list[_Layer]:
    """The model's layers that hold variables, each with its variables' slots."""
    if not model.built:
        raise ValueError(
            f"{type(model).__name__} '{model.name}' is not built yet, so it has no weights: call "
            "it on a batch (or build it with an input shape) first"
        )
    layers: list[_Layer] = []
    seen: set[int] = set()
    for prefix, layer in _walk(model, ""):
        if not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' is not built yet, so it has no weights: call the model "
                "on a batch (or build it with an input shape) first"
            )
        inner = [*getattr(layer, "layers", []), getattr(layer, INPUT_QUANTIZER, None)]
        hidden = {id(v) for sub in inner if isinstance(sub, keras.Layer) for v in sub.weights}
        entry = _Layer(prefix, layer, _kind(layer))
        entry.slots = [
            slot
            for variable in layer.weights
            if id(variable) not in hidden | seen and (slot := _slot(entry, variable)) is not None
        ]
        seen |= {id(v) for v in layer.weights}
        quantizer = getattr(layer, INPUT_QUANTIZER, None)
        if isinstance(layer, SetLayer) and quantizer is not None:
            if not isinstance(quantizer, Quantize):
                raise ValueError(
                    f"Layer '{layer.name}': a file records input quantizers of "
                    f"snapset.keras.Quantize, not {type(quantizer).__name__}"
                )
            entry.quantizer = quantizer
        if entry.slots or entry.quantizer is not None:
            layers.append(entry)
    return layers


def _slot(layer: _Layer, variable: Any) -> _Slot | None:
    """The slot of one of a layer's own variables, or None for the state snapset keeps beside
    a weight (a learned scale's variables: its scales go with the weight's codes)."""
    owner = layer.layer
    weights = getattr(owner, "_set_weights", {})
    weight = next((name for name, v in weights.items() if v is variable), None)
    scale_variables = getattr(owner, "_scale_variables", {}).values()
    if weight is None and any(variable is v for vs in scale_variables for v in vs):
        return None
    method = method_of(variable)
    if weight is None:
        weight = method.weight if method is not None else _short_name(owner, variable)
    name = layer.kind.names.get(weight, weight)
    # the values' rank: a gumbel variable holds one more axis, over the set
    ndim = len(variable.shape) if method is None else len(method.value_shape(variable.shape))
    axes = _kernel_axes(ndim) if weight in layer.kind.moved and ndim >= 2 else None
    full = f"{layer.name}.{name}" if layer.name else name
    return _Slot(full, variable, weight, owner, axes, method)


def _short_name(layer: keras.Layer, variable: Any) -> str:
    """A variable's name below its layer (``"kernel"``, or ``"inner.kernel"`` for a variable
    of a layer the walk does not visit)."""
    path = str(getattr(variable, "path", variable.name))
    own = f"{layer.path}/" if getattr(layer, "path", None) else ""
    return path.removeprefix(own).replace("/", ".")


# ----- save -----------------------------------------------------------------------------------


def save(model: keras.Layer, path: str | os.PathLike[str]) -> Path:
    """Write a built Keras model (or layer) to a snapset file; return the path.

    The file is the one [`snapset.torch.save`][] writes: safetensors, each constrained weight
    as its set, shape, dtype and codes packed at close to ``log2(k)`` bits a weight, a scaled
    weight's scales beside its codes, every other variable as it is, and the input
    quantizers' records. Names and layouts are PyTorch's (see ``snapset.keras.export``), so
    [`snapset.torch.load`][] puts the file into the equivalent PyTorch model (layers paired by
    name, or in order), and [`snapset.keras.load`][] into this one or a plain twin. What is
    saved is what the model computes with in inference: exact values, never latents, logits,
    seeds or optimizer state (save a ``.keras`` file to resume training). A weight that
    ``harden_`` made plain (or a file loaded into a plain layer) is packed, method
    ``"hardened"``, while it holds members of its set (times its scales, for a scaled one);
    one changed since is saved as it is.

    Nothing is rounded on the way: a flip variable off its set (stepped by another
    optimizer) raises ``snapset.OutsideSetError`` and nothing is written. An unbuilt model
    raises ``ValueError``. The file appears whole or not at all.

    Examples:
        >>> import os, tempfile, keras, numpy as np, snapset, snapset.keras as sk
        >>> dense = sk.Dense(10, snapset.Sign(), name="dense")
        >>> model = keras.Sequential([keras.Input((1000,)), dense])
        >>> path = sk.save(model, os.path.join(tempfile.mkdtemp(), "model.safetensors"))
        >>> os.path.getsize(path) < 2000  # 10,000 signs in 1,250 bytes, 10 biases, the header
        True
        >>> weights = sk.load(None, path)  # PyTorch's names and layout
        >>> weights["dense.weight"].shape, sorted(np.unique(weights["dense.weight"]).tolist())
        ((10, 1000), [-1.0, 1.0])
    """
    layers = _layers(model)
    tensors: dict[str, Raw] = {}
    described: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for slot in layer.slots:
            if slot.name in tensors:
                raise ValueError(
                    f"Two variables of {type(model).__name__} '{model.name}' are named "
                    f"'{slot.name}' in a file; give their layers distinct names"
                )
            _write_slot(slot, tensors, described)
        for extra in layer.kind.extra:
            tensors[f"{layer.name}.{extra}"] = Raw.of(np.zeros((), np.int64))
    quantizers = {}
    for layer in layers:
        if layer.quantizer is not None:
            quantizers[layer.name] = _write_quantizer(layer, tensors)
    kinds = [{"name": layer.name, "kind": layer.kind.name} for layer in layers if layer.slots]
    return write_file(path, tensors, file_metadata(described, quantizers, kinds))


def _write_slot(slot: _Slot, tensors: dict[str, Raw], described: dict[str, dict[str, Any]]) -> None:
    method, dtype = slot.method, slot.dtype
    if method is not None:
        checked_numpy(slot.variable)  # a flip variable off its set is refused here
        alpha = scales_numpy(slot.variable, method)
        members = np.asarray(ops.convert_to_numpy(method.hard(slot.variable)))
        values, scale, name = method.values, method.scale, method.method
    else:
        parts = hardened_parts(slot.variable)  # what harden_ or a loaded file left, if still so
        if parts is None:
            tensors[slot.name] = Raw.of(
                slot.to_file(np.asarray(ops.convert_to_numpy(slot.variable)))
            )
            return
        members, alpha, values, scale, name = (
            parts.members,
            parts.alpha,
            parts.values,
            parts.scale,
            HARDENED,
        )
    tensors[slot.name], described[slot.name] = encode(
        slot.name,
        values,
        slot.to_file(members),
        dtype,
        name,
        f"{NOT_BY_FLIP_OPTIMIZER}. Nothing was written.",
    )
    if alpha is not None and scale is not None:
        describe_scales(described[slot.name], scale.scaling)
        tensors[slot.name + SCALES] = Raw.of(slot.to_file(alpha.astype(_numpy_dtype(dtype))))


def _feature_axis(layer: _Layer, axis: int, to_file: bool) -> int:
    """A quantizer's feature axis as PyTorch's input has it (``to_file``), or back: a
    convolution's channels are last in Keras and at 1 in PyTorch."""
    if layer.kind.name not in (Kind.CONV1D, Kind.CONV2D):
        return axis
    keras_axis, torch_axis = -1, 1
    if getattr(layer.layer, "data_format", "channels_last") == "channels_first":
        keras_axis = 1
    given, wanted = (keras_axis, torch_axis) if to_file else (torch_axis, keras_axis)
    if axis != given:
        raise ValueError(
            f"Layer '{layer.layer.name}': its input quantizer's feature_axis={axis} is not "
            f"the channels of a convolution ({given}), which is all a file records"
        )
    return wanted


def _quantizer_state(quantizer: Quantize) -> dict[str, Any]:
    """The Keras variables of a learned scale by their PyTorch names."""
    if not quantizer.learned:
        return {}
    return {
        "start": quantizer.scale_start,
        "log_gain": quantizer.scale_log_gain,
        "initialized": quantizer.scale_ready,
    }


def _quantizer_record(layer: _Layer, quantizer: Quantize) -> dict[str, Any]:
    state = _quantizer_state(quantizer)
    channel = quantizer.learned and quantizer.scaling is not None
    channel = channel and quantizer.scaling.granularity == "channel"  # type: ignore[union-attr]
    return {
        "values": list(quantizer.values.values),
        "method": quantizer.method,
        "estimator": quantizer.estimator,
        "scale": quantizer.scale,
        "scale_mode": None if quantizer.scaling is None else quantizer.scaling.mode,
        "feature_axis": _feature_axis(layer, quantizer.feature_axis, to_file=True),
        "num_features": int(state["start"].shape[0]) if channel else None,
        "dtype": keras.backend.standardize_dtype(quantizer.compute_dtype),
    }


def _write_quantizer(layer: _Layer, tensors: dict[str, Raw]) -> dict[str, Any]:
    quantizer = layer.quantizer
    assert quantizer is not None
    prefix = f"{layer.name}.{INPUT_QUANTIZER}."
    for key, variable in _quantizer_state(quantizer).items():
        tensors[prefix + key] = Raw.of(np.asarray(ops.convert_to_numpy(variable)))
    return _quantizer_record(layer, quantizer)


# ----- load -----------------------------------------------------------------------------------


def load(model: keras.Layer | None, path: str | os.PathLike[str]) -> Any:
    """Load a snapset file, from either front, into a built Keras ``model`` (returned), or
    into a dict of numpy arrays.

    ``model`` may be built with the same sets as the saved model (the method may differ, so a
    ``flip``-trained file loads into an ``ste`` model and back), or be a plain twin (Keras's
    own ``Dense``, ``Conv2D``, ..., or snapset's layers with ``method=None``), which then holds
    the exact values. Its outputs in inference equal the saved model's. Layers are matched by
    name, or, where the names differ (a file from PyTorch, whose layers are ``0``, ``2``, ...),
    in order, kind by kind (``dense``, ``conv2d``, ...). A scaled weight loads into a layer
    with the same ``scale`` and ``scale_mode`` (a learned ``alpha`` takes the saved scales), a
    statistic scale only if the saved values give back the saved scales. An input quantizer
    the file records must match the layer's (Keras layers are built with theirs).

    With ``model=None`` it returns the file's tensors under their names in PyTorch's layout,
    packed ones decoded to their exact values (``alpha * v`` for a scaled one).

    Everything is decoded and checked before the first variable changes: a damaged or hostile
    file, or one whose names, shapes, sets, scales or quantizers do not fit, raises
    ``snapset.torch``'s ``SnapsetFileError`` (``snapset._files.SnapsetFileError``, a
    ``ValueError``), and the model is as it was.

    Examples:
        >>> import os, tempfile, keras, numpy as np, snapset, snapset.keras as sk
        >>> model = keras.Sequential([keras.Input((6,)), sk.Dense(3, snapset.Ternary())])
        >>> path = sk.save(model, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
        >>> plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        >>> plain = sk.load(plain, path)
        >>> x = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
        >>> np.array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))
        True
    """
    # A damaged file's floats may be anything (signalling NaNs, log gains whose exp is inf):
    # the checks refuse what may not load, without numpy's warnings on the way.
    with Path(path).open("rb") as handle, np.errstate(over="ignore", invalid="ignore"):
        file = Reader(Path(path), handle)
        if model is None:
            return {n: _decoded(file, n) for n in file.entries if n not in file.scale_names}
        writes, marks = _plan(file, model)
    for variable, value in writes:
        variable.assign(value)
    for variable, mark in marks:
        mark_hardened(variable, *mark)
    return model


def _decoded(file: Reader, name: str, dtype: str | None = None) -> npt.NDArray[Any]:
    """A tensor of the file in the file's layout: a packed one's exact values in ``dtype``
    (default: the file's), ``alpha * v`` for a scaled one."""
    packed = file.packed.get(name)
    if packed is None:
        array = file.read(name)
        held = file.entries[name].dtype
        return array.astype(_numpy_dtype(held)) if held == "bfloat16" else array
    dtype = dtype or packed.dtype
    numpy_dtype = _numpy_dtype(dtype)
    members = file.members(name, dtype).astype(numpy_dtype)
    alpha = file.scales(name, dtype)
    if alpha is None or packed.scaling is None:
        return members
    layout = packed.scaling.layout(packed.shape, 0, 1 if len(packed.shape) >= 2 else None)
    return layout.expand(members, alpha)


_Mark = tuple[ValueSet | None, Scale | None, npt.NDArray[Any] | None]


def _mark(file: Reader, slot: _Slot, name: str, packed: Packed | None) -> _Mark:
    """What a plain variable holds once it takes the file's tensor ``name``: the set, and a
    scaled set's scale and scales in the variable's layout."""
    if packed is None:
        return None, None, None
    alpha = file.scales(name, slot.dtype)
    if alpha is None or packed.scaling is None:
        return packed.values, None, None
    scale = Scale(packed.scaling, packed.values, tuple(slot.variable.shape))
    return packed.values, scale, slot.from_file(alpha).astype(_numpy_dtype(slot.dtype))


def _plan(
    file: Reader, model: keras.Layer
) -> tuple[list[tuple[Any, Any]], list[tuple[Any, _Mark]]]:
    """Every (variable, new value) pair, and the set each plain variable then holds, all
    decoded and checked before anything is written."""
    layers = _layers(model)
    rename = layer_renaming(
        file.path, file.layers, [(layer.name, layer.kind.name) for layer in layers if layer.slots]
    )
    names = {rename(n): n for n in file.entries if n not in file.scale_names}
    packed = {rename(n): p for n, p in file.packed.items()}
    quantizers = {rename(layer): record for layer, record in file.quantizers.items()}
    wanted, optional = set(), set()
    for layer in layers:
        wanted |= {slot.name for slot in layer.slots}
        optional |= {f"{layer.name}.{extra}" for extra in layer.kind.extra}
        if layer.quantizer is not None:
            prefix = f"{layer.name}.{INPUT_QUANTIZER}."
            wanted |= {prefix + key for key in _quantizer_state(layer.quantizer)}
    missing = sorted(wanted - set(names))
    unexpected = sorted(set(names) - wanted - optional)
    if missing or unexpected:
        raise misfit(file.path, f"{type(model).__name__} '{model.name}'", missing, unexpected)
    _check_quantizers(file.path, layers, quantizers)
    writes: list[tuple[Any, Any]] = []
    marks: list[tuple[Any, _Mark]] = []
    for layer in layers:
        for slot in layer.slots:
            saved = packed.get(slot.name)
            writes += _slot_writes(file, slot, names[slot.name], saved)
            if slot.method is None:
                # a plain variable given a packed set's values is marked as harden_ marks it
                # (with the scales); one given plain values loses an older mark
                marks.append((slot.variable, _mark(file, slot, names[slot.name], saved)))
        if layer.quantizer is not None:
            writes += _quantizer_writes(file, layer, layer.quantizer, names)
    for record in file.quantizers.values():
        file.check_quantizer_scales(record)
    return writes, marks


def _quantizer_writes(
    file: Reader, layer: _Layer, quantizer: Quantize, names: dict[str, str]
) -> list[tuple[Any, Any]]:
    """What to assign so that ``quantizer`` holds the file's learned scale (none for others)."""
    prefix = f"{layer.name}.{INPUT_QUANTIZER}."
    state = _quantizer_state(quantizer)
    values = {}
    for key, variable in state.items():
        value = file.read(names[prefix + key])
        if tuple(value.shape) != tuple(variable.shape):
            raise SnapsetFileError(
                f"{file.path}: '{prefix + key}' has shape {list(value.shape)} in the file but "
                f"{list(variable.shape)} in the model"
            )
        values[key] = ops.convert_to_tensor(value, variable.dtype)
    if values:
        where = f"the learned scales of the input quantizer of '{layer.name}'"
        _check_alpha(file.path, where, values["start"], values["log_gain"])
    return [(state[key], value) for key, value in values.items()]


def _check_alpha(path: Path, where: str, start: Any, log_gain: Any) -> None:
    """Refuse learned scales that this backend computes as anything but finite and > 0 from
    the file's (JAX flushes a subnormal start to zero; a cast to float16 may overflow)."""
    alpha = np.asarray(ops.convert_to_numpy(learned_alpha(start, log_gain)))
    bad = ~(np.isfinite(alpha) & (alpha > 0))
    if bool(bad.any()):
        example = float(alpha[bad].reshape(-1)[0])
        raise SnapsetFileError(
            f"{path}: {bad_scale_message(where, int(bad.sum()), example)} So this backend "
            f"({keras.backend.backend()}) computes them from the file's: a damaged file, save "
            "the model again."
        )


def _check_quantizers(path: Path, layers: list[_Layer], quantizers: dict[str, Any]) -> None:
    present = {layer.name: layer for layer in layers if layer.quantizer is not None}
    for name in sorted(set(present) ^ set(quantizers)):
        where = "the model" if name in present else "the file"
        raise SnapsetFileError(
            f"{path}: only {where} has an input quantizer on '{name}'; build the model's "
            "layers with the saved model's input_quantizer (or without one)"
        )
    for name, layer in present.items():
        assert layer.quantizer is not None
        saved = quantizers[name].record
        mine = _quantizer_record(layer, layer.quantizer)
        differ = [
            f"{field_name} ({clip(saved[field_name])} in the file, {clip(mine[field_name])} in "
            "the model)"
            for field_name in QUANTIZER_FIELDS
            if field_name != "dtype" and saved[field_name] != mine[field_name]
        ]
        if differ:
            raise SnapsetFileError(
                f"{path}: the input quantizer of '{name}' differs from the model's in "
                f"{', '.join(differ)}; build it as the saved model's was"
            )


def _slot_writes(file: Reader, slot: _Slot, name: str, packed: Any) -> list[tuple[Any, Any]]:
    """What to assign so that ``slot`` shows the file's tensor ``name``."""
    held = packed.shape if packed is not None else file.entries[name].shape
    if tuple(held) != slot.shape:
        raise SnapsetFileError(
            f"{file.path}: '{slot.name}' has shape {list(held)} in the file but "
            f"{list(slot.shape)} in the model (in PyTorch's layout)"
        )
    method, dtype = slot.method, slot.dtype
    if method is None:  # a plain variable takes the exact values
        value = _decoded(file, name, dtype if packed is not None else None)
        return [(slot.variable, slot.from_file(value))]
    if packed is not None and packed.values != method.values:
        raise SnapsetFileError(
            f"{file.path}: '{slot.name}' holds values of {packed.values!r} but the model "
            f"constrains it to {method.values!r}"
        )
    scale = method.scale
    saved, wanted = (
        None if packed is None else packed.scaling,
        None if scale is None else scale.scaling,
    )
    if saved != wanted:
        raise SnapsetFileError(
            f"{file.path}: '{slot.name}' is {describe_scaling(saved)} in the file but "
            f"{describe_scaling(wanted)} in the model; build the layer with the saved scale and "
            "scale_mode, or load the file into a plain twin"
        )
    if packed is None:  # a plain tensor of the file: it loads if it holds members of the set
        held = file.read(name).astype(_numpy_dtype(dtype))
        if not holds_members(method.values, held, dtype):
            raise SnapsetFileError(
                f"{file.path}: '{slot.name}' is a plain tensor in the file with entries outside "
                f"{method.values!r}, so it cannot load into the constrained model"
            )
        return [(slot.variable, method.right_inverse(ops.convert_to_tensor(slot.from_file(held))))]
    members = ops.convert_to_tensor(slot.from_file(file.members(name, dtype)), dtype)
    if scale is None:
        return [(slot.variable, method.right_inverse(members))]
    alpha_file = file.scales(name, dtype)
    assert alpha_file is not None  # the scaling matched
    alpha = ops.convert_to_tensor(slot.from_file(alpha_file), dtype)
    if scale.learned:
        # the members' stored form on the set's own scale, beside the file's alpha (start =
        # alpha, log_gain = 0)
        stored = method._right_inverse(members)
        _check_alpha(file.path, f"the scales of '{slot.name}'", alpha, ops.zeros_like(alpha))
        return [
            (slot.variable, stored),
            (scale.start, alpha),
            (scale.log_gain, ops.zeros_like(alpha)),
        ]
    stored = scale.expand(members, alpha)  # a statistic: the float kernel itself
    if not np.array_equal(
        ops.convert_to_numpy(scale.statistic(stored)), ops.convert_to_numpy(alpha)
    ):
        raise SnapsetFileError(
            f"{file.path}: '{slot.name}': scale_mode={scale.scaling.mode!r} recomputes the "
            "scales from the float kernel, and alpha * v gives back other scales than the "
            "saved ones; load the file into a plain twin (exact)"
        )
    return [(slot.variable, stored)]
