"""Packed model files for the PyTorch front: ``save`` and ``load``, with no pickle anywhere.

The format (safetensors, packed codes, scales, input quantizers, the layer list) and every
check of a file that is read are the core's, shared with the Keras front: see
``snapset._files``. Here: which tensors of a ``torch.nn.Module`` are packed, and how a file's
values go back into one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..._files import (
    CODES,
    DTYPES,
    HARDENED,
    INPUT_QUANTIZER,
    QUANTIZER_FIELDS,
    SCALES,
    Kind,
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
    set_codes,
    write_file,
)
from ..._scales import Scaling
from ..._sets import ValueSet
from ..._spec import NOT_BY_FLIP_OPTIMIZER
from .._constrain import (
    ConstrainedTensor,
    check_values,
    constrained_tensors,
    hardened_scales,
    hardened_values,
    mark_hardened,
    scaled_members,
)
from .._layers import Multiplier
from .._methods import Scale
from .._quantize import Quantize, input_quantizers, quantize_inputs_

__all__ = ["SnapsetFileError", "load", "save"]

_TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES.values()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _widened(tensor: Tensor) -> npt.NDArray[np.floating[Any]]:
    """A float tensor's entries as numpy holds them exactly: float64 as it is, the others in
    float32 (numpy has no bfloat16)."""
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().cpu().to(wide).numpy()


def _raw(tensor: Tensor) -> Raw:
    """A tensor as a file stores it."""
    name = _dtype_name(tensor.dtype)
    if name not in CODES:
        raise TypeError(f"a snapset file holds {', '.join(CODES)} tensors, not {tensor.dtype}")
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return Raw(name, tuple(tensor.shape), flat.view(torch.uint8).numpy())


def _set_codes(values: ValueSet, tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Each entry's index in the set as ``tensor``'s dtype holds it, and where an entry (NaN
    included) is no member."""
    codes, outside = set_codes(values, _widened(tensor), _dtype_name(tensor.dtype))
    return torch.from_numpy(codes), torch.from_numpy(outside)


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
    # cast since to a dtype that merges the set's values, or changed since: None
    return values if holds_members(values, _widened(tensor), _dtype_name(tensor.dtype)) else None


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

    The file's layout is PyTorch's and the Keras front's too (``snapset._files``): a file saved
    here loads into the equivalent Keras model with [`snapset.keras.load`][], and the reverse.

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
    tensors, described = _contents(model, values or {})
    quantizers = {name: _quantizer_record(q) for name, q in input_quantizers(model)}
    metadata = file_metadata(described, quantizers, _layers(model, tensors))
    return write_file(path, tensors, metadata)


def _contents(
    model: nn.Module, declared: Mapping[str, ValueSet | list[float] | tuple[float, ...]]
) -> tuple[dict[str, Raw], dict[str, dict[str, Any]]]:
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
    tensors: dict[str, Raw] = {}
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
        tensors[name] = _raw(tensor)
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
) -> tuple[Raw, dict[str, Any]]:
    """The packed codes of ``value`` and their description; ``OutsideSetError`` (with ``fix``)
    if an entry is not a member of ``values`` as the tensor's dtype holds it."""
    if not value.is_floating_point():
        raise TypeError(f"'{name}' is {value.dtype}; a set's values live in float tensors")
    return encode(name, values, _widened(value), _dtype_name(value.dtype), method, fix)


def _add_scales(
    tensors: dict[str, Raw],
    described: dict[str, dict[str, Any]],
    name: str,
    scaling: Scaling,
    alpha: Tensor,
) -> None:
    """Store the scales of the packed tensor ``name`` beside its codes, in its dtype."""
    describe_scales(described[name], scaling)
    tensors[name + SCALES] = _raw(alpha.to(_TORCH_DTYPES[described[name]["dtype"]]))


#: The kinds of layer that both fronts name alike in a file's layer list.
_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, Kind.DENSE),
    (nn.Conv1d, Kind.CONV1D),
    (nn.Conv2d, Kind.CONV2D),
    (Multiplier, Kind.MULTIPLIER),
    (nn.Embedding, Kind.EMBEDDING),
    (nn.BatchNorm1d, Kind.BATCHNORM),
    (nn.BatchNorm2d, Kind.BATCHNORM),
    (nn.LayerNorm, Kind.LAYERNORM),
)


def _kind(module: nn.Module) -> str:
    """A layer's kind in a file's layer list: shared with Keras, or ``torch.<class>``."""
    kind = next((kind for cls, kind in _KINDS if isinstance(module, cls)), None)
    return kind or f"torch.{type_before_parametrizations(module).__name__}"


def _layers(model: nn.Module, names: Mapping[str, object]) -> list[dict[str, str]]:
    """The layers that hold the tensors ``names``, in the model's order, with their kinds
    (an input quantizer's state goes with its layer)."""
    owners = {name.rpartition(".")[0] for name in names}
    return [
        {"name": prefix, "kind": _kind(module)}
        for prefix, module in model.named_modules()
        if prefix in owners and not isinstance(module, Quantize)
    ]


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

    Tensors are matched by name, or, where the names of the file's layers and the model's
    differ (a file from [`snapset.keras.save`][], whose layers are ``dense``, ``dense_1``,
    ...), layer by layer in order, each pair of the same kind (``dense`` for ``Linear``,
    ``conv2d``, ``batchnorm``, ...; see ``snapset._files``).

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
        file = Reader(Path(path), handle)
        if model is None:
            source = _Source(file, lambda name: name)
            return {name: source.decode_any(name) for name in source.names}
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


