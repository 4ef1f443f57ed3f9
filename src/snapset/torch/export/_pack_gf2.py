"""``PackedGF2Linear``: an inference-only ``GF2Linear`` on packed bits."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from ...gf2._bits import pack_bits, unpack_words
from ...gf2._linalg import matmul_selectors, parity_products
from .._layers import GF2Linear, _check_bits

__all__ = ["POPCOUNT_MAX_ROWS", "PackedGF2Linear"]

POPCOUNT_MAX_ROWS = 64
"""Default of ``PackedGF2Linear.popcount_max_rows``: up to this many input rows use the
AND-popcount kernel, beyond it the four-Russians product (``gf2.matmul``'s)."""


class PackedGF2Linear(nn.Module):
    """An inference-only [`GF2Linear`][snapset.torch.GF2Linear] whose weight lives as packed
    bits: 64 weights a ``uint64`` word, 1/32 of float32's bytes.

    It computes the exact GF(2) product ``y = x W^T mod 2`` on the CPU, as ``GF2Linear`` does
    in eval mode, and returns 0/1 in the input's dtype. For up to ``popcount_max_rows`` input
    rows each output bit is the parity of ``popcount(x & w)`` over packed words (the
    XOR-popcount kernel: AND multiplies, the parity of the count adds); for more rows, the
    four-Russians product of [`snapset.gf2.matmul`][]. Both run compiled where numba is
    installed.

    Examples:
        >>> import torch, snapset.torch as st
        >>> layer = st.GF2Linear(100, 3).eval()
        >>> packed = st.PackedGF2Linear.from_gf2_linear(layer)
        >>> packed.weight_bytes, 4 * layer.weight.numel()   # 2 words a row
        (48, 1200)
        >>> x = torch.randint(0, 2, (5, 100)).float()
        >>> torch.equal(packed(x), layer(x)), packed.last_kernel
        (True, 'popcount')
    """

    def __init__(self, words: npt.NDArray[np.uint64], in_features: int) -> None:
        super().__init__()
        self.words = words
        self.in_features = in_features
        self.out_features = words.shape[0]
        #: Up to this many input rows use the AND-popcount kernel, beyond it four Russians.
        self.popcount_max_rows = POPCOUNT_MAX_ROWS
        #: The kernel the last call ran: "popcount" or "m4rm".
        self.last_kernel = ""

    @classmethod
    def from_gf2_linear(cls, layer: GF2Linear) -> PackedGF2Linear:
        """Pack the hard weight of ``layer`` (hardened or not)."""
        weight = layer.weight.detach().cpu().numpy().astype(np.uint8)
        return cls(pack_bits(weight), layer.in_features)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight."""
        return int(self.words.nbytes)

    def forward(self, x: Tensor) -> Tensor:
        _check_bits(x)
        flat = x.detach().reshape(-1, self.in_features).cpu().to(torch.uint8).numpy()
        if flat.shape[0] <= self.popcount_max_rows:
            self.last_kernel = "popcount"
            bits = parity_products(pack_bits(flat), self.words)
        else:
            self.last_kernel = "m4rm"
            # y^T = W x^T: the bytes of W's words select rows of x^T (packed), as in gf2.matmul.
            selectors = self.words.astype("<u8").view(np.uint8)
            product = matmul_selectors(selectors, self.in_features, pack_bits(flat.T))
            bits = unpack_words(product, flat.shape[0]).T
        y = torch.from_numpy(np.ascontiguousarray(bits)).to(device=x.device, dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
