"""``pack``: an inference-only copy of a model whose constrained layers run on packed codes."""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._files import set_codes
from ..._kernels import (
    LOOKUP_MAX_ROWS,
    PackedMatrix,
    backend,
    decode_rows,
    grid_integers,
    int8_weight,
    integer_grid,
    lookup_max_rows,
    sign_bits,
    small_matmul,
    xnor_bits,
)
from ..._kernels._int8 import IntegerGrid
from ..._scales import bad_scale_message
from ..._sets import Sign, ValueSet
from ..._spec import outside_set_error
from .._bitnet import carry_input_norm
from .._constrain import harden_, hardened_scales, hardened_values, mark_hardened, scaled_members
from .._layers import GF2Linear
from .._methods import Scale
from .._quantize import (
    Quantize,
    input_quantizer_of,
    input_quantizers,
    quantize_inputs_,
    remove_input_quantizers_,
)
from ._file import _dtype_name, _widened, hardened_set
from ._pack_gf2 import PackedGF2Linear

__all__ = [
    "LUT_MAX_ROWS",
    "PackedConv",
    "PackedLinear",
    "PackingReport",
    "SignChain",
    "SignThresholds",
    "kernel_backend",
    "pack",
    "unpackable",
]

LUT_MAX_ROWS = LOOKUP_MAX_ROWS
"""Up to this many input rows, table lookups beat decoded tiles and BLAS on any packed layer,
and 8-bit activations run table lookups too (beyond, ``torch._int_mm``); measured by
``benchmarks/inference.py`` on a 4096x4096 layer. A layer's ``lookup_max_rows`` is this, or
None (lookups at any batch) where register permutes make lookups the cheaper kernel."""
#: Float32 bytes of the decoded block of ``W.T`` (512 inputs by 4096 outputs), the size that
#: ran fastest with BLAS in ``benchmarks/inference.py``: one such workspace per thread, shared
#: by all packed layers.
TILE_BYTES = 8 << 20


def kernel_backend(explain: bool = False) -> str:
    """The kernels that packed layers run: ``"numba"`` (compiled for this CPU on first use) or
    ``"numpy"`` (the fallback, where numba is missing or fails, or ``SNAPSET_KERNELS=numpy`` is
    set). With ``explain``, a sentence that starts with the name and says why: where numba's
    cache lies, that the kernels run uncached (no writable cache directory, damaged cache
    files; a warning says so once), or why numpy runs.

    Examples:
        >>> import snapset.torch as st
        >>> st.export.kernel_backend() in ("numba", "numpy")
        True
        >>> st.export.kernel_backend(explain=True)  # doctest: +ELLIPSIS
        'numba, compiled for this CPU, cached in ...'
    """
    return backend(explain)


def packed_matmul(
    x: Tensor, matrix: PackedMatrix, bias: Tensor, lookup_max_rows: int | None = LUT_MAX_ROWS
) -> tuple[Tensor, str, str]:
    """``x @ W.T + bias`` for float rows ``x`` of shape ``(rows, n_in)``, on the packed ``W``.

    Returns the result, the kernel that ran: ``"xnor"`` (XNOR-popcount, when ``W`` and every
    input are in {-1, +1}), ``"lookup"`` (table lookups, up to ``lookup_max_rows`` rows, any
    number for None) or ``"tiles"`` (``W.T`` decoded a block at a time, times BLAS), and the
    backend that ran it (``"numba"`` or ``"numpy"``). ``bias`` is float32 (zeros for a layer
    without one); ``x`` has passed ``check_input``.
    """
    rows = x.detach()
    if rows.dtype != torch.float32 or not rows.is_contiguous():
        rows = rows.to(torch.float32).contiguous()
        if x.dtype == torch.float64:
            _check_float32_range(x, rows)
    threads = torch.get_num_threads()
    ran, kernel, y = small_matmul(rows.numpy(), matrix, bias.numpy(), lookup_max_rows, threads)
    if y is not None:
        return torch.from_numpy(y), kernel, ran
    return _tiled_matmul(rows, matrix, threads).add_(bias), kernel, ran


def check_input(x: Tensor) -> None:
    """Refuse an input that packed layers cannot compute with as a float layer would: another
    device, or a dtype that is not floating point (float64 entries beyond float32's range are
    refused where they are converted)."""
    if x.device.type != "cpu":
        raise ValueError(f"packed layers run on the CPU; move the input there (got {x.device})")
    if not x.is_floating_point():
        # nn.Linear raises on integer inputs too; converting would truncate nothing but hide
        # a caller's mistake, and a bool or complex input has no float meaning here
        raise TypeError(
            f"packed layers take floating-point inputs, as nn.Linear does; got {x.dtype}: "
            "convert the input (x.float()) first"
        )


def _check_float32_range(x: Tensor, rows: Tensor) -> None:
    """Refuse finite float64 entries of ``x`` that became infinite in ``rows``, its float32
    copy (one pass over the copy when nothing overflowed; numpy's is the fast one)."""
    if bool(np.isinf(rows.numpy()).any()):
        beyond = torch.isinf(rows) & torch.isfinite(x)
        if bool(beyond.any()):
            raise ValueError(
                f"the float64 input holds {x[beyond][0].item():.6g}, beyond float32's range "
                f"({torch.finfo(torch.float32).max:.6g}), in which packed layers compute: "
                "scale the input down, or keep this layer in float"
            )


_WORKSPACE = threading.local()