class _Source:
    """A file as a model reads it: torch tensors under the model's names (the file's, or its
    layers paired with the model's in order; see ``snapset._files.layer_renaming``)."""

    def __init__(self, file: Reader, rename: Callable[[str], str]) -> None:
        self.file = file
        self.path = file.path
        #: The model's name of each tensor -> the file's (scales go with their tensor).
        self.names = {rename(n): n for n in file.entries if n not in file.scale_names}
        self.packed = {rename(name): packed for name, packed in file.packed.items()}
        #: The input quantizers by the model's layer name.
        self.quantizers = {rename(layer): q for layer, q in file.quantizers.items()}

    def read_shape(self, name: str) -> tuple[int, ...]:
        return self.file.entries[self.names[name]].shape

    def dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.file.entries[self.names[name]].dtype]

    def read(self, name: str) -> Tensor:
        """The plain tensor ``name`` in its dtype, in new memory."""
        return torch.from_numpy(self.file.read(self.names[name])).to(self.dtype(name))

    def members(self, name: str, dtype: torch.dtype) -> Tensor:
        """The members ``v`` of a packed tensor's set in ``dtype``, marked as ``harden_``
        marks a plain tensor of set values."""
        value = _exact(self.file.members(self.names[name], _dtype_name(dtype)), dtype)
        mark_hardened(value, self.packed[name].values)
        return value

    def scales(self, name: str, dtype: torch.dtype) -> Tensor | None:
        """The scales ``alpha`` of a packed tensor in ``dtype`` (None: unscaled)."""
        alpha = self.file.scales(self.names[name], _dtype_name(dtype))
        return None if alpha is None else _exact(alpha, dtype)

    def decode(self, name: str, dtype: torch.dtype) -> Tensor:
        """The exact values of a packed tensor, ``alpha * v`` for a scaled one, in ``dtype``,
        marked as ``harden_`` marks what it makes plain (with the scales, for a scaled one)."""
        members, alpha = self.members(name, dtype), self.scales(name, dtype)
        packed = self.packed[name]
        if alpha is None or packed.scaling is None:
            return members
        scale = Scale(packed.scaling, packed.values, members)
        value = scale.expand(members, alpha)
        mark_hardened(value, packed.values, (scale, alpha))
        return value

    def decode_any(self, name: str) -> Tensor:
        """A tensor as the file holds it: packed ones decoded in their own dtype."""
        packed = self.packed.get(name)
        return self.read(name) if packed is None else self.decode(name, _TORCH_DTYPES[packed.dtype])


def _exact(value: npt.NDArray[np.float64], dtype: torch.dtype) -> Tensor:
    """Float64 numbers that ``dtype`` holds exactly, as a ``dtype`` tensor (nothing rounds)."""
    return torch.from_numpy(value).to(dtype)


def _named(layer: str) -> Callable[[nn.Module, str], bool]:
    return lambda module, name: name == layer


def _plan(
    file: Reader, model: nn.Module
) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[str, Quantize]]]:
    """Every (target, new value) pair and every input quantizer to put in, all decoded and
    checked before anything is written."""
    slots = _slots(model)
    plain = _plain_state(model, slots)
    layers = [(layer["name"], layer["kind"]) for layer in _layers(model, {**slots, **plain})]
    source = _Source(file, layer_renaming(file.path, file.layers, layers))
    built = {layer: _built(source, layer) for layer in source.quantizers}
    installs = _quantizers_to_install(source, model, built)
    wanted = set(slots) | set(plain)
    wanted |= {name for layer, _ in installs for name in built[layer][1].values()}
    missing, unexpected = sorted(wanted - set(source.names)), sorted(set(source.names) - wanted)
    if missing or unexpected:
        raise misfit(file.path, type(model).__name__, missing, unexpected)
    writes: list[tuple[Tensor, Tensor]] = []
    for name, slot in slots.items():
        _check_fits(source, name, slot.shape, slot.values)
        _check_scaling(source, name, slot.scale)
        if name in source.packed:
            members, alpha = source.members(name, slot.dtype), source.scales(name, slot.dtype)
        else:
            members, alpha = _plain_members(source, name, slot.dtype, slot.values), None
        writes += slot.writes(members, alpha)
    objects = _tensor_objects(model)
    for name, tensor in plain.items():
        _check_fits(source, name, tuple(tensor.shape), None)
        if name in source.packed:
            value = source.decode(name, tensor.dtype)
        else:
            value = source.read(name).to(tensor.dtype)
        # the parameter or buffer itself, which keeps the mark (state_dict's view would not)
        writes.append((objects.get(name, tensor), value))
    for layer, quantizer in installs:
        state = built[layer][1]
        quantizer.load_state_dict({key: source.read(name) for key, name in state.items()})
    for record in file.quantizers.values():
        file.check_quantizer_scales(record)
    return writes, installs


