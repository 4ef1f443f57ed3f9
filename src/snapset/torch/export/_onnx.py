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
from .._constrain import named_constraints
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

    sets = {name: constraint.values for name, constraint in named_constraints(model)}
    hardened = hardened_copy(model)
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
        _store_codes(proto, sets)
    onnx.save_model(proto, str(target))
    return target


def _store_codes(proto: Any, sets: dict[str, ValueSet]) -> None:
    """Replace each constrained float initializer by uint8 codes, a ``Cast`` and a ``Gather``."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    gathers = []
    for index in range(len(graph.initializer) - 1, -1, -1):
        init = graph.initializer[index]
        values = sets.get(init.name)
        if values is None or len(values) > 256:
            continue
        weight = numpy_helper.to_array(init)
        table = np.asarray(values.values, dtype=np.float64).astype(weight.dtype)
        codes = values.encode(weight.astype(np.float64)).astype(np.uint8)
        if not np.array_equal(table[codes], weight):  # not exact (should not happen): keep it
            continue
        del graph.initializer[index]
        graph.initializer.append(numpy_helper.from_array(codes, f"{init.name}.codes"))
        graph.initializer.append(numpy_helper.from_array(table, f"{init.name}.values"))
        # Gather takes int32/int64 indices only: the codes are cast at load, a byte on disk
        gathers += [
            helper.make_node(
                "Cast", [f"{init.name}.codes"], [f"{init.name}.index"], to=onnx.TensorProto.INT32
            ),
            helper.make_node(
                "Gather", [f"{init.name}.values", f"{init.name}.index"], [init.name], axis=0
            ),
        ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(gathers + nodes)
