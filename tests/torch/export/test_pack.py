"""pack(): packed layers and their kernels against the hardened float model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset import _kernels

SETS = {
    "sign": snapset.Sign(),
    "binary": snapset.Binary(),
    "ternary": snapset.Ternary(),
    "four": snapset.ValueSet([1, -1, 0.5, -0.5]),
    "five": snapset.ValueSet([-2, -1, 0, 1, 2]),
    "seventeen": snapset.ValueSet([i / 4 for i in range(-8, 9)]),
}
# (n_in, out): odd widths, widths around a byte's worth of codes, and a few random ones
SHAPES = [(1, 1), (7, 3), (64, 17), (65, 5), (203, 33)] + [
    (int(n), int(o)) for n, o in np.random.default_rng(7).integers(1, 300, (3, 2))
]


@pytest.fixture(params=["numba", "numpy"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "numpy":
        monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    assert _kernels.backend() == request.param  # numba is installed with the export extra
    return str(request.param)


def hardened_linear(n_in: int, out: int, values: snapset.ValueSet, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return st.harden_(st.constrain(nn.Linear(n_in, out), "weight", values)).eval()


@pytest.mark.parametrize("set_name", list(SETS))
def test_packed_linear_matches_float_on_odd_shapes(kernels: str, set_name: str) -> None:
    values = SETS[set_name]
    for seed, (n_in, out) in enumerate(SHAPES):
        layer = hardened_linear(n_in, out, values, seed)
        packed = st.PackedLinear.from_linear(layer, values)
        # below and above LUT_MAX_ROWS: the table-lookup and the decoded-tile paths
        for batch in (1, st.export.LUT_MAX_ROWS, st.export.LUT_MAX_ROWS + 5, 40):
            x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)


def test_xnor_path_is_exact_for_sign_inputs(kernels: str) -> None:
    for seed, (n_in, out) in enumerate([*SHAPES, (4096, 9)]):
        layer = hardened_linear(n_in, out, snapset.Sign(), seed)
        packed = st.PackedLinear.from_linear(layer, snapset.Sign())
        for batch in (1, 6):
            gen = torch.Generator().manual_seed(seed)
            x = torch.randint(0, 2, (batch, n_in), generator=gen).float() * 2 - 1
            # integer sums: the product is exact in float32, so the XNOR result must equal it
            # (the bias added last: addmm may add it first, which rounds differently)
            exact = (x @ layer.weight.T).add_(layer.bias)
            assert torch.equal(packed(x), exact)


def test_each_kernel_is_the_one_used(kernels: str) -> None:
    packed = st.PackedLinear.from_linear(hardened_linear(50, 6, snapset.Sign(), 0), snapset.Sign())
    ternary = st.PackedLinear.from_linear(
        hardened_linear(50, 6, snapset.Ternary(), 0), snapset.Ternary()
    )
    few, many = 2, st.export.LUT_MAX_ROWS + 1
    for layer, x, kernel in [
        (packed, torch.ones(few, 50), "xnor"),
        (packed, -torch.ones(many, 50), "xnor"),
        (packed, torch.full((few, 50), 0.5), "lookup"),
        (packed, torch.full((many, 50), 0.5), "tiles"),
        (ternary, torch.ones(few, 50), "lookup"),  # +-1 inputs, but not sign weights
        (ternary, torch.ones(many, 50), "tiles"),
    ]:
        layer(x)
        assert layer.last_kernel == kernel


def test_lookup_max_rows_picks_the_kernel_per_layer(kernels: str) -> None:
    layer = hardened_linear(50, 6, snapset.Ternary(), 0)
    packed = st.PackedLinear.from_linear(layer, snapset.Ternary())
    assert packed.lookup_max_rows == st.export.LUT_MAX_ROWS
    x = torch.randn(12, 50)
    results = {}
    for limit, kernel in [(0, "tiles"), (12, "lookup"), (11, "tiles"), (1000, "lookup")]:
        packed.lookup_max_rows = limit
        results[limit] = packed(x)
        assert packed.last_kernel == kernel
    torch.testing.assert_close(results[0], results[12], rtol=1e-5, atol=1e-5)
    conv = st.pack(st.constrain(nn.Conv1d(2, 3, 3), "weight", snapset.Sign()).eval())
    conv.lookup_max_rows = 0
    conv(torch.randn(1, 2, 5))  # three patch rows
    assert conv.last_kernel == "tiles"
    conv.lookup_max_rows = 3
    conv(torch.randn(1, 2, 5))
    assert conv.last_kernel == "lookup"


def test_pack_model_with_convs(kernels: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(5, 4, (2, 3), dilation=(1, 2), bias=False),
        nn.Flatten(),
        nn.LazyLinear(7),
    )
    model(torch.randn(1, 3, 11, 9))
    model = st.constrain_(model, snapset.Ternary()).eval()
    packed = st.pack(model)
    assert [type(m).__name__ for m in packed] == [
        "PackedConv",
        "ReLU",
        "PackedConv",
        "Flatten",
        "PackedLinear",
    ]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 11, 9)
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    conv1d = st.constrain(nn.Conv1d(4, 6, 5, stride=2, padding=2), "weight", snapset.Sign())
    packed1d = st.pack(conv1d.eval())
    for x in (torch.randn(2, 4, 17), torch.randn(4, 17)):  # batched and unbatched
        torch.testing.assert_close(packed1d(x), conv1d(x), rtol=1e-5, atol=1e-5)


def test_pack_keeps_the_model_and_leaves_what_it_cannot_pack() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(8, 3))
    model = st.constrain_(model, snapset.ValueSet(range(300))).eval()  # 300 values: > 256
    model[0] = st.constrain(nn.Conv1d(4, 4, 3, groups=2), "weight", snapset.Sign()).eval()
    x = torch.randn(2, 4, 4)
    expected = model(x)
    packed = st.pack(model)
    assert type(packed[0]) is nn.Conv1d and type(packed[2]) is nn.Linear  # stayed float
    torch.testing.assert_close(packed(x), expected)
    # the original is untouched: still constrained, still computing the same
    assert [name for name, _ in st.named_constraints(model)] == ["0.weight", "2.weight"]
    assert torch.equal(model(x), expected)
    assert not any(p.requires_grad for p in packed.parameters())


def test_packed_memory_by_arithmetic() -> None:
    sign = st.PackedLinear.from_linear(hardened_linear(1000, 10, snapset.Sign(), 0), snapset.Sign())
    assert sign.weight_bytes == 10 * 125  # 8 signs a byte
    ternary = st.PackedLinear.from_linear(
        hardened_linear(1000, 10, snapset.Ternary(), 0), snapset.Ternary()
    )
    assert ternary.weight_bytes == 10 * 200  # 5 values a byte
    four = SETS["four"]
    assert st.PackedLinear.from_linear(hardened_linear(1000, 10, four, 0), four).weight_bytes == (
        10 * 250
    )


def test_packing_refuses_values_outside_the_set_and_other_devices() -> None:
    layer = nn.Linear(5, 2)
    with pytest.raises(ValueError, match="harden a constrained layer"):
        st.PackedLinear.from_linear(layer, snapset.Sign())
    packed = st.PackedLinear.from_linear(hardened_linear(5, 2, snapset.Sign(), 0), snapset.Sign())
    with pytest.raises(ValueError, match="run on the CPU"):
        packed(torch.ones(1, 5, device="meta"))


def test_numpy_tables_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    values = SETS["five"]
    x = rng.standard_normal(3 * 2).astype(np.float32)  # g = 3 codes a byte for 5 values
    tables = np.empty((2, 256), dtype=np.float32)
    _kernels._matrix._tables_numpy(x, np.asarray(values.values, dtype=np.float32), 5, 3, tables)
    for b in (0, 7, 124):
        digits = [(b // 5**i) % 5 for i in range(3)]
        expected = sum(x[3 + i] * values.values[d] for i, d in enumerate(digits))
        assert tables[1, b] == pytest.approx(expected, abs=1e-6)
