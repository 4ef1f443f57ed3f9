"""PackedGF2Linear: packed bits, both kernels against GF2Linear's exact eval forward."""

from __future__ import annotations

import pytest
import torch

import snapset.torch as st
from snapset.torch.export._pack_gf2 import PackedGF2Linear


@pytest.mark.parametrize("in_features", [1, 63, 64, 65, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_both_kernels_match_the_float_layer(in_features: int, dtype: torch.dtype) -> None:
    torch.manual_seed(in_features)
    layer = st.GF2Linear(in_features, 7, init_prob=0.5).eval()
    packed = PackedGF2Linear.from_gf2_linear(layer)
    assert packed.weight_bytes == 7 * 8 * -(-in_features // 64)
    x = torch.randint(0, 2, (2, 50, in_features)).to(dtype)
    expected = layer(x)
    for limit, kernel in [(10**6, "popcount"), (0, "m4rm")]:
        packed.popcount_max_rows = limit
        y = packed(x)
        assert packed.last_kernel == kernel
        assert y.dtype == dtype and y.shape == (2, 50, 7)
        assert torch.equal(y, expected)


def test_a_hardened_layer_packs_and_inputs_are_checked() -> None:
    layer = st.harden_(st.GF2Linear(10, 2))
    packed = PackedGF2Linear.from_gf2_linear(layer)
    x = torch.randint(0, 2, (4, 10)).float()
    assert torch.equal(packed(x), layer(x))
    with pytest.raises(ValueError, match=r"inputs in \{0, 1\}"):
        packed(x * 3)


def test_pack_runs_gf2_linear_on_packed_bits() -> None:
    model = torch.nn.Sequential(st.GF2Linear(70, 5), st.GF2Linear(5, 3)).eval()
    packed = st.pack(model)
    assert [type(m).__name__ for m in packed] == ["PackedGF2Linear"] * 2
    x = torch.randint(0, 2, (9, 70)).float()
    assert torch.equal(packed(x), model(x))
