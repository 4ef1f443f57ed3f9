"""``pack``: an inference-only copy of a model whose constrained layers run on packed codes."""

from __future__ import annotations

import copy
import threading
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._kernels import PackedMatrix, backend, decode_rows, small_matmul
from ..._sets import ValueSet
from .._constrain import harden_, named_constraints

__all__ = ["LUT_MAX_ROWS", "PackedConv", "PackedLinear", "kernel_backend", "pack"]

LUT_MAX_ROWS = 8
"""Default of the packed layers' ``lookup_max_rows``: up to this many input rows use the
table-lookup kernel, beyond it decoded tiles and BLAS (the crossover measured by
``benchmarks/inference.py`` on a 4096x4096 layer)."""
#: Float32 bytes of the decoded block of ``W.T`` (512 inputs by 4096 outputs), the size that
#: ran fastest with BLAS in ``benchmarks/inference.py``: one such workspace per thread, shared
#: by all packed layers.
TILE_BYTES = 8 << 20


def kernel_backend() -> str:
    """The kernels that packed layers run: ``"numba"`` (compiled for this CPU on first use) or
    ``"numpy"`` (the fallback, where numba is missing or ``SNAPSET_KERNELS=numpy`` is set).

    Examples:
        >>> import snapset.torch as st
        >>> st.export.kernel_backend() in ("numba", "numpy")
        True
    """
    return backend()


def packed_matmul(
    x: Tensor, matrix: PackedMatrix, bias: Tensor, lookup_max_rows: int = LUT_MAX_ROWS
) -> tuple[Tensor, str]:
    """``x @ W.T + bias`` for float rows ``x`` of shape ``(rows, n_in)``, on the packed ``W``.

    Returns the result and the kernel that ran: ``"xnor"`` (XNOR-popcount, when ``W`` and every
    input are in {-1, +1}), ``"lookup"`` (table lookups, up to ``lookup_max_rows`` rows) or
    ``"tiles"`` (``W.T`` decoded a block at a time, times BLAS). ``bias`` is float32 (zeros for
    a layer without one).
    """
    if x.device.type != "cpu":
        raise ValueError(f"packed layers run on the CPU; move the input there (got {x.device})")
    rows = x.detach()
    if rows.dtype != torch.float32 or not rows.is_contiguous():
        rows = rows.to(torch.float32).contiguous()
    kernel, y = small_matmul(rows.numpy(), matrix, bias.numpy(), lookup_max_rows)
    if y is not None:
        return torch.from_numpy(y), kernel
    return _tiled_matmul(rows, matrix).add_(bias), kernel


_WORKSPACE = threading.local()


def _tiled_matmul(rows: Tensor, matrix: PackedMatrix) -> Tensor:
    """``rows @ W.T`` by BLAS on ``W.T`` decoded a block of inputs at a time."""
    g = matrix.group
    padded = torch.zeros(rows.shape[0], matrix.groups * g)
    padded[:, : matrix.n_in] = rows  # padding inputs are 0: the padding codes add nothing
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
        tile = torch.from_numpy(decode_rows(matrix, start, stop, buffer))
        y.addmm_(padded[:, start * g : stop * g], tile)
    return y


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight lives as packed codes (see ``pack``).

    The weight takes ``g`` codes a byte (1 bit a weight for two values, 1.6 for ternary, 2 for
    four); the bias stays float32. It computes in float32 on the CPU, and has no gradient.
    ``lookup_max_rows`` (default ``LUT_MAX_ROWS``) picks the kernel by batch size: up to
    this many input rows use the table-lookup kernel, beyond it decoded tiles and BLAS; 0
    always uses tiles. XNOR-popcount runs instead when weights and inputs are all in {-1, +1}.

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
        super().__init__()
        self.matrix = matrix
        self.in_features, self.out_features = matrix.n_in, matrix.out
        #: Up to this many input rows use the table-lookup kernel, beyond it decoded tiles and
        #: BLAS; 0 always uses tiles.
        self.lookup_max_rows = LUT_MAX_ROWS
        #: The kernel the last call ran: "xnor", "lookup" or "tiles".
        self.last_kernel = ""
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._shift = self.bias if self.bias is not None else torch.zeros(matrix.out)

    @classmethod
    def from_linear(cls, linear: nn.Linear, values: ValueSet) -> PackedLinear:
        """Pack a (hardened) ``nn.Linear`` whose weight holds only members of ``values``."""
        return cls(_matrix(linear.weight, values, "weight"), linear.bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight."""
        return self.matrix.nbytes

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        y, self.last_kernel = packed_matmul(flat, self.matrix, self._shift, self.lookup_max_rows)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"values={self.matrix.values!r}, bias={self.bias is not None}"
        )


class PackedConv(nn.Module):
    """An inference-only ``nn.Conv1d`` or ``nn.Conv2d`` on packed codes (see ``pack``).

    The input is unfolded into patches (``F.unfold``) and the patches times the packed
    ``(out_channels, in_channels * kernel)`` weight go through the packed matrix product, whose
    kernel ``lookup_max_rows`` picks as in ``PackedLinear`` (rows are patches here).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> conv = st.harden_(st.constrain(torch.nn.Conv2d(3, 4, 3, padding=1), "weight",
        ...                                snapset.Ternary()))
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(st.PackedConv.from_conv(conv, snapset.Ternary())(x), conv(x), atol=1e-5)
        True
    """

    bias: Tensor | None

    def __init__(
        self,
        matrix: PackedMatrix,
        bias: Tensor | None,
        dims: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.matrix, self.dims = matrix, dims
        #: Up to this many patch rows use the table-lookup kernel, beyond it decoded tiles and
        #: BLAS; 0 always uses tiles.
        self.lookup_max_rows = LUT_MAX_ROWS
        #: The kernel the last call ran: "xnor", "lookup" or "tiles".
        self.last_kernel = ""
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._shift = self.bias if self.bias is not None else torch.zeros(matrix.out)

    @classmethod
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d, values: ValueSet) -> PackedConv:
        """Pack a (hardened) ``Conv1d``/``Conv2d`` with ``groups=1`` and zero padding."""
        if not packable_conv(conv):
            raise ValueError(
                f"{conv} cannot be packed: only groups=1, padding_mode='zeros' and numeric "
                "padding are supported; keep it as a float layer"
            )
        weight = conv.weight.reshape(conv.out_channels, -1)
        padding = cast(tuple[int, ...], conv.padding)
        dims = 2 if isinstance(conv, nn.Conv2d) else 1
        return cls(
            _matrix(weight, values, "weight"),
            conv.bias,
            dims,
            conv.kernel_size,
            conv.stride,
            padding,
            conv.dilation,
        )

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight."""
        return self.matrix.nbytes

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == self.dims + 1
        images = x.unsqueeze(0) if unbatched else x
        if self.dims == 1:  # a 1-d convolution is a 2-d one of height 1
            images = images.unsqueeze(2)
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        if self.dims == 1:
            k, s, p, d = (1, *k), (1, *s), (0, *p), (1, *d)
        patches = F.unfold(images, k, dilation=d, padding=p, stride=s)  # (N, C*k, L)
        n, _, count = patches.shape
        flat = patches.transpose(1, 2).reshape(n * count, -1)
        y, self.last_kernel = packed_matmul(flat, self.matrix, self._shift, self.lookup_max_rows)
        y = y.reshape(n, count, -1).transpose(1, 2)
        size = [
            (images.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)
        ]
        out = y.reshape(n, -1, *size)
        if self.dims == 1:
            out = out.squeeze(2)
        return (out.squeeze(0) if unbatched else out).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.dims}d, in_features={self.matrix.n_in}, out_channels={self.matrix.out}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"values={self.matrix.values!r}"
        )


