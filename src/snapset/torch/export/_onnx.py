"""ONNX export of a hardened model: standard operators (weights as codes or floats), or ONNX
Runtime's ``com.microsoft.MatMulNBits`` for ternary linear layers (2 bits a weight)."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..._files import write_atomically
from ..._sets import ValueSet
from .._constrain import hardened_scales, hardened_values, scaled_members
from .._methods import Scale
from ._file import _set_codes
from ._pack import _with_input_quantizer, hardened_copy
from ._ternary import TernaryLinear, ternary_model

__all__ = ["export_onnx"]

#: ``export_onnx``'s ways of storing constrained weights.
WEIGHTS = ("codes", "float", "matmul_nbits")
#: MatMulNBits' bits a weight for ternary members (onnxruntime's CPU kernel takes 2, 4 or 8).
NBITS = 2
#: MatMulNBits' zero point when the graph gives none, ``2 ** (bits - 1)``: code ``v + 2``.
NBITS_ZERO = 2 ** (NBITS - 1)
#: The largest block (columns a scale): one scale a row up to 256 inputs.
NBITS_MAX_BLOCK = 256
#: ONNX Runtime's domain of contrib operators.
MICROSOFT = "com.microsoft"


def export_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    weights: str = "codes",
    codes: bool = True,
) -> Path:
    """Export a hardened copy of ``model`` to ONNX (opset 18+); return the path.

    ``model`` is left as it is: a deep copy is hardened (``harden_``), put in eval mode and
    exported with ``torch.onnx.export`` (the ``torch.export`` based exporter), so the graph holds
    ordinary ``Gemm``/``MatMul``/``Conv`` nodes that any ONNX runtime executes. With
    ``dynamic_batch`` the first input axis may take any size. ``weights`` says how the
    constrained weights are stored:

    - ``"codes"`` (default): each as ``uint8`` codes plus its value table, rebuilt by the
      standard ``Cast`` and ``Gather`` nodes, so the file holds a byte a weight instead of
      four (ONNX has no sub-byte type that standard operators compute with);
    - ``"float"``: as floats (``codes=False`` is the older spelling);
    - ``"matmul_nbits"``: each ternary linear layer (``bitnet_``'s: ``Ternary()``, one scale a
      tensor or none) becomes ONNX Runtime's contrib operator ``com.microsoft.MatMulNBits``
      with ``bits=2``: codes ``v + 2`` four a byte, its default zero point 2, and ``alpha``
      as every block's scale (blocks of a power of two from 16 to 256 inputs), so that the
      runtime's weight ``(code - 2) * alpha`` is the hardened one bit for bit and the file
      holds about 2.1 bits a weight. Only ONNX Runtime runs it (CPU: any version with 2-bit
      support, 1.20 or later). Any other constrained tensor is refused (``ValueError``, see
      ``ternary_model``), as are layers in a dtype other than float32 or float16.

    The exporter's debugging notes on each node (stack traces, scopes) are left out: they
    took most of a small model's file.

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
        >>> bitnet = st.bitnet_(torch.nn.Sequential(torch.nn.Linear(64, 32)), exclude=()).eval()
        >>> path = st.export_onnx(bitnet, x.repeat(1, 8), path, weights="matmul_nbits")
        >>> session = ort.InferenceSession(str(path))
        >>> (y,) = session.run(None, {session.get_inputs()[0].name: x.repeat(1, 8).numpy()})
        >>> bool(abs(y - bitnet(x.repeat(1, 8)).detach().numpy()).max() < 1e-5)
        True
    """
    weights = _weights_option(weights, codes)
    options: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": False}
    if dynamic_batch:
        options["dynamic_shapes"] = ({0: torch.export.Dim.DYNAMIC},)
    marks: dict[str, Mark] = {}
    marked: dict[str, np.ndarray] = {}
    if weights == "matmul_nbits":
        hardened = _with_matmul_nbits(model)
        options["custom_translation_table"] = _matmul_nbits_translation()
    else:
        hardened = hardened_copy(model)
        for name, tensor in [*hardened.named_parameters(), *hardened.named_buffers()]:
            values = hardened_values(tensor)
            if values is not None:
                marks[name] = (values, hardened_scales(tensor))
                marked[name] = tensor.detach().cpu().numpy()
    target = Path(path)
    with warnings.catch_warnings():
        # torch's exporter warns about its own internals (deprecated pytree APIs)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(hardened, (example_input,), **options)
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    for node in proto.graph.node:
        # the exporter's stack traces and scopes, per node: most of a small model's file
        del node.metadata_props[:]
    if weights == "codes":
        _store_codes(proto, marks, marked)
    import onnx

    write_atomically(target, lambda path: onnx.save_model(proto, path))
    return target


def _weights_option(weights: str, codes: bool) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"Invalid weights: {weights!r} (choose one of {', '.join(WEIGHTS)})")
    if not codes:
        if weights != "codes":
            raise ValueError(
                f"codes=False is the older spelling of weights='float'; it cannot be combined "
                f"with weights={weights!r}: pass weights alone"
            )
        return "float"
    return weights


Mark = tuple[ValueSet, tuple[Scale, Tensor] | None]


def _store_codes(proto: Any, marks: dict[str, Mark], marked: dict[str, np.ndarray]) -> None:
    """Replace each float initializer of set values by uint8 codes, a ``Cast`` and a ``Gather``
    (and, for a scaled set, its scales and a ``Mul``, with a ``Reshape`` for a group size)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    found = _marked_initializers(graph, marks, marked)
    nodes = []
    for index in range(len(graph.initializer) - 1, -1, -1):
        init = graph.initializer[index]
        if init.name not in found:
            continue
        (values, scaled), transposed = found[init.name]
        if len(values) > 256:
            continue
        weight = numpy_helper.to_array(init)
        oriented = weight.T if transposed else weight
        members = _members(torch.from_numpy(oriented.copy()), values, scaled)
        if members is None:  # not exact (should not happen): keep it
            continue
        name = init.name
        shape = oriented.shape if scaled is None else scaled[0].layout.grouped
        table = np.asarray(values.values, dtype=np.float64).astype(weight.dtype)
        codes = values.encode(members.double().numpy()).astype(np.uint8).reshape(shape)
        codes = codes.T if transposed else codes
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
        grouped_alpha = grouped_alpha.T if transposed else grouped_alpha
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