def _tiled_matmul(rows: Tensor, matrix: PackedMatrix, threads: int) -> Tensor:
    """``rows @ W.T`` by BLAS on ``W.T`` decoded a block of inputs at a time (scaled entries
    in float32, as a scaled float layer holds them)."""
    g = matrix.group
    padded = torch.zeros(rows.shape[0], matrix.groups * g)
    # padding inputs are 0: the padding codes add nothing
    padded[:, : matrix.width] = torch.from_numpy(matrix.lay_out(rows.numpy()))
    step = max(1, TILE_BYTES // (4 * g * matrix.out))
    size = min(step, matrix.groups) * g * matrix.out
    workspace = getattr(_WORKSPACE, "buffer", None)
    if workspace is None or workspace.size < size:
        # one buffer per thread, kept between calls: a fresh 8 MiB array faults its pages in
        # on every call, which costs as much as decoding into it
        workspace = _WORKSPACE.buffer = np.empty(max(size, TILE_BYTES // 4), dtype=np.float32)
    buffer = workspace[:size].reshape(-1, matrix.out)
    y = torch.zeros(rows.shape[0], matrix.out)
    for start in range(0, matrix.groups, step):
        stop = min(start + step, matrix.groups)
        tile = torch.from_numpy(decode_rows(matrix, start, stop, buffer, threads))
        y.addmm_(padded[:, start * g : stop * g], tile)
    return y


#: The largest integer sum an int32 accumulator holds.
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class _Int8Path:
    """What the 8-bit path of a packed layer needs: the quantizer it was planned for, the
    integer grids of the activations' and the weights' sets, and each packed matrix's ``W.T``
    as int8 (``(width, out)``, decoded once); none where ``torch._int_mm`` is slow on this
    CPU (``float_products`` says why): the activations are then rounded here and multiplied
    by the float kernels."""

    quantizer: Quantize
    grid: IntegerGrid
    weight_step: float
    weights: tuple[Tensor, ...]
    float_products: str | None = None

    def members_and_scale(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The quantizer's ``members_and_scale(x)``, with the latents rounded in one compiled
        pass where the rounding is the nearest value (``"ste"``) of a CPU float32 input: the
        same members, several times faster than the quantizer's own operations."""
        latent, alpha = self.quantizer.latents_and_scale(x)
        if self.quantizer.method == "ste" and latent.dtype == torch.float32:
            flat = latent.detach().contiguous().reshape(-1).numpy()
            boundaries = self.quantizer.rounding.thresholds.numpy()
            found = grid_integers(flat, boundaries, self.grid, torch.get_num_threads())
            if found is not None:  # step * n is the member, exact in float32
                integers = torch.from_numpy(found).reshape(latent.shape)
                return integers.to(torch.float32).mul_(self.grid.step), alpha
        return self.quantizer.rounding(latent).detach(), alpha

    def matmul(
        self, members: Tensor, alpha: Tensor | None, matrix: PackedMatrix, index: int, bias: Tensor
    ) -> Tensor:
        """``(alpha * members) @ W.T + bias`` for rows of exact members of the quantizer's set
        (``(rows, n_in)``) and their scale (None, one, or one a row): the integers of each
        span of inputs that share a weight scale summed exactly by ``torch._int_mm`` (int8
        times int8 into int32), then scaled."""
        integers = (members / self.grid.step).to(torch.int8)  # exact: members are step * n
        laid = torch.from_numpy(matrix.lay_out(integers.contiguous().numpy()))
        weight = self.weights[index]
        scales = torch.from_numpy(matrix.scales)
        inputs = weight.shape[0] // len(scales)
        y = torch.zeros(len(members), matrix.out)
        for span, scale in enumerate(scales):
            part = slice(span * inputs, (span + 1) * inputs)
            y.addcmul_(torch._int_mm(laid[:, part], weight[part]).to(torch.float32), scale)
        steps = self.grid.step * self.weight_step
        factor = steps if alpha is None else alpha.reshape(-1, 1).to(torch.float32) * steps
        return y.mul_(factor).add_(bias)


def slow_int8_matmul() -> str | None:
    """Why ``torch._int_mm`` would be slower than the float kernels on this CPU, or None.

    Its int8 products are fast where oneDNN has integer kernels for the CPU: AVX-512 (with
    VNNI since Cascade Lake and Zen 4) or AMX, which torch reports as an ``AVX512``
    capability. Elsewhere (an AVX2-only CPU) it falls back to a loop that measured 10 to 80
    times slower than float32 BLAS (``benchmarks/results/lm_generation_large.md``), so the
    8-bit path is not planned there. ``SNAPSET_INT8_MATMUL=1`` (or ``0``) overrides the
    choice, as the tests do to check the path on any CPU.
    """
    forced = os.environ.get("SNAPSET_INT8_MATMUL")
    if forced in ("0", "1"):
        return None if forced == "1" else "SNAPSET_INT8_MATMUL=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return None
    return f"torch._int_mm has no fast int8 kernel on this CPU ({capability})"


def _int8_path(
    quantizer: Quantize | None, matrices: tuple[PackedMatrix, ...], token_scales: bool
) -> _Int8Path | str:
    """The 8-bit path for a packed layer whose input quantizer is ``quantizer``, or what
    runs instead and why (a phrase for ``PackingReport``). ``token_scales``: whether a scale
    per row keeps the features of a row on one scale (a linear layer's rows, not a
    convolution's patches)."""
    if quantizer is None:
        return "float activations: no input quantizer"
    values, scaling = quantizer.values, quantizer.scaling
    if matrices[0].signs and values == Sign() and scaling is None:
        return "sign activations on XNOR-popcount"
    if scaling is not None and scaling.granularity == "token":
        if not token_scales:
            return "float activations: a convolution's patches mix positions of token scales"
        if quantizer.feature_axis != -1:
            return "float activations: its input quantizer's scale varies along the features"
    if scaling is not None and scaling.granularity == "channel":
        return "float activations: its input quantizer's scale varies along the features"
    grid = integer_grid(values)
    if isinstance(grid, str):
        return f"float activations: its input quantizer's set {grid}"
    weight_grid = integer_grid(matrices[0].values)
    if isinstance(weight_grid, str):
        return f"float activations: its weight's set {weight_grid}"
    inputs = max(m.width // len(m.scales) for m in matrices)  # summed by one int32
    if inputs * grid.largest * weight_grid.largest > _INT32_MAX:
        return (
            f"float activations: int32 sums of {inputs} products up to "
            f"{grid.largest * weight_grid.largest} could overflow"
        )
    slow = slow_int8_matmul()
    weights = (
        ()
        if slow is not None  # the rounding still runs compiled; the products in float
        else tuple(torch.from_numpy(int8_weight(m, weight_grid)) for m in matrices)
    )
    return _Int8Path(quantizer, grid, weight_grid.step, weights, slow)


class _PackedProduct(nn.Module):
    """What ``PackedLinear`` and ``PackedConv`` share: the choice of kernel for each matrix
    product, and the input quantizer, which they call themselves (the forward pre-hook of
    ``quantize_inputs_`` leaves their input alone) so as to keep its members and scale apart
    for the 8-bit path."""

    #: ``quantize_inputs_``'s pre-hook passes the input on unquantized: ``forward`` quantizes.
    quantizes_own_input = True
    #: Whether a scale per row keeps a row's features on one scale (True for rows of a
    #: linear layer's input, False for a convolution's patches).
    token_scales = True

    def __init__(self, matrices: tuple[PackedMatrix, ...]) -> None:
        super().__init__()
        #: The packed weight: one matrix, or one per group of a convolution's channels.
        self.matrices = matrices
        #: Up to this many input rows of float activations use the table-lookup kernel,
        #: beyond it decoded tiles and BLAS (0 always uses tiles; None: lookups at any batch,
        #: the default where register permutes make them the cheaper kernel).
        self.lookup_max_rows: int | None = lookup_max_rows(matrices[0])
        #: The kernel the last call ran: "xnor", "lookup", "tiles" or "int8".
        self.last_kernel = ""
        #: The backend that ran it: "numba" or "numpy" (``kernel_backend(explain=True)`` says
        #: why), or "torch" for "int8".
        self.last_backend = ""
        self._int8: _Int8Path | None = None
        #: Which kernels run the layer's activations, and why, as ``plan_kernels`` last
        #: decided (for the input quantizer the layer had then).
        self.kernel_plan = ""
        self.plan_kernels()

    def plan_kernels(self) -> str:
        """Decide which kernels run the layer's activations, for the input quantizer it has
        now, and say which and why; ``pack`` calls it.

        The 8-bit path runs where the quantizer's set lies on an integer grid within int8
        (``step * n``, such as ``ValueSet(range(-128, 128))``, ternary or signs), its scale
        is the same along the features of a row (None, a static number or ``"tensor"``, or
        ``"token"`` for a linear layer), the weight's set lies on such a grid too, and
        the int32 sums cannot overflow: the weight is then decoded once into an int8 ``W.T``
        (``int8_bytes``, besides the packed codes), and calls with more than
        ``LUT_MAX_ROWS`` rows multiply integers with ``torch._int_mm``; fewer rows run the
        table lookups on the quantized activations. Otherwise the float kernels run on the
        quantizer's output, as without this path. Call it again after adding or removing
        the input quantizer of a packed layer: until then such a layer runs the float path.

        Examples:
            >>> import torch, snapset, snapset.torch as st
            >>> ternary = snapset.Ternary()
            >>> layer = st.harden_(st.constrain(torch.nn.Linear(16, 4), "weight", ternary))
            >>> packed = st.PackedLinear.from_linear(layer, ternary)
            >>> int8 = st.Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
            >>> packed = st.quantize_inputs_(packed, int8, modules=(st.PackedLinear,))
            >>> packed.plan_kernels(), packed.int8_bytes
            ('8-bit activations on torch._int_mm above 8 rows', 64)
        """
        path = _int8_path(input_quantizer_of(self), self.matrices, self.token_scales)
        self._int8 = None if isinstance(path, str) else path
        if isinstance(path, str):
            self.kernel_plan = path
        elif path.float_products is not None:
            self.kernel_plan = (
                "8-bit activations rounded in one compiled pass, multiplied on the float "
                f"kernels: {path.float_products}"
            )
        else:
            self.kernel_plan = f"8-bit activations on torch._int_mm above {LUT_MAX_ROWS} rows"
        return self.kernel_plan

    @property
    def int8_weights(self) -> tuple[Tensor, ...]:
        """The int8 ``W.T`` of each packed matrix that the 8-bit path multiplies, ``(width,
        out)`` (the integers ``n`` of ``w = scale * step * n``); empty when it is off."""
        return () if self._int8 is None else self._int8.weights

    @property
    def int8_bytes(self) -> int:
        """Bytes of ``int8_weights``, held besides the packed codes while the 8-bit path is
        on (a byte a weight); 0 otherwise."""
        return sum(weight.nbytes for weight in self.int8_weights)

    def _quantized(self, x: Tensor) -> tuple[Tensor, Tensor | None, _Int8Path | None]:
        """``x`` through the layer's input quantizer: its members, scale and the 8-bit path
        where that path was planned for this quantizer; else the quantizer's output (``x``
        itself without one), None and None."""
        check_input(x)
        quantizer = input_quantizer_of(self)
        if quantizer is None:
            return x, None, None
        path = self._int8
        if path is None or path.quantizer is not quantizer:
            return quantizer(x), None, None
        members, alpha = path.members_and_scale(x)
        return members, alpha, path

    def _matmul(
        self, rows: Tensor, alpha: Tensor | None, path: _Int8Path | None, index: int, bias: Tensor
    ) -> Tensor:
        """``(alpha * rows) @ W.T + bias`` for matrix ``index``, on the 8-bit path for more
        than ``LUT_MAX_ROWS`` rows where it applies, else on the float kernels."""
        matrix = self.matrices[index]
        if path is not None and path.weights and rows.shape[0] > LUT_MAX_ROWS:
            self.last_kernel, self.last_backend = "int8", "torch"
            return path.matmul(rows, alpha, matrix, index, bias)
        if alpha is not None:  # the quantizer's output, bit for bit
            rows = rows * alpha.reshape(-1, 1)
        y, self.last_kernel, self.last_backend = packed_matmul(
            rows, matrix, bias, self.lookup_max_rows
        )
        return y


class PackedLinear(_PackedProduct):
    """An inference-only ``nn.Linear`` whose weight lives as packed codes (see ``pack``).

    The weight takes ``g`` codes a byte (1 bit a weight for two values, 1.6 for ternary, 2 for
    four); the bias stays float32. A weight that ``harden_`` made from a scaled set
    (``w = alpha * v``, see [`constrain`][snapset.torch.constrain]'s ``scale``) keeps its codes
    and its scales (float32, one per tensor, output channel or group of inputs): the kernels sum
    the codes' values as unscaled, then multiply each output's sum (each group's, for a group
    size) by its scale. It computes in float32 on the CPU, and has no gradient.
    ``lookup_max_rows`` picks the kernel by batch size: up to this many input rows use the
    table-lookup kernel, beyond it decoded tiles and BLAS; 0 always uses tiles, None never.
    Its default is ``LUT_MAX_ROWS``, or None where the CPU has AVX-512 register permutes and
    the layer is wide (codes a byte times outputs at least 8192, as a 1024-output sign
    layer): lookups then cost less than float multiply-adds at any batch. XNOR-popcount runs
    instead when weights and inputs are all in {-1, +1}. With an input quantizer on an
    integer grid (such as BitNet b1.58's per-token 8-bit activations), more rows than
    ``LUT_MAX_ROWS`` run on integer matrix units instead
    (``plan_kernels`` says when; ``kernel_plan`` says what was decided).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.harden_(st.constrain(torch.nn.Linear(64, 8), "weight", snapset.Sign()))
        >>> packed = st.PackedLinear.from_linear(layer, snapset.Sign())
        >>> packed.weight_bytes, 4 * layer.weight.numel()  # a bit a weight: 32x fewer bytes
        (64, 2048)
        >>> x = torch.randn(3, 64)
        >>> torch.allclose(packed(x), layer(x), atol=1e-5)
        True
        >>> packed.lookup_max_rows = 0   # decoded tiles and BLAS even for one row
        >>> _ = packed(x[:1]); packed.last_kernel
        'tiles'
    """

    bias: Tensor | None

    def __init__(self, matrix: PackedMatrix, bias: Tensor | None) -> None:
        super().__init__((matrix,))
        self.matrix = matrix
        self.in_features, self.out_features = matrix.n_in, matrix.out
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._shift = self.bias if self.bias is not None else torch.zeros(matrix.out)

    @classmethod
    def from_linear(cls, linear: nn.Linear, values: ValueSet) -> PackedLinear:
        """Pack a (hardened) ``nn.Linear`` whose weight holds only members of ``values``, or
        (hardened from a scaled set) its scales times members; ``ValueError`` if it cannot be
        packed (``unpackable`` says why)."""
        codes, scales = _codes_and_scales(linear, values)
        return cls(PackedMatrix.from_codes(codes, values, scales), linear.bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight: its codes and its scales."""
        return self.matrix.nbytes

    def forward(self, x: Tensor) -> Tensor:
        quantized, alpha, path = self._quantized(x)
        flat = quantized.reshape(-1, self.in_features)
        y = self._matmul(flat, alpha, path, 0, self._shift)
        return y.reshape(*x.shape[:-1], self.out_features).to(quantized.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"values={self.matrix.values!r}{_scales_repr((self.matrix,))}, "
            f"bias={self.bias is not None}"
        )


class PackedConv(_PackedProduct):
    """An inference-only ``nn.Conv1d`` or ``nn.Conv2d`` on packed codes (see ``pack``), with
    any stride, dilation, groups, padding (numbers, ``"same"``, ``"valid"``) and padding mode.

    The input is padded (``F.pad``, in the layer's padding mode) and unfolded into patches
    (``F.unfold``); each group's patches times its packed ``(out_channels / groups,
    in_channels / groups * kernel)`` weight go through the packed matrix product, whose kernel
    ``lookup_max_rows`` picks as in ``PackedLinear`` (rows are patches here; the 8-bit path
    takes an input quantizer without a scale, or with one scale for the tensor).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> conv = st.harden_(st.constrain(torch.nn.Conv2d(4, 6, 3, padding="same", groups=2,
        ...                                padding_mode="reflect"), "weight", snapset.Ternary()))
        >>> x = torch.randn(2, 4, 8, 8)
        >>> torch.allclose(st.PackedConv.from_conv(conv, snapset.Ternary())(x), conv(x), atol=1e-5)
        True
    """

    bias: Tensor | None
    # patches mix positions, and so the scales of a per-token activation quantizer
    token_scales = False

    def __init__(
        self,
        matrices: list[PackedMatrix],
        bias: Tensor | None,
        dims: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        pads: tuple[int, ...],
        padding_mode: str,
        dilation: tuple[int, ...],
    ) -> None:
        super().__init__(tuple(matrices))
        self.dims = dims
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        #: ``F.pad``'s amounts, last dimension first, and its mode.
        self.pads, self.pad_mode = pads, "constant" if padding_mode == "zeros" else padding_mode
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        shift = self.bias if self.bias is not None else torch.zeros(self.out_channels)
        self._shifts = shift.chunk(len(matrices))

    @classmethod
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d, values: ValueSet) -> PackedConv:
        """Pack a (hardened) ``Conv1d``/``Conv2d`` whose weight holds only members of
        ``values``, or (hardened from a scaled set) its scales times members; ``ValueError``
        if it cannot be packed (``unpackable`` says why)."""
        codes, scales = _codes_and_scales(conv, values)
        per_group = conv.out_channels // conv.groups
        parts: list[Any]
        if scales is None or len(scales) == 1:  # unscaled, or one scale for the tensor
            parts = [scales] * conv.groups
        else:  # per output channel (and group of input channels): split with the outputs
            parts = np.split(scales, conv.groups)
        matrices = [
            PackedMatrix.from_codes(block.reshape(per_group, -1), values, part)
            for block, part in zip(np.split(codes, conv.groups), parts, strict=True)
        ]
        dims = 2 if isinstance(conv, nn.Conv2d) else 1
        return cls(
            matrices,
            conv.bias,
            dims,
            conv.kernel_size,
            conv.stride,
            _pads(conv),
            conv.padding_mode,
            conv.dilation,
        )

    @property
    def out_channels(self) -> int:
        return sum(m.out for m in self.matrices)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight: its codes and its scales."""
        return sum(m.nbytes for m in self.matrices)

    def forward(self, x: Tensor) -> Tensor:
        quantized, alpha, path = self._quantized(x)
        unbatched = x.dim() == self.dims + 1
        images = quantized.unsqueeze(0) if unbatched else quantized
        if any(self.pads):
            images = F.pad(images, self.pads, mode=self.pad_mode)
        k, s, d = self.kernel_size, self.stride, self.dilation
        if self.dims == 1:  # a 1-d convolution is a 2-d one of height 1
            images = images.unsqueeze(2)
            k, s, d = (1, *k), (1, *s), (1, *d)
        patches = F.unfold(images, k, dilation=d, stride=s)  # (N, C*k, L), channel major
        n, _, count = patches.shape
        flat = patches.transpose(1, 2).reshape(n * count, -1)
        width = flat.shape[1] // len(self.matrices)
        outputs = []
        for group, shift in enumerate(self._shifts):
            part = flat[:, group * width : (group + 1) * width]
            outputs.append(self._matmul(part, alpha, path, group, shift))
        size = [(images.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
        out = torch.cat(outputs, dim=1).reshape(n, count, -1).transpose(1, 2)
        out = out.reshape(n, -1, *size)
        if self.dims == 1:
            out = out.squeeze(2)
        return (out.squeeze(0) if unbatched else out).to(quantized.dtype)

    def extra_repr(self) -> str:
        first = self.matrices[0]
        return (
            f"{self.dims}d, in_features={first.n_in * len(self.matrices)}, "
            f"out_channels={self.out_channels}, groups={len(self.matrices)}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, pads={self.pads}, "
            f"pad_mode={self.pad_mode!r}, values={first.values!r}{_scales_repr(self.matrices)}"
        )


def _pads(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """``F.pad``'s amounts for ``conv``'s padding, last dimension first, as torch pads: for
    ``"same"``, the odd one of an odd total goes after."""
    pairs = []
    for i, (k, d) in enumerate(zip(conv.kernel_size, conv.dilation, strict=True)):
        if conv.padding == "same":
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        elif conv.padding == "valid":
            pairs.append((0, 0))
        else:
            p = cast(tuple[int, ...], conv.padding)[i]
            pairs.append((p, p))
    return tuple(amount for pair in reversed(pairs) for amount in pair)


@dataclass(frozen=True)
class PackingReport:
    """What ``pack`` did with each constrained weight, by its name in the model: the packed
    layer that now runs it (and its scale, for a scaled set) and which kernels run its
    activations and why (its ``kernel_plan``), or why it stayed in float; and
    each ``BatchNorm`` that it folded, with the sign activation after it, into the thresholds
    of a ``SignThresholds``. ``pack`` attaches it to the model it returns, as
    ``packing_report``.

    Examples:
        >>> import warnings, torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv3d(1, 1, 3))
        >>> model = st.constrain_(model, snapset.Sign())
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     packed = st.pack(model)
        >>> print(caught[0].message)  # doctest: +NORMALIZE_WHITESPACE
        pack left 1 of 2 constrained weights in float: '1.weight' (no packed layer for
        Conv3d; Linear, Conv1d, Conv2d and GF2Linear are packed). See packed.packing_report.
        >>> print(packed.packing_report)  # doctest: +NORMALIZE_WHITESPACE
        0.weight  packed: PackedLinear; float activations: no input quantizer
        1.weight  in float: no packed layer for Conv3d; Linear, Conv1d, Conv2d and GF2Linear
        are packed
    """

    #: Each packed weight's name, the packed layer that runs it and its activations' kernels.
    packed: dict[str, str] = field(default_factory=dict)
    #: Each weight left in float, and why.
    kept: dict[str, str] = field(default_factory=dict)
    #: Each folded ``BatchNorm``'s name and what replaced it.
    folded: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = [(n, f"packed: {layer}") for n, layer in self.packed.items()]
        rows += [(n, f"in float: {why}") for n, why in self.kept.items()]
        rows += [(n, f"folded: {what}") for n, what in self.folded.items()]
        width = max((len(name) for name, _ in rows), default=0)
        return "\n".join(f"{name:<{width}}  {what}" for name, what in rows)


class SignThresholds(nn.Module):
    """``sign(BatchNorm(y))`` per channel as one comparison: ``high`` where ``y >= threshold``,
    else ``low`` (each -1 or +1; a channel whose ``BatchNorm`` scale is negative has ``high =
    -1``, one whose output cannot change sign has ``low = high``).

    ``pack`` puts it in place of a ``BatchNorm1d``/``BatchNorm2d`` (eval mode, running
    statistics) that lies, in an ``nn.Sequential``, between a linear layer or convolution
    (packed, or left in float) and a packed layer whose input quantizer is
    ``Quantize(snapset.Sign())`` without a scale, and takes that quantizer off (its input is
    now -1 and +1): a binary network's layers then pass signs to each other, and each sign
    layer runs the XNOR-popcount kernel. The threshold is found on the float32 values
    themselves, by bisection over their order with the ``BatchNorm`` and the quantizer of the
    model: the decision is exactly the one the unpacked model takes for the same ``y``,
    rounding included (for inputs in {-1, +1} and sign weights, ``y`` is an integer plus the
    bias, so the threshold is one on the XNOR count). Channels lie along axis 1, as for
    ``BatchNorm``.

    Examples:
        >>> import torch, snapset
        >>> from snapset.torch import Quantize
        >>> bn = torch.nn.BatchNorm1d(2).eval()
        >>> with torch.no_grad():
        ...     bn.running_mean[0] = 3.0; bn.weight[1] = -1.0
        >>> sign = Quantize(snapset.Sign()).eval()
        >>> folded = SignThresholds.of(lambda y: sign(bn(y[None]))[0], 2)
        >>> folded.threshold[0].item(), folded.low.tolist(), folded.high.tolist()
        (3.0, [-1.0, 1.0], [1.0, -1.0])
        >>> y = torch.tensor([[2.0, -1.0], [3.0, 0.5], [2.9999998, 0.0]])
        >>> torch.equal(folded(y), sign(bn(y)))
        True
    """

    threshold: Tensor
    low: Tensor
    high: Tensor

    def __init__(self, threshold: Tensor, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.float())
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())

    @classmethod
    @torch.no_grad()
    def of(cls, decide: Callable[[Tensor], Tensor], channels: int) -> SignThresholds:
        """The thresholds of ``decide``, a map from a float32 vector of ``channels`` values to
        -1 or +1 each that is monotone in each channel (as ``sign(BatchNorm(y))`` is)."""
        ends = _ordered(torch.tensor([-_FLOAT32_MAX, _FLOAT32_MAX]))
        low_key = ends[0].expand(channels).clone()
        high_key = ends[1].expand(channels).clone()
        low, high = decide(_unordered(low_key)), decide(_unordered(high_key))
        # bisection over float32 in its order: decide(low_key) == low, decide(high_key) == high
        while bool((high_key - low_key > 1).any()):
            middle = (low_key + high_key) // 2
            up = decide(_unordered(middle)) == high
            high_key = torch.where(up, middle, high_key)
            low_key = torch.where(up, low_key, middle)
        # signed zeros decide alike (BatchNorm and a sign keep them apart from nothing), so
        # the float comparison y >= threshold is the comparison in this order
        threshold = torch.where(low == high, torch.inf, _unordered(high_key))
        return cls(threshold, low, high)

    def flags(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The thresholds as ``snapset._kernels.xnor_bits`` takes them: float32 thresholds,
        and 1 where ``high`` (``low``) is +1, else 0."""
        return (
            self.threshold.numpy(),
            (self.high > 0).to(torch.uint8).numpy(),
            (self.low > 0).to(torch.uint8).numpy(),
        )

    def forward(self, y: Tensor) -> Tensor:
        shape = [1] * y.dim()
        shape[1 if y.dim() > 1 else 0] = -1
        high, low = self.high.view(shape), self.low.view(shape)
        return torch.where(y >= self.threshold.view(shape), high, low).to(y.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.threshold.numel()}"


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _ordered(values: Tensor) -> Tensor:
    """float32 values as int64 keys in the same order (-0.0 just below +0.0)."""
    bits = values.float().view(torch.int32).long()
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _unordered(keys: Tensor) -> Tensor:
    """The float32 values of ``_ordered`` keys."""
    bits = torch.where(keys < 0, (-(keys + 1)) | -0x80000000, keys)
    return bits.int().view(torch.float32)


class SignChain(nn.Module):
    """A run of a binary network that passes bits from layer to layer: ``PackedLinear`` layers
    with sign weights, each but the first after a ``SignThresholds``, as ``pack`` folds them.

    The first layer's sign input quantizer turns the input into bits once; then each layer
    counts XNOR-popcount on the bits and compares each output with its threshold, writing the
    next layer's bits (``snapset._kernels.xnor_bits``); the last layer's outputs (or, for a run
    that ends with a ``SignThresholds``, its signs) come out as floats. No float tensor passes
    between the layers, and every sign is the one the layers compute one by one (the same
    float32 sums and comparisons; tested bit for bit). The layers stay inside (``layers``)
    and still work alone; without numba the chain calls them one by one.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> nn = torch.nn
        >>> stack = nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.Linear(48, 32),
        ...                       nn.BatchNorm1d(32), nn.Linear(32, 10))
        >>> stack = st.quantize_inputs_(st.constrain_(stack, snapset.Sign()),
        ...                             st.Quantize(snapset.Sign())).eval()
        >>> chain = st.pack(stack)[0]
        >>> type(chain).__name__, len(chain.layers)  # three layers, two thresholds
        ('SignChain', 5)
        >>> x = torch.randn(4, 64)
        >>> torch.equal(chain(x), stack(x)), torch.equal(chain(x), nn.Sequential(*chain.layers)(x))
        (True, True)
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        #: The run's modules, in order: packed layers and the thresholds between them.
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def starts(layer: nn.Module) -> bool:
        """Whether ``layer`` can start a chain: a sign ``PackedLinear`` with an unscaled sign
        input quantizer (``_sign_quantizer``) and no padding between groups of inputs."""
        return _chainable(layer) and _sign_quantizer(layer) is not None

    def forward(self, x: Tensor) -> Tensor:
        first = cast(PackedLinear, self.layers[0])
        check_input(x)
        signs = cast(Quantize, input_quantizer_of(first))(x)
        rows = signs.detach().reshape(-1, first.in_features).to(torch.float32).contiguous()
        bits = sign_bits(rows.numpy()) if backend() == "numba" else None
        if bits is None:  # the layers one by one
            for layer in self.layers:
                x = layer(x)
            return x
        threads = torch.get_num_threads()
        y: Tensor | None = None
        layers = list(self.layers)
        for index, layer in enumerate(layers):
            if isinstance(layer, SignThresholds):
                continue
            packed = cast(PackedLinear, layer)
            after = layers[index + 1] if index + 1 < len(layers) else None
            step = None if after is None else cast(SignThresholds, after).flags()
            values, bits_after = xnor_bits(
                bits, packed.matrix, packed._shift.numpy(), step, threads
            )
            packed.last_kernel, packed.last_backend = "xnor", "numba"
            if bits_after is None:
                y = torch.from_numpy(values)
            else:
                bits = bits_after
        if y is None:  # the run ends with thresholds: their signs, as floats
            last = cast(SignThresholds, layers[-1])
            y = torch.from_numpy(_signs_of(bits, last.threshold.numel()))
        out = y.reshape(*x.shape[:-1], y.shape[-1])
        return out.to(signs.dtype)


def _signs_of(bits: np.ndarray, n: int) -> np.ndarray:
    """-1/+1 float32 rows of ``n`` from sign bits, 8 a byte (bit set for +1)."""
    unpacked = np.unpackbits(bits, axis=1, count=n, bitorder="little")
    signs: np.ndarray = unpacked.astype(np.float32) * 2 - 1
    return signs


def _chainable(layer: nn.Module | None) -> bool:
    """A ``PackedLinear`` of sign weights whose inputs fill whole bytes of each scale's span
    (the XNOR kernel's layout)."""
    return (
        isinstance(layer, PackedLinear)
        and layer.matrix.signs
        and (layer.matrix.width == layer.matrix.n_in)
    )


#: The packed layer's constructor for each layer type that ``pack`` packs.
_PACKERS: dict[type[nn.Module], Callable[[Any, ValueSet], nn.Module]] = {
    nn.Linear: PackedLinear.from_linear,
    nn.Conv1d: PackedConv.from_conv,
    nn.Conv2d: PackedConv.from_conv,
    GF2Linear: lambda layer, values: PackedGF2Linear.from_gf2_linear(layer),
}


def unpackable(layer: nn.Module, values: ValueSet, scales: Tensor | None = None) -> str:
    """Why ``pack`` leaves ``layer``, whose weight is constrained to ``values`` (times
    ``scales``, for a scaled set), in float; "" when it packs it.

    Examples:
        >>> import torch, snapset
        >>> unpackable(torch.nn.Conv2d(3, 3, 3, groups=3), snapset.Ternary())
        ''
        >>> unpackable(torch.nn.Conv3d(3, 3, 3), snapset.Ternary())
        'no packed layer for Conv3d; Linear, Conv1d, Conv2d and GF2Linear are packed'
        >>> unpackable(torch.nn.Linear(3, 3).double(), snapset.ValueSet([1, 1 + 2**-40]))
        ... # doctest: +ELLIPSIS
        'packed layers compute in float32, and ValueSet([1, 1.0000000000009095]) cannot be ...'
        >>> unpackable(torch.nn.Linear(3, 3).double(), snapset.ValueSet([1e-50, 1]))
        'packed layers compute in float32, where 1e-50 of ValueSet([1e-50, 1]) underflows'
        >>> tiny = torch.full((1, 1), 1e-50, dtype=torch.float64)
        >>> unpackable(torch.nn.Linear(3, 3), snapset.Sign(), tiny)
        'packed layers compute in float32, where the scale 1e-50 times 1.0 underflows'
        >>> unpackable(torch.nn.Linear(3, 3), snapset.Sign(), torch.tensor([[-1.0]]))
        ... # doctest: +ELLIPSIS
        'its scales hold 1 entry that is not finite and > 0 (for example -1.0); ...'
    """
    if type(layer) not in _PACKERS:
        *others, last = (kind.__name__ for kind in _PACKERS)
        return (
            f"no packed layer for {type(layer).__name__}; {', '.join(others)} and {last} are packed"
        )
    if len(values) > 256:
        return f"its set has {len(values)} values, more than a byte's 256 codes"
    try:
        held = values.tables("float32").values
    except ValueError as error:  # values that overflow or merge in float32
        return f"packed layers compute in float32, and {error}"
    # a value that float32 holds only as a subnormal or as 0 would lose most of its digits
    lost = [v for v, h in zip(values, held, strict=True) if v != 0 and abs(h) < _FLOAT32_TINY]
    if lost:
        return f"packed layers compute in float32, where {lost[0]!r} of {values!r} underflows"
    return "" if scales is None else _unpackable_scales(scales, values)


def _unpackable_scales(scales: Tensor, values: ValueSet) -> str:
    """Why scales ``alpha`` of members of ``values`` cannot be packed: entries that are not
    positive floats, or products ``alpha * v`` beyond float32's range; "" when they can."""
    alpha = scales.detach().cpu().double()
    bad = ~(alpha.isfinite() & (alpha > 0))
    if bool(bad.any()):
        return bad_scale_message("its scales", int(bad.sum()), float(alpha[bad][0]))
    magnitudes = sorted(abs(v) for v in values if v != 0)
    for scale, value in ((alpha.max(), magnitudes[-1]), (alpha.min(), magnitudes[0])):
        product = float(scale) * value
        if not _FLOAT32_TINY <= product <= _FLOAT32_MAX:
            what = "overflows" if product > _FLOAT32_MAX else "underflows"
            return (
                f"packed layers compute in float32, where the scale {float(scale)!r} times "
                f"{value!r} {what}"
            )
    return ""


_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


# what puts a weight off its set when a packed layer is built by hand
_HARDEN_FIRST = (
    "Harden a constrained layer (snapset.torch.harden_) before packing it, or pack the "
    "constrained model (snapset.torch.pack)"
)


def pack(model: nn.Module, *, activations: str | None = None) -> nn.Module:
    """An inference-only copy of ``model`` whose constrained layers run on packed codes.

    The copy is hardened (``harden_``), put in eval mode and frozen; then every
    ``nn.Linear`` whose weight was constrained becomes a ``PackedLinear``, every such
    ``Conv1d``/``Conv2d`` (any groups, padding and padding mode) a ``PackedConv``, and every
    ``GF2Linear`` a ``PackedGF2Linear``. A model hardened before (or hardened, saved and
    loaded) packs alike: ``harden_`` and ``load`` mark each plain tensor of set values with its
    set, and a marked weight whose values left the set since stays in float. The others
    stay in float, and a warning names them and says why (``unpackable``): other layer types
    (``Conv3d``, transposed convolutions, ``Embedding``, ``Multiplier``), sets of more than 256
    values, sets that overflow or merge in float32 (packed layers compute in float32, so a
    float64 model's set must fit there). The copy's ``packing_report`` (a ``PackingReport``)
    lists what went where. ``model`` is unchanged.

    Scaled sets (``w = alpha * v``) pack as codes and scales: the kernels sum each output's
    codes' values as unscaled (exactly, for XNOR) and multiply the sum by its scale (each
    group's sum by its group's, for a group size; groups of inputs that do not fill whole
    bytes are padded to them); the batch kernel decodes ``alpha * v`` in float32, as the
    float layer holds it. A packed layer keeps the input quantizer of the layer it replaces
    (``quantize_inputs_``), and a ``BatchNorm`` between a packed layer and a layer whose input
    quantizer is ``Quantize(snapset.Sign())`` (in an ``nn.Sequential``; the layer before it
    may be a float ``Linear`` or convolution too) becomes a ``SignThresholds``, which passes
    signs on: a binary network (sign weights, sign activations) runs end to end on the
    XNOR-popcount kernel, each layer's decisions those of the unpacked model. A run of sign
    ``PackedLinear`` layers and thresholds that starts with a sign input quantizer becomes one
    ``SignChain``, which passes bits between its layers.

    Every constrained tensor must hold members of its set: a flip parameter that something
    other than a flip optimizer moved off the set raises ``snapset.OutsideSetError``, with
    nothing packed. Outputs match the hardened float model to float32 rounding (sums in
    another order; bit for bit where every sum is exact, as XNOR's). Packed layers compute in
    float32 on the CPU, take floating-point inputs only (as ``nn.Linear`` does; float64 inputs
    within float32's range), and do not propagate gradients.

    Kernels, chosen per call (see ``benchmarks/inference.py`` for their speed): XNOR-popcount
    when the weights are in {-1, +1} and so is every input; table lookups (T-MAC style, in
    AVX-512 registers where the CPU has them) for up to ``lookup_max_rows`` input rows (a
    knob of each packed layer, ``LUT_MAX_ROWS`` or, for wide layers where the permutes run,
    any number); decoded tiles times BLAS for more. Each splits its work between torch's
    threads (``torch.get_num_threads()``), with the same result for any number. They run in
    numba where it is installed, else in numpy; ``kernel_backend(explain=True)`` says which
    and why.

    8-bit activations: a packed layer whose input quantizer lies on an integer grid within
    int8 (``Quantize(ValueSet(range(-128, 128)), scale="token")``, BitNet b1.58's, or a sign,
    ternary, ... set), with a scale that is the same along the features of a row, and whose
    weight's set lies on such a grid too, multiplies more than ``LUT_MAX_ROWS`` rows in
    integers: ``torch._int_mm`` (int8 times int8 into int32, exact), then the scales, so
    the outputs are the unpacked model's to float32 rounding. It does so where torch reports
    AVX-512 (``slow_int8_matmul``); elsewhere ``torch._int_mm`` is slower than float32, and
    the activations, rounded in the same compiled pass, go to the float kernels. It holds its
    weight decoded as int8 besides the codes (``int8_bytes``). ``activations="int8"`` gives
    every packed ``PackedLinear`` without an input quantizer BitNet's per-token 8-bit
    quantizer, and every ``PackedConv`` without one a per-tensor one: the copy then computes
    what the model with those quantizers (``quantize_inputs_``) computes. Layers keep a quantizer
    they have. Any other value raises ``ValueError`` before anything is copied. The report
    says which kernels run each packed layer's activations, and why (``plan_kernels``).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(),
        ...                             torch.nn.Linear(16, 4))
        >>> model = st.constrain_(model, snapset.Sign()).eval()
        >>> packed = st.pack(model)
        >>> type(packed[0]).__name__
        'PackedLinear'
        >>> x = torch.randn(5, 32)
        >>> torch.allclose(packed(x), model(x), atol=1e-4)
        True
        >>> print(packed.packing_report)
        0.weight  packed: PackedLinear; float activations: no input quantizer
        2.weight  packed: PackedLinear; float activations: no input quantizer

        BitNet b1.58's 8-bit activations before every packed layer, on integer matrix units:

        >>> bitnet = st.pack(model, activations="int8")
        >>> print(bitnet.packing_report)
        0.weight  packed: PackedLinear; 8-bit activations on torch._int_mm above 8 rows
        2.weight  packed: PackedLinear; 8-bit activations on torch._int_mm above 8 rows
        >>> y = bitnet(torch.randn(16, 32)); bitnet[0].last_kernel, bitnet[0].int8_bytes
        ('int8', 512)

        A binary network: sign weights, sign activations, BatchNorm folded into thresholds.

        >>> from snapset.torch import Quantize, quantize_inputs_
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32),
        ...                             torch.nn.Linear(32, 10))
        >>> model = quantize_inputs_(st.constrain_(model, snapset.Sign()),
        ...                          Quantize(snapset.Sign())).eval()
        >>> packed = st.pack(model)
        >>> [type(layer).__name__ for layer in packed[0].layers]  # one SignChain
        ['PackedLinear', 'SignThresholds', 'PackedLinear']
        >>> x = torch.randn(5, 64)
        >>> torch.equal(packed(x), model(x)), packed[0].layers[2].last_kernel
        (True, 'xnor')
    """
    if activations not in ACTIVATIONS:
        raise ValueError(
            f"Invalid activations: {activations!r}; choose None (each layer's own input "
            "quantizer, if any) or 'int8' (BitNet b1.58's 8-bit activations for every packed "
            "layer without one)"
        )
    packed = hardened_copy(model).requires_grad_(False)
    # harden_ marks every tensor it makes plain with its set, and a loaded file marks its
    # packed tensors likewise: so a constrained model and a hardened, saved and loaded one
    # pack alike.
    marked = [
        name for name, tensor in _named_tensors(packed) if hardened_values(tensor) is not None
    ]
    report = PackingReport()
    replacements = {}
    for name in marked:  # decided on the hardened copy, before any layer is replaced
        owner, _, attr = name.rpartition(".")
        layer = packed.get_submodule(owner)
        tensor = getattr(layer, attr)
        values = cast(ValueSet, hardened_values(tensor))
        scaled = hardened_scales(tensor)
        if attr != "weight":
            report.kept[name] = "only weights are packed"
        elif reason := unpackable(layer, values, None if scaled is None else scaled[1]):
            report.kept[name] = reason
        elif not _still_hardened(tensor, values):
            report.kept[name] = "its values left their set after harden_"
        else:
            replacement = _with_input_quantizer(_PACKERS[type(layer)](layer, values), layer)
            if activations == "int8":
                _add_int8_quantizer(replacement)
            if isinstance(replacement, _PackedProduct):
                replacement.plan_kernels()
            replacements[owner] = replacement
            kind = type(replacement).__name__
            report.packed[name] = kind if scaled is None else f"{kind}, {_scale_name(scaled[0])}"
    for owner, replacement in replacements.items():
        if owner == "":
            packed = replacement
        else:
            parent, _, child = owner.rpartition(".")
            setattr(packed.get_submodule(parent), child, replacement)
    _fold_sign_thresholds(packed, report)
    _fold_sign_chains(packed, report)
    for owner, replacement in replacements.items():  # as decided after the folding
        if isinstance(replacement, _PackedProduct):
            name = f"{owner}.weight" if owner else "weight"
            report.packed[name] += f"; {replacement.kernel_plan}"
    if report.kept:
        kept = "; ".join(f"'{name}' ({why})" for name, why in report.kept.items())
        warnings.warn(
            f"pack left {len(report.kept)} of {len(marked)} constrained weights in float: "
            f"{kept}. See packed.packing_report.",
            stacklevel=2,
        )
    cast(Any, packed).packing_report = report
    return packed


#: ``pack``'s choices of ``activations``.
ACTIVATIONS = (None, "int8")


def _add_int8_quantizer(layer: nn.Module) -> None:
    """BitNet b1.58's 8-bit activations before a packed ``layer`` that has no input quantizer:
    a scale per token for a linear layer, one for the tensor for a convolution (whose
    patches mix positions)."""
    if isinstance(layer, _PackedProduct) and input_quantizer_of(layer) is None:
        scale = "token" if layer.token_scales else "tensor"
        quantizer = Quantize(ValueSet(range(-128, 128)), scale=scale)
        quantize_inputs_(layer, quantizer, modules=(type(layer),))


def _with_input_quantizer(replacement: nn.Module, layer: nn.Module) -> nn.Module:
    """``replacement`` with a copy of the input quantizer that ``layer`` has, if any, and of
    its own RMSNorm (``bitnet_(..., rms_norm=True)``), which runs first."""
    carry_input_norm(replacement, layer)
    for name, quantizer in input_quantizers(layer):
        if name == "":
            quantize_inputs_(replacement, quantizer, modules=(type(replacement),))
    return replacement


_SEQUENCE_TAKERS = (PackedLinear, PackedConv)


def _fold_sign_thresholds(model: nn.Module, report: PackingReport) -> None:
    """In each ``nn.Sequential`` of ``model``: a linear layer or convolution (packed, or left
    in float), a ``BatchNorm`` and a packed layer whose input quantizer is a sign become the
    first layer, a ``SignThresholds`` and the packed layer without its quantizer."""
    for prefix, sequence in list(model.named_modules()):
        if not isinstance(sequence, nn.Sequential):
            continue
        names = list(sequence._modules)
        for first, middle, last in zip(names, names[1:], names[2:], strict=False):
            layer, norm, taker = (sequence._modules[n] for n in (first, middle, last))
            channels = _out_channels(layer)
            if (
                channels is None
                or not _foldable(norm, channels)
                or not isinstance(taker, _SEQUENCE_TAKERS)
                or (sign := _sign_quantizer(taker)) is None
            ):
                continue
            norm = cast(nn.modules.batchnorm._BatchNorm, norm)
            shape = (1, channels) + (1,) * (2 if isinstance(norm, nn.BatchNorm2d) else 0)
            thresholds = SignThresholds.of(
                lambda y: sign(norm(y.reshape(shape))).reshape(-1),  # noqa: B023
                channels,
            )
            setattr(sequence, middle, thresholds)
            remove_input_quantizers_(taker)
            taker.plan_kernels()  # drops what it planned for the quantizer
            taker.kernel_plan = "sign activations from SignThresholds" + (
                " on XNOR-popcount" if taker.matrices[0].signs else ", as floats"
            )
            where = f"{prefix}." if prefix else ""
            report.folded[f"{where}{middle}"] = (
                f"{type(norm).__name__} and the sign input quantizer of '{where}{last}' "
                "into SignThresholds"
            )


def _fold_sign_chains(model: nn.Module, report: PackingReport) -> None:
    """In each ``nn.Sequential`` of ``model``: a run that starts with a sign ``PackedLinear``
    with a sign input quantizer and goes on with ``SignThresholds`` and sign ``PackedLinear``
    layers (perhaps ending with ``SignThresholds``) becomes one ``SignChain``, under the name
    of its first module."""
    for prefix, sequence in list(model.named_modules()):
        if not isinstance(sequence, nn.Sequential):
            continue
        items = list(sequence._modules.items())
        kept: list[tuple[str, nn.Module | None]] = []  # the Sequential's entries, some folded
        index = 0
        while index < len(items):
            name, module = items[index]
            end = index + 1
            if module is not None and SignChain.starts(module):
                # thresholds and the sign layer after them join; thresholds before a layer
                # that cannot join end the run, handing it their signs
                while end < len(items) and isinstance(items[end][1], SignThresholds):
                    end += 2 if end + 1 < len(items) and _chainable(items[end + 1][1]) else 1
                    if not _chainable(items[end - 1][1]):
                        break
            if end - index > 1:
                run = [module for _, module in items[index:end]]
                kept.append((name, SignChain(run)))
                where = f"{prefix}." if prefix else ""
                layers = sum(isinstance(module, PackedLinear) for module in run)
                report.folded[f"{where}{name}..{items[end - 1][0]}"] = (
                    f"{layers} sign layers into a SignChain (bits between them)"
                )
            else:
                kept.append((name, module))
            index = end
        sequence._modules = dict(kept)  # type: ignore[arg-type]  # as torch types it


def _out_channels(layer: nn.Module | None) -> int | None:
    """The channels of a (packed or float) linear or convolution's output."""
    if isinstance(layer, (PackedLinear, nn.Linear)):
        return layer.out_features
    if isinstance(layer, (PackedConv, nn.Conv1d, nn.Conv2d)):
        return layer.out_channels
    return None


def _foldable(norm: nn.Module | None, channels: int) -> bool:
    """Whether ``norm`` is a float32 ``BatchNorm`` that uses running statistics in eval."""
    return (
        isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d))
        and norm.running_mean is not None
        and norm.running_mean.dtype == torch.float32
        and norm.num_features == channels
    )


def _sign_quantizer(layer: nn.Module) -> Quantize | None:
    """``layer``'s input quantizer if it is an unscaled sign (its output is -1 or +1)."""
    for name, quantizer in input_quantizers(layer):
        if name == "" and quantizer.values == Sign() and quantizer.scaling is None:
            return quantizer
    return None


def hardened_copy(model: nn.Module) -> nn.Module:
    """A hardened deep copy of ``model`` in eval mode; ``model`` itself stays as it is."""
    copied = copy.deepcopy(model)
    # deepcopy drops a Parameter's attributes, among them the set harden_ marked it with
    marks = {
        name: (hardened_values(tensor), hardened_scales(tensor))
        for name, tensor in _named_tensors(model)
    }
    for name, tensor in _named_tensors(copied):
        mark_hardened(tensor, *marks[name])
    return harden_(copied).eval()


def _named_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _still_hardened(tensor: Tensor, values: ValueSet) -> bool:
    """Whether ``tensor`` still holds what ``harden_`` left: members of ``values``, or their
    scales times members."""
    scaled = hardened_scales(tensor)
    if scaled is None:
        return hardened_set(tensor) is not None
    try:
        scaled_members(tensor, values, *scaled)
    except ValueError:
        return False
    return True


def _codes_and_scales(layer: nn.Module, values: ValueSet) -> tuple[np.ndarray, np.ndarray | None]:
    """The codes of ``layer.weight``'s members, ``(out, -1)``-shaped, and its scales as an
    ``(out, s)`` or ``(1, 1)`` float64 array (None for an unscaled set); ``ValueError`` where
    it cannot be packed."""
    weight = cast(Tensor, layer.weight)
    scaled = hardened_scales(weight)
    _refuse_unpackable(layer, values, None if scaled is None else scaled[1])
    if scaled is None:
        codes = _member_codes(weight, values, "'weight'", _HARDEN_FIRST)
        return codes.reshape(weight.shape[0], -1), None
    scale, alpha = scaled
    try:
        members_t = scaled_members(weight, values, scale, alpha)
    except ValueError as error:
        raise ValueError(f"'weight' cannot be packed: {error} {_HARDEN_FIRST}") from None
    codes = values.encode(members_t.double().numpy()).reshape(weight.shape[0], -1)
    per_out = alpha.detach().cpu().double().reshape(alpha.shape[0], -1)
    return codes, per_out.numpy()


def _refuse_unpackable(layer: nn.Module, values: ValueSet, scales: Tensor | None) -> None:
    reason = unpackable(layer, values, scales)
    if reason:
        raise ValueError(f"{layer} cannot be packed: {reason}. Keep it as a float layer")


def _scale_name(scale: Scale) -> str:
    return f"scale={scale.scaling.granularity!r}"


def _scales_repr(matrices: tuple[PackedMatrix, ...]) -> str:
    count = sum(matrix.scale_bytes for matrix in matrices) // 4
    return f", scales={count}" if count else ""


def _member_codes(weight: Tensor, values: ValueSet, where: str, fix: str) -> np.ndarray:
    """The codes of ``weight``'s entries, members of ``values`` as its dtype holds them (0.3
    in float32 is 0.30000001192092896), flat; ``OutsideSetError`` if it holds anything
    else."""
    array = _widened(weight).reshape(-1)
    codes, outside = set_codes(values, array, _dtype_name(weight.dtype))
    if outside.any():
        raise outside_set_error(where, values, int(outside.sum()), float(array[outside][0]), fix)
    return codes
