"""pack(): packed layers and their kernels against the hardened float model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset import _kernels

#: What the report says of a packed layer without an input quantizer.
FLOAT = "; float activations: no input quantizer"

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
            # sums of up to 300 products of magnitude up to 2 * 4, in another order than BLAS
            torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=5e-5)


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


def test_a_wide_layer_runs_lookups_at_any_batch_where_the_permutes_run(kernels: str) -> None:
    """With AVX-512 register permutes, lookups cost less than float multiply-adds on a wide
    layer (codes a byte times outputs at least 8192), so they run whatever the batch."""
    layer = hardened_linear(24, 1024, snapset.Sign(), 0)
    packed = st.PackedLinear.from_linear(layer, snapset.Sign())
    loaded = _kernels._matrix._KERNELS.module()
    permutes = kernels == "numba" and loaded is not None and loaded.PERMUTES
    assert packed.lookup_max_rows == (None if permutes else st.export.LUT_MAX_ROWS)
    narrow = st.PackedLinear.from_linear(
        hardened_linear(24, 1023, snapset.Sign(), 0), snapset.Sign()
    )
    assert narrow.lookup_max_rows == st.export.LUT_MAX_ROWS
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-4)
    assert packed.last_kernel == ("lookup" if permutes else "tiles")


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
    with pytest.warns(UserWarning, match="pack left 1 of 2 constrained weights in float"):
        packed = st.pack(model)
    assert type(packed[0]) is st.PackedConv and type(packed[2]) is nn.Linear  # stayed float
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
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
    with pytest.raises(snapset.OutsideSetError, match="Harden a constrained layer"):
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


# the convolutions pack once left in float, and their combinations
CONVS = {
    "groups": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "depthwise": lambda: nn.Conv1d(3, 6, 3, groups=3, stride=2),
    "same, even kernel": lambda: nn.Conv2d(3, 4, (2, 4), padding="same", dilation=(1, 2)),
    "valid": lambda: nn.Conv1d(2, 3, 4, padding="valid"),
    "reflect": lambda: nn.Conv2d(3, 4, 3, padding=2, padding_mode="reflect", stride=2),
    "replicate, same": lambda: nn.Conv1d(3, 2, 4, padding="same", padding_mode="replicate"),
    "circular": lambda: nn.Conv2d(2, 2, 3, (1, 2), (1, 2), padding_mode="circular", groups=2),
}


# torch's float convolution warns that it pads a copy for an odd total padding (the even
# kernel with dilation 1 below), the case where "same" pads one more after than before
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("name", list(CONVS))
def test_pack_packs_grouped_and_padded_convs_as_the_float_layer_computes(
    kernels: str, name: str
) -> None:
    torch.manual_seed(0)
    conv = st.constrain(CONVS[name](), "weight", snapset.Ternary()).eval()
    packed = st.pack(conv)  # warnings are errors here: nothing may stay in float
    assert type(packed) is st.PackedConv
    assert packed.packing_report.packed == {"weight": f"PackedConv{FLOAT}"}
    size = (9, 11) if isinstance(conv, nn.Conv2d) else (13,)
    for shape in [(2, conv.in_channels, *size), (conv.in_channels, *size)]:
        x = torch.randn(shape)
        torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)


def test_pack_reports_and_warns_which_weights_stay_in_float_and_why() -> None:
    model = nn.ModuleDict(
        {
            "fc": nn.Linear(6, 4),
            "conv": nn.Conv1d(2, 4, 3, padding="same", groups=2),
            "conv3d": nn.Conv3d(2, 2, 3),
            "up": nn.ConvTranspose2d(2, 2, 3),
            "wide": nn.Linear(4, 4),
            "f64": nn.Linear(4, 4).double(),
        }
    )
    for name in ["fc", "conv", "conv3d", "up"]:
        st.constrain(model[name], "weight", snapset.Sign())
    st.constrain(model["wide"], "weight", snapset.ValueSet(range(300)))
    st.constrain(model["f64"], "weight", snapset.ValueSet([1, 1 + 2**-40]))
    st.constrain(model["fc"], "bias", snapset.Ternary())
    model["embed"] = st.constrain(nn.Embedding(5, 3), "weight", snapset.Sign())
    model["scale"] = st.Multiplier(4, snapset.Sign())
    with pytest.warns(UserWarning) as caught:
        packed = st.pack(model)
    report = packed.packing_report
    assert report.packed == {
        "fc.weight": f"PackedLinear{FLOAT}",
        "conv.weight": f"PackedConv{FLOAT}",
    }
    packed_kinds = "Linear, Conv1d, Conv2d and GF2Linear are packed"
    assert report.kept == {
        "fc.bias": "only weights are packed",
        "conv3d.weight": f"no packed layer for Conv3d; {packed_kinds}",
        "up.weight": f"no packed layer for ConvTranspose2d; {packed_kinds}",
        "wide.weight": "its set has 300 values, more than a byte's 256 codes",
        "f64.weight": report.kept["f64.weight"],
        "embed.weight": f"no packed layer for Embedding; {packed_kinds}",
        "scale.weight": f"no packed layer for Multiplier; {packed_kinds}",
    }
    assert report.kept["f64.weight"].startswith("packed layers compute in float32, and ValueSet(")
    assert "cannot be told apart in float32" in report.kept["f64.weight"]
    [warning] = caught
    message = str(warning.message)
    assert message.startswith("pack left 7 of 9 constrained weights in float: 'fc.bias' (only")
    assert all(f"'{name}' ({why})" in message for name, why in report.kept.items())
    lines = str(report).splitlines()
    assert lines[0] == f"fc.weight      packed: PackedLinear{FLOAT}"
    assert lines[3] == "conv3d.weight  in float: " + report.kept["conv3d.weight"]
    assert [type(packed[name]).__name__ for name in model] == [
        "PackedLinear",  # its bias, constrained, stays in float32 (set values all the same)
        "PackedConv",
        "Conv3d",
        "ConvTranspose2d",
        "Linear",
        "Linear",
        "Embedding",
        "Multiplier",
    ]


@pytest.mark.parametrize(
    "values",
    [snapset.ValueSet([1, 1 + 2**-40]), snapset.ValueSet([-1e39, 1e39])],
    ids=["merges", "overflows"],
)
def test_a_float64_set_that_float32_cannot_hold_stays_in_float64(values: snapset.ValueSet) -> None:
    torch.manual_seed(0)
    model = st.constrain(nn.Linear(6, 3).double(), "weight", values).eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="packed layers compute in float32"):
        packed = st.pack(model)
    assert type(packed) is nn.Linear
    assert torch.equal(packed(x), model(x))  # the float64 layer itself: exact, finite


def test_a_float64_model_packs_to_float32_rounding_and_refuses_inputs_beyond_it() -> None:
    torch.manual_seed(0)
    values = snapset.ValueSet([-0.3, 0.1, 0.7])  # not exact in float32, but apart
    model = st.constrain(nn.Linear(6, 3).double(), "weight", values).eval()
    packed = st.pack(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert packed(x).dtype == torch.float64
    torch.testing.assert_close(packed(x), model(x), rtol=1e-6, atol=1e-6)
    huge = torch.full((1, 6), 1e300, dtype=torch.float64)
    assert torch.isfinite(model(huge)).all()
    with pytest.raises(ValueError, match=r"holds 1e\+300, beyond float32's range"):
        packed(huge)
    # infinities and NaN pass through, as in the float layer
    assert torch.isnan(packed(torch.full((1, 6), float("nan"), dtype=torch.float64))).all()


def test_packed_layers_refuse_inputs_that_are_not_floating_point() -> None:
    layer = hardened_linear(5, 2, snapset.Sign(), 0)
    conv = st.harden_(st.constrain(nn.Conv1d(2, 3, 3), "weight", snapset.Sign()))
    packed = [
        (layer, st.PackedLinear.from_linear(layer, snapset.Sign()), (1, 5)),
        (conv, st.PackedConv.from_conv(conv, snapset.Sign()), (1, 2, 5)),
    ]
    for float_layer, packed_layer, shape in packed:
        for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
            x = torch.ones(shape, dtype=dtype)
            with pytest.raises(RuntimeError):
                float_layer(x)  # what the float layer does
            with pytest.raises(TypeError, match=f"got {dtype}: convert the input"):
                packed_layer(x)


def test_pack_refuses_a_flip_parameter_moved_off_its_set() -> None:
    model = nn.Sequential(
        st.constrain(nn.Linear(4, 3), "weight", snapset.Sign(), method="flip"), nn.ReLU()
    )
    stored = model[0].parametrizations.weight.original
    with torch.no_grad():
        stored[0, 0] = 0.97  # as an ordinary optimizer's step would leave it
    before = stored.clone()
    with pytest.raises(snapset.OutsideSetError, match=r"1 value outside ValueSet\(\[-1, 1\]\)"):
        st.pack(model)
    assert torch.equal(model[0].parametrizations.weight.original, before)


def test_a_model_hardened_saved_and_loaded_packs_as_the_constrained_one(tmp_path):
    # the order users try: harden_, save, load into a plain model, pack
    model = st.constrain_(nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 3)), snapset.Ternary())
    st.harden_(model)
    path = st.save(model, tmp_path / "hardened.safetensors")
    loaded = st.load(nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 3)), path)
    packed = st.pack(loaded)
    assert [type(layer).__name__ for layer in packed] == ["PackedLinear", "PackedLinear"]
    x = torch.randn(5, 12)
    torch.testing.assert_close(packed(x), model(x))
    with torch.no_grad():
        loaded[1].weight[0, 0] = 0.5  # fine-tuned in float after harden_: not packed
    with pytest.warns(UserWarning, match="'1.weight' \\(its values left their set after harden_"):
        assert type(st.pack(loaded)[1]).__name__ == "Linear"


def test_a_float64_set_that_underflows_in_float32_stays_in_float():
    layer = st.constrain(nn.Linear(4, 3).double(), "weight", snapset.ValueSet([1e-50, 1]))
    with pytest.warns(UserWarning, match="where 1e-50 of ValueSet\\(\\[1e-50, 1\\]\\) underflows"):
        packed = st.pack(nn.Sequential(layer))
    assert type(packed[0]).__name__ == "Linear"  # computes with 1e-50, not with 0
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(packed(x), layer.eval()(x))