def _check_fits(
    source: _Source, name: str, shape: tuple[int, ...], values: ValueSet | None
) -> None:
    packed = source.packed.get(name)
    file_shape = packed.shape if packed is not None else source.read_shape(name)
    if file_shape != shape:
        raise SnapsetFileError(
            f"{source.path}: '{name}' has shape {list(file_shape)} in the file but {list(shape)} "
            "in the model"
        )
    if values is not None and packed is not None and packed.values != values:
        raise SnapsetFileError(
            f"{source.path}: '{name}' holds values of {packed.values!r} but the model constrains "
            f"it to {values!r}"
        )


def _check_scaling(source: _Source, name: str, scale: Scale | None) -> None:
    packed = source.packed.get(name)
    saved = None if packed is None else packed.scaling
    wanted = None if scale is None else scale.scaling
    if saved != wanted:
        raise SnapsetFileError(
            f"{source.path}: '{name}' is {describe_scaling(saved)} in the file but "
            f"{describe_scaling(wanted)} in the model; constrain it as the saved model was "
            "(scale=..., scale_mode=...), or load the file into a plain model"
        )


def _plain_members(source: _Source, name: str, dtype: torch.dtype, values: ValueSet) -> Tensor:
    """A plain tensor of the file that loads into a constrained tensor: members of its set."""
    value = source.read(name).to(dtype)
    outside = _set_codes(values, value)[1]
    if bool(outside.any()):
        raise SnapsetFileError(
            f"{source.path}: '{name}' is a plain tensor in the file with entries outside "
            f"{values!r} (e.g. {value.reshape(-1)[outside][0].item()}), so it cannot load "
            "into the constrained model"
        )
    return value


def _built(source: _Source, layer: str) -> tuple[Quantize, dict[str, str]]:
    """The input quantizer that the file records for ``layer``, and the model's name of each
    entry of its ``state_dict``, checked against the file's tensors."""
    record = source.quantizers[layer]
    fields = record.record
    try:
        quantizer = Quantize(
            record.values,
            fields["method"],
            estimator=fields["estimator"],
            scale=fields["scale"],
            scale_mode=fields["scale_mode"],
            feature_axis=fields["feature_axis"],
            num_features=fields["num_features"],
        ).to(_TORCH_DTYPES[fields["dtype"]])
    except (ValueError, TypeError) as error:
        raise SnapsetFileError(f"{source.path}: input quantizer of '{layer}': {error}") from None
    prefix = f"{layer}.{INPUT_QUANTIZER}." if layer else f"{INPUT_QUANTIZER}."  # "": the model
    state = {key: prefix + key for key in quantizer.state_dict()}
    for key, tensor in quantizer.state_dict().items():
        name = state[key]
        if name not in source.names or (
            source.read_shape(name) != tuple(tensor.shape) or source.dtype(name) != tensor.dtype
        ):
            raise SnapsetFileError(
                f"{source.path}: input quantizer of '{layer}': its {key} '{name}' is missing or "
                f"not {tensor.dtype} of shape {list(tensor.shape)}"
            )
    return quantizer, state


def _quantizers_to_install(
    source: _Source, model: nn.Module, built: dict[str, tuple[Quantize, dict[str, str]]]
) -> list[tuple[str, Quantize]]:
    """The input quantizers the file records and ``model`` lacks; ``SnapsetFileError`` if the
    model's input quantizers and the file's differ."""
    present = dict(input_quantizers(model))
    extra = sorted(set(present) - set(source.quantizers))
    if extra:
        raise SnapsetFileError(
            f"{source.path} records no input quantizer of {', '.join(map(repr, extra))}, which "
            "the model has: remove them (snapset.torch.remove_input_quantizers_) or load a file "
            "saved with them"
        )
    installs = []
    for layer, (quantizer, _) in built.items():
        if layer in present:
            saved, mine = _quantizer_record(quantizer), _quantizer_record(present[layer])
            differ = [
                f"{field} ({clip(saved[field])} in the file, {clip(mine[field])} in the model)"
                for field in QUANTIZER_FIELDS
                if field != "dtype" and mine[field] != saved[field]
            ]
            if differ:
                raise SnapsetFileError(
                    f"{source.path}: the input quantizer of '{layer}' differs from the model's "
                    f"in {', '.join(differ)}; build the model's quantizers as the saved model's "
                    "were, or load into a model without them"
                )
            continue
        try:
            target = model.get_submodule(layer)
        except AttributeError:
            raise SnapsetFileError(
                f"{source.path} records an input quantizer of '{layer}', which "
                f"{type(model).__name__} does not have"
            ) from None
        if hasattr(target, INPUT_QUANTIZER):
            raise SnapsetFileError(
                f"{source.path}: '{layer}' needs an input quantizer, and its attribute "
                f"'{INPUT_QUANTIZER}' is taken by something else; rename it"
            )
        installs.append((layer, quantizer))
    return installs