def packable_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a ``Conv1d``/``Conv2d`` that ``PackedConv`` can run."""
    return (
        type(module) in (nn.Conv1d, nn.Conv2d)
        and cast(nn.Conv2d, module).groups == 1
        and cast(nn.Conv2d, module).padding_mode == "zeros"
        and not isinstance(cast(nn.Conv2d, module).padding, str)
    )


def pack(model: nn.Module) -> nn.Module:
    """An inference-only copy of ``model`` whose constrained layers run on packed codes.

    The copy is hardened (``harden_``), put in eval mode and frozen; then every
    ``nn.Linear`` whose weight was constrained to a set of at most 256 values becomes a
    ``PackedLinear``, and every such ``Conv1d``/``Conv2d`` (``groups=1``, zero padding)
    a ``PackedConv``; other layers stay as they are, in float. ``model`` is unchanged.
    Outputs match the hardened float model to float32 rounding. Packed layers compute in
    float32 on the CPU and do not propagate gradients.

    Kernels, chosen per call (see ``benchmarks/inference.py`` for their speed): XNOR-popcount
    when the weights are in {-1, +1} and so is every input; table lookups (T-MAC style) for up
    to ``lookup_max_rows`` input rows (a knob of each packed layer, default
    ``LUT_MAX_ROWS``); decoded tiles times BLAS for more.

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
    """
    sets: dict[str, ValueSet] = {}
    for name, constraint in named_constraints(model):
        owner, _, attr = name.rpartition(".")
        if attr == "weight":
            sets[owner] = constraint.values
    packed = hardened_copy(model).requires_grad_(False)
    for owner, values in sets.items():
        layer = packed.get_submodule(owner)
        replacement = _packed_layer(layer, values)
        if replacement is None:
            continue
        if owner == "":
            return replacement
        parent, _, child = owner.rpartition(".")
        setattr(packed.get_submodule(parent), child, replacement)
    return packed


def hardened_copy(model: nn.Module) -> nn.Module:
    """A hardened deep copy of ``model`` in eval mode; ``model`` itself stays as it is."""
    return harden_(copy.deepcopy(model)).eval()


def _packed_layer(layer: nn.Module, values: ValueSet) -> nn.Module | None:
    if len(values) > 256:
        return None
    if type(layer) is nn.Linear:
        return PackedLinear.from_linear(layer, values)
    if packable_conv(layer):
        return PackedConv.from_conv(cast(nn.Conv2d, layer), values)
    return None


def _matrix(weight: Tensor, values: ValueSet, name: str) -> PackedMatrix:
    array = weight.detach().cpu().double().numpy()
    outside = ~values.contains(array)
    if outside.any():
        raise ValueError(
            f"'{name}' holds {array[outside][0]}, which is not in {values!r}; harden a "
            "constrained layer (snapset.torch.harden_) before packing it"
        )
    return PackedMatrix.from_codes(values.encode(array), values)
