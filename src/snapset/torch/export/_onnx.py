"""ONNX export of a hardened model, in standard operators only."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..._sets import ValueSet
from .._constrain import hardened_scales, hardened_values, scaled_members
from .._methods import Scale
from ._file import _set_codes
from ._pack import hardened_copy

__all__ = ["export_onnx"]


def export_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    codes: bool = True,
) -> Path:
    """Export a hardened copy of ``model`` to ONNX (standard operators, opset 18+); return the path.

    ``model`` is left as it is: a deep copy is hardened (``harden_``), put in eval mode and
    exported with ``torch.onnx.export`` (the ``torch.export`` based exporter), so the graph holds
    ordinary ``Gemm``/``MatMul``/``Conv`` nodes that any ONNX runtime executes. With
    ``dynamic_batch`` the first input axis may take any size. With ``codes`` (default) each
    constrained weight is stored as ``uint8`` codes plus its value table and rebuilt by the
    standard ``Cast`` and ``Gather`` nodes, so the file holds a byte a weight instead of four
    (ONNX has no sub-byte type that runtimes compute with); ``codes=False`` keeps floats.

    A scaled weight (``w = alpha * v``) is stored as the codes of ``v`` and its scales, and
    rebuilt by a ``Mul`` (with a ``Reshape`` around it for a group size): one product an
    entry in the weight's dtype, so the runtime's weight equals the hardened one bit for bit.
    Input quantizers (``quantize_inputs_``) are exported as what their forward computes:
    divisions, comparisons with the set's thresholds (ties go up, as in PyTorch; no ``Round``,
    whose ties go to even) and products, so that a runtime rounds each activation as PyTorch
    does.

    Examples:
        >>> import os, tempfile, torch, snapset, snapset.torch as st
        >>> import onnxruntime as ort
        >>> model = st.constrain_(torch.nn.Linear(8, 3), snapset.Ternary()).eval()
        >>> x = torch.randn(4, 8)
        >>> path = st.export_onnx(model, x, os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> session = ort.InferenceSession(str(path))
        >>> (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        >>> bool(abs(y - model(x).detach().numpy()).max() < 1e-5)
        True
    """
    import onnx

    hardened = hardened_copy(model)
    marks = {}
    for name, tensor in [*hardened.named_parameters(), *hardened.named_buffers()]:
        values = hardened_values(tensor)
        if values is not None:
            marks[name] = (values, hardened_scales(tensor))
    target = Path(path)
    options: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": False}
    if dynamic_batch:
        options["dynamic_shapes"] = ({0: torch.export.Dim.DYNAMIC},)
    with warnings.catch_warnings():
        # torch's exporter warns about its own internals (deprecated pytree APIs)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(hardened, (example_input,), **options)
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    if codes:
        _store_codes(proto, marks)
    onnx.save_model(proto, str(target))
    return target


Mark = tuple[ValueSet, tuple[Scale, Tensor] | None]


def _store_codes(proto: Any, marks: dict[str, Mark]) -> None:
    """Replace each float initializer of set values by uint8 codes, a ``Cast`` and a ``Gather``
    (and, for a scaled set, its scales and a ``Mul``, with a ``Reshape`` for a group size)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    nodes = []
    for index in range(len(graph.initializer) - 1, -1, -1):
        init = graph.initializer[index]
        values, scaled = marks.get(init.name, (None, None))
        if values is None or len(values) > 256:
            continue
        weight = numpy_helper.to_array(init)
        members = _members(torch.from_numpy(weight.copy()), values, scaled)
        if members is None:  # not exact (should not happen): keep it
            continue
        name = init.name
        shape = weight.shape if scaled is None else scaled[0].layout.grouped
        table = np.asarray(values.values, dtype=np.float64).astype(weight.dtype)
        codes = values.encode(members.double().numpy()).astype(np.uint8).reshape(shape)
        del graph.initializer[index]
        graph.initializer.append(numpy_helper.from_array(codes, f"{name}.codes"))
        graph.initializer.append(numpy_helper.from_array(table, f"{name}.values"))
        gathered = name if scaled is None else f"{name}.members"
        # Gather takes int32/int64 indices only: the codes are cast at load, a byte on disk
        nodes += [
            helper.make_node(
                "Cast", [f"{name}.codes"], [f"{name}.index"], to=onnx.TensorProto.INT32
            ),
            helper.make_node("Gather", [f"{name}.values", f"{name}.index"], [gathered], axis=0),
        ]
        if scaled is None:
            continue
        scale, alpha = scaled
        layout = scale.layout
        grouped_alpha = alpha.to(members.dtype).reshape(layout.grouped_scale).numpy()
        graph.initializer.append(numpy_helper.from_array(grouped_alpha, f"{name}.scales"))
        if layout.grouped == layout.shape:
            nodes.append(helper.make_node("Mul", [gathered, f"{name}.scales"], [name]))
            continue
        shape_of = np.asarray(layout.shape, dtype=np.int64)
        graph.initializer.append(numpy_helper.from_array(shape_of, f"{name}.shape"))
        nodes += [
            helper.make_node("Mul", [gathered, f"{name}.scales"], [f"{name}.grouped"]),
            helper.make_node("Reshape", [f"{name}.grouped", f"{name}.shape"], [name]),
        ]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)


def _members(
    weight: Tensor, values: ValueSet, scaled: tuple[Scale, Tensor] | None
) -> Tensor | None:
    """The set's members that ``weight`` holds (times its scales, for a scaled set), or None
    if it holds anything else."""
    if scaled is not None:
        try:
            return scaled_members(weight, values, *scaled)
        except ValueError:
            return None
    try:
        outside = _set_codes(values, weight)[1]
    except ValueError:  # a set that the weight's dtype cannot hold
        return None
    return None if bool(outside.any()) else weight