def _marked_initializers(
    graph: Any, marks: dict[str, Mark], marked: dict[str, np.ndarray]
) -> dict[str, tuple[Mark, bool]]:
    """The initializers that hold a constrained tensor, and whether transposed: by name, and
    by value for the matrices that the exporter renamed (a linear layer's weight on inputs
    of more than two axes becomes a constant-folded transpose under a new name)."""
    from onnx import numpy_helper

    found = {name: (mark, False) for name, mark in marks.items()}
    for init in graph.initializer:
        if init.name in found or len(init.dims) != 2:
            continue
        dims = tuple(init.dims)
        for name, tensor in marked.items():
            transposed = tensor.shape == dims[::-1] and tensor.shape != dims
            if tensor.shape != dims and not transposed:
                continue
            array = numpy_helper.to_array(init)
            if np.array_equal(array.T if transposed else array, tensor):
                if not transposed or _transposable(marks[name]):
                    found[init.name] = (marks[name], transposed)
                break
    return found


def _transposable(mark: Mark) -> bool:
    """Whether a transposed copy of a marked matrix takes its scales transposed: no scale, or
    a layout without groups within a row."""
    scaled = mark[1]
    return scaled is None or scaled[0].layout.grouped == scaled[0].layout.shape


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


class MatMulNBitsLinear(nn.Module):
    """A ternary linear layer as ONNX Runtime's ``MatMulNBits`` holds it: ``packed`` codes
    ``v + 2`` (2 bits each, the first input in the low bits) of shape
    ``(out, blocks, block_size / 4)`` and one scale a block, ``alpha`` for all.

    Its forward (the custom operator ``snapset::matmul_nbits``, which ``export_onnx``
    translates to ``com.microsoft.MatMulNBits``) computes ``x @ (alpha * v).T + bias``.
    """

    def __init__(self, layer: TernaryLinear, dtype: torch.dtype) -> None:
        super().__init__()
        _matmul_nbits_op()  # registered before the forward calls it
        out_features, in_features = layer.members.shape
        self.in_features, self.out_features = in_features, out_features
        self.block_size = nbits_block_size(in_features)
        blocks = -(-in_features // self.block_size)
        self.register_buffer("packed", pack_nbits(layer.members, self.block_size))
        alpha = torch.tensor(layer.scale, dtype=dtype)
        self.register_buffer("scales", alpha.expand(out_features * blocks).clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = torch.ops.snapset.matmul_nbits(
            x, self.packed, self.scales, self.in_features, self.out_features, self.block_size
        )
        return y if self.bias is None else y + self.bias


def nbits_block_size(in_features: int) -> int:
    """The smallest power of two >= 16 that covers ``in_features``, at most 256: one scale a
    row for rows of up to 256 inputs, little padding otherwise."""
    size = 16
    while size < min(in_features, NBITS_MAX_BLOCK):
        size *= 2
    return size


def pack_nbits(members: Tensor, block_size: int) -> Tensor:
    """``(out, in)`` members of {-1, 0, 1} as MatMulNBits' 2-bit codes ``v + 2``, padded with
    zeros (code 2) to whole blocks: ``uint8 (out, blocks, block_size / 4)``."""
    out_features, in_features = members.shape
    blocks = -(-in_features // block_size)
    codes = torch.full((out_features, blocks * block_size), NBITS_ZERO, dtype=torch.uint8)
    codes[:, :in_features] = (members.to(torch.int16) + NBITS_ZERO).to(torch.uint8)
    quads = codes.reshape(out_features, blocks, block_size // 4, 4)
    packed = torch.zeros(quads.shape[:-1], dtype=torch.uint8)
    for i in range(4):
        packed |= quads[..., i] << (NBITS * i)
    return packed


def unpack_nbits(packed: Tensor, in_features: int) -> Tensor:
    """The members that ``pack_nbits`` packed: ``int8 (out, in)``."""
    codes = torch.stack([(packed >> (NBITS * i)) & 3 for i in range(4)], dim=-1)
    members: Tensor = codes.reshape(packed.shape[0], -1)[:, :in_features].to(torch.int8)
    return members.sub(NBITS_ZERO)


def _with_matmul_nbits(model: nn.Module) -> nn.Module:
    """A hardened copy of ``model`` with each ternary linear layer a ``MatMulNBitsLinear``
    (carrying the layer's RMSNorm and input quantizer)."""
    ternary = ternary_model(model, runtime="ONNX MatMulNBits")
    hardened = ternary.hardened
    for name, layer in ternary.layers.items():
        linear = cast(nn.Linear, hardened.get_submodule(name))
        dtype = linear.weight.dtype
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(
                f"MatMulNBits computes in float32 or float16, but '{name}' is {dtype}. "
                "Convert the model first (model.float())"
            )
        replacement = _with_input_quantizer(MatMulNBitsLinear(layer, dtype), linear)
        if name:
            hardened.set_submodule(name, replacement)
        else:
            hardened = replacement
    return hardened


@functools.cache
def _matmul_nbits_op() -> Any:
    """The custom operator ``snapset::matmul_nbits`` (registered once a process): eager, the
    dequantized product; exported, ``com.microsoft.MatMulNBits``."""

    @torch.library.custom_op("snapset::matmul_nbits", mutates_args=())
    def matmul_nbits(
        x: Tensor, packed: Tensor, scales: Tensor, k: int, n: int, block_size: int
    ) -> Tensor:
        members = unpack_nbits(packed, k).to(x.dtype)
        alpha = scales.reshape(n, -1).repeat_interleave(block_size, dim=1)[:, :k]
        return x @ (members * alpha).T

    @matmul_nbits.register_fake
    def _(x: Tensor, packed: Tensor, scales: Tensor, k: int, n: int, block_size: int) -> Tensor:
        return x.new_empty((*x.shape[:-1], n))

    return matmul_nbits


def _matmul_nbits_translation() -> dict[Any, Any]:
    import onnxscript

    operator = onnxscript.values.Op(
        onnxscript.values.Opset(MICROSOFT, 1), "MatMulNBits", _matmul_nbits_schema()
    )

    def matmul_nbits(x: Any, packed: Any, scales: Any, k: int, n: int, block_size: int) -> Any:
        return operator(x, packed, scales, K=k, N=n, bits=NBITS, block_size=block_size)

    _matmul_nbits_op()
    return {torch.ops.snapset.matmul_nbits.default: matmul_nbits}


def _matmul_nbits_schema() -> Any:
    """The part of ``MatMulNBits``' schema that the export uses (onnx itself does not hold
    ONNX Runtime's contrib operators; onnxscript needs a schema to call one)."""
    from onnx.defs import OpSchema

    parameter = OpSchema.FormalParameter
    attribute = OpSchema.Attribute
    return OpSchema(
        "MatMulNBits",
        MICROSOFT,
        1,
        inputs=[parameter("A", "T1"), parameter("B", "T2"), parameter("scales", "T1")],
        outputs=[parameter("Y", "T1")],
        type_constraints=[
            ("T1", ["tensor(float)", "tensor(float16)"], "activations and scales"),
            ("T2", ["tensor(uint8)"], "packed weights"),
        ],
        attributes=[
            attribute(name, OpSchema.AttrType.INT, "") for name in ("K", "N", "bits", "block_size")
        ],
    )
