"""The 8-bit activation path of packed layers: integer grids, int8 weights, ``torch._int_mm``
sums against int64 ones, and packed models against the unpacked ones with the same input
quantizers."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset import _kernels
from snapset._kernels import PackedMatrix
from snapset._kernels._int8 import IntegerGrid, int8_weight, integer_grid
from snapset.torch._constrain import hardened_scales
from snapset.torch._quantize import Quantize, input_quantizers, quantize_inputs_

INT8 = snapset.ValueSet(range(-128, 128))
#: Every set on an int8 grid, with its step and integers.
GRIDS = {
    "sign": (snapset.Sign(), 1.0, (-1, 1)),
    "binary": (snapset.Binary(), 1.0, (0, 1)),
    "ternary": (snapset.Ternary(), 1.0, (-1, 0, 1)),
    "four": (snapset.ValueSet([1, -1, 0.5, -0.5]), 0.5, (-2, -1, 1, 2)),
    "five": (snapset.ValueSet([-2, -1, 0, 1, 2]), 1.0, (-2, -1, 0, 1, 2)),
    "int8": (INT8, 1.0, tuple(range(-128, 128))),
}
WEIGHT_SETS = [name for name in GRIDS if name != "int8"]
# weight scales: none, one, one per output, groups of 8 inputs, and of 6 (padded to bytes
# of codes for every set but five values, 3 a byte)
SCALES = [None, "tensor", "channel", 8, 6]
MAX_ROWS = st.export.LUT_MAX_ROWS
INT8_PLAN = f"8-bit activations on torch._int_mm above {MAX_ROWS} rows"


@pytest.mark.parametrize("name", list(GRIDS))
def test_integer_grid_is_the_largest_step_with_int8_integers(name: str) -> None:
    values, step, integers = GRIDS[name]
    assert integer_grid(values) == IntegerGrid(step, integers)
    scaled = snapset.ValueSet([3 * v for v in values])  # a step of 3 times as much
    assert integer_grid(scaled) == IntegerGrid(3 * step, integers)


@pytest.mark.parametrize(
    ("values", "widest"),
    [([0.1, 0.3], 10808639105689190), ([1, 200], 200), ([-129, 0, 1], 129), ([1, 2**-8], 256)],
)
def test_sets_off_an_int8_grid_say_so(values: list[float], widest: int) -> None:
    assert integer_grid(snapset.ValueSet(values)) == (
        f"lies on an integer grid only with integers up to {widest}, beyond int8 (-128..127)"
    )
    assert integer_grid(snapset.ValueSet([-128, 127])) == IntegerGrid(1.0, (-128, 127))


@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("name", WEIGHT_SETS)
def test_the_int8_sums_are_the_int64_sums_of_the_members(name: str, scale: str | int) -> None:
    values, step, _ = GRIDS[name]
    n_in = width(scale)
    layer = hardened(nn.Linear(n_in, 11), values, scale)
    packed = st.pack(with_quantizer(layer, Quantize(INT8, scale="token")))
    [weight] = packed.int8_weights
    matrix = packed.matrix
    assert weight.dtype == torch.int8 and weight.shape == (matrix.width, 11)
    assert packed.int8_bytes == matrix.width * 11
    # the integers of the float weight, scale by scale
    alpha = 1.0 if scale is None else hardened_scales(layer.weight)[1].detach()
    per_entry = torch.ones(11, 1) * alpha  # (out, spans)
    run = n_in // per_entry.shape[1]
    integers = (layer.weight.detach() / per_entry.repeat_interleave(run, 1) / step).double()
    assert torch.equal(integers, integers.round())
    members, _ = packed.input_quantizer.members_and_scale(torch.randn(20, n_in))
    inputs = weight.shape[0] // per_entry.shape[1]  # a span's rows, padding included
    for span in range(per_entry.shape[1]):
        rows = weight[span * inputs : span * inputs + run]
        assert torch.equal(rows.T.long(), integers[:, span * run : (span + 1) * run].long())
        part = members[:, span * run : (span + 1) * run]
        expected = part.long() @ integers[:, span * run : (span + 1) * run].long().T
        assert torch.equal(torch._int_mm(part.to(torch.int8), rows).long(), expected)


@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("name", WEIGHT_SETS)
def test_packed_int8_linear_computes_what_the_unpacked_one_does(
    kernels: str, name: str, scale: str | int
) -> None:
    n_in = width(scale)
    layer = hardened(nn.Linear(n_in, 13), GRIDS[name][0], scale)
    model = with_quantizer(layer, Quantize(INT8, scale="token"))
    packed = st.pack(model)
    plan = f"PackedLinear{'' if scale is None else f', scale={scale!r}'}; {INT8_PLAN}"
    assert packed.packing_report.packed == {"weight": plan}
    for batch, kernel in [
        (1, "lookup"),
        (MAX_ROWS, "lookup"),
        (MAX_ROWS + 1, "int8"),
        (40, "int8"),
    ]:
        x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(batch)) * 3
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
        assert packed.last_kernel == kernel
    x = torch.randn(2, 7, n_in)  # rows of any leading shape, a scale each
    torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("scale", [None, 0.25, "tensor", "token"], ids=str)
def test_every_activation_set_on_an_int8_grid_takes_the_8_bit_path(
    kernels: str, name: str, scale: str | float | None
) -> None:
    weight = snapset.ValueSet([1, -1, 0.5, -0.5])
    model = nn.Sequential(hardened(nn.Linear(30, 9), weight, 6), nn.ReLU(), nn.Linear(9, 3))
    quantize_inputs_(model, Quantize(GRIDS[name][0], scale=scale), modules=(nn.Linear,))
    packed = st.pack(model)
    assert packed.packing_report.packed["0.weight"].endswith(INT8_PLAN)
    for batch in (3, 33):
        x = torch.randn(batch, 30, generator=torch.Generator().manual_seed(batch))
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
        assert packed[0].last_kernel == ("int8" if batch > MAX_ROWS else "lookup")


def test_sign_activations_on_sign_weights_stay_on_xnor(kernels: str) -> None:
    model = with_quantizer(hardened(nn.Linear(70, 5), snapset.Sign()), Quantize(snapset.Sign()))
    packed = st.pack(model)
    assert packed.packing_report.packed == {
        "weight": "PackedLinear; sign activations on XNOR-popcount"
    }
    assert packed.int8_bytes == 0
    x = torch.randn(50, 70)
    assert torch.equal(packed(x), model(x))
    assert packed.last_kernel == "xnor"


def test_pack_int8_gives_every_packed_layer_bitnets_activations(kernels: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 5 * 5, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )
    st.constrain_(model, snapset.Ternary(), scale="tensor", scale_mode="absmean")
    quantize_inputs_(model, Quantize(snapset.Ternary(), scale="tensor"), filter_fn=last_layer)
    model.eval()
    packed = st.pack(model, activations="int8")
    report = packed.packing_report.packed
    assert report == {
        "0.weight": f"PackedConv, scale='tensor'; {INT8_PLAN}",
        "2.weight": f"PackedLinear, scale='tensor'; {INT8_PLAN}",
        "4.weight": f"PackedLinear, scale='tensor'; {INT8_PLAN}",
    }
    quantizers = dict(input_quantizers(packed))
    assert [q.scaling.granularity for q in quantizers.values()] == ["tensor", "token", "tensor"]
    assert quantizers["4"].values == snapset.Ternary()  # a layer keeps the quantizer it has
    # the unpacked model with the same quantizers computes the same
    twin = quantize_inputs_(model, Quantize(INT8, scale="tensor"), filter_fn=first_layer)
    quantize_inputs_(twin, Quantize(INT8, scale="token"), filter_fn=middle_layer)
    for batch in (1, 12):
        x = torch.randn(batch, 3, 5, 5, generator=torch.Generator().manual_seed(batch))
        torch.testing.assert_close(packed(x), twin(x), rtol=1e-5, atol=1e-5)
        assert packed[0].last_kernel == "int8"  # 25 patch rows an image
        assert packed[2].last_kernel == ("int8" if batch > MAX_ROWS else "lookup")


def test_a_conv_with_groups_and_a_tensor_scale_runs_on_int8(kernels: str) -> None:
    conv = hardened(nn.Conv1d(6, 4, 3, groups=2, stride=2), snapset.Ternary(), "channel")
    model = with_quantizer(conv, Quantize(INT8, scale="tensor"))
    packed = st.pack(model)
    assert len(packed.int8_weights) == 2 and packed.int8_bytes == 2 * 9 * 2
    for x in (torch.randn(3, 6, 21), torch.randn(6, 5)):
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "lookup"  # 2 patch rows


#: Quantizers that keep a layer on the float kernels, with the layer and the reason.
OFF_THE_PATH = {
    "conv token": (
        lambda: nn.Conv2d(2, 3, 3),
        (INT8, "token", 1),
        "a convolution's patches mix positions of token scales",
    ),
    "channel": (
        lambda: nn.Linear(6, 3),
        (INT8, "channel", -1),
        "its input quantizer's scale varies along the features",
    ),
    "token off the features": (
        lambda: nn.Linear(6, 3),
        (INT8, "token", 0),
        "its input quantizer's scale varies along the features",
    ),
    "0.1 and 0.3": (
        lambda: nn.Linear(6, 3),
        (snapset.ValueSet([0.1, 0.3]), None, -1),
        "its input quantizer's set lies on an integer grid only with integers up to "
        "10808639105689190, beyond int8 (-128..127)",
    ),
}


@pytest.mark.parametrize("case", list(OFF_THE_PATH))
def test_quantizers_off_the_int8_path_run_the_float_kernels(kernels: str, case: str) -> None:
    build, (values, scale, axis), why = OFF_THE_PATH[case]
    quantizer = Quantize(values, scale=scale, feature_axis=axis)
    model = with_quantizer(hardened(build(), snapset.Ternary()), quantizer)
    packed = st.pack(model)
    assert packed.packing_report.packed == {
        "weight": f"{type(packed).__name__}; float activations: {why}"
    }
    assert packed.int8_bytes == 0
    shape = (20, 2, 5, 5) if isinstance(model, nn.Conv2d) else (20, 6)
    x = torch.randn(shape)
    torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "tiles"


def test_weights_off_an_int8_grid_run_the_float_kernels(kernels: str) -> None:
    values = snapset.ValueSet([-1, 2**-8, 1])
    model = with_quantizer(hardened(nn.Linear(6, 3), values), Quantize(INT8, scale="token"))
    packed = st.pack(model)
    assert packed.packing_report.packed == {
        "weight": "PackedLinear; float activations: its weight's set lies on an integer grid "
        "only with integers up to 256, beyond int8 (-128..127)"
    }
    x = torch.randn(20, 6)
    torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "tiles"


def test_a_weight_set_that_float32_rounds_packs_and_stays_off_the_int8_path(kernels: str) -> None:
    # 0.1 and 0.3 are no float32 numbers: the float32 weight holds their roundings, which
    # pack takes for the members they are (it refused them as outside the set before)
    values = snapset.ValueSet([0.1, 0.3, 1])
    model = with_quantizer(hardened(nn.Linear(6, 3), values), Quantize(INT8, scale="token"))
    packed = st.pack(model)
    assert packed.packing_report.packed["weight"].startswith(
        "PackedLinear; float activations: its weight's set lies on an integer grid only with "
        "integers up to "
    )
    x = torch.randn(20, 6)
    torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)


def test_sums_that_could_overflow_int32_run_the_float_kernels() -> None:
    codes = np.zeros((1, 140_000), dtype=np.int64)
    packed = st.PackedLinear(PackedMatrix.from_codes(codes, INT8), None)
    with_quantizer(packed, Quantize(INT8, scale="token"))
    assert packed.plan_kernels() == (
        "float activations: int32 sums of 140000 products up to 16384 could overflow"
    )


def test_pack_refuses_other_activations_with_the_model_unchanged() -> None:
    model = st.constrain_(nn.Sequential(nn.Linear(4, 2)), snapset.Ternary())
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"Invalid activations: 'int4'; choose None .* or 'int8'"):
        st.pack(model, activations="int4")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert list(input_quantizers(model)) == []


def test_quantizers_added_or_removed_after_pack_take_effect_when_planned(kernels: str) -> None:
    layer = hardened(nn.Linear(16, 4), snapset.Ternary())
    packed = st.pack(layer)
    with_quantizer(packed, Quantize(INT8, scale="token"))
    x = torch.randn(12, 16)
    expected = with_quantizer(layer, Quantize(INT8, scale="token"))(x)
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "tiles"  # not planned yet: the float path, quantized
    assert packed.plan_kernels() == INT8_PLAN
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "int8"
    st.remove_input_quantizers_(packed)
    plain = st.remove_input_quantizers_(layer)(x)
    torch.testing.assert_close(packed(x), plain, rtol=1e-5, atol=1e-5)
    assert packed.plan_kernels() == "float activations: no input quantizer"
    assert packed.int8_bytes == 0


def test_a_copied_packed_model_keeps_its_8_bit_path() -> None:
    model = st.constrain_(nn.Sequential(nn.Linear(16, 4)), snapset.Ternary()).eval()
    packed = st.pack(model, activations="int8")
    copied = copy.deepcopy(packed)
    x = torch.randn(20, 16)
    assert torch.equal(copied(x), packed(x))
    assert copied[0].last_kernel == "int8" and copied[0].int8_bytes == 16 * 4


def test_the_8_bit_path_is_exact_where_float32_is(kernels: str) -> None:
    # integer weights and activations, small sums: both sides exact, so equal bit for bit
    layer = hardened(nn.Linear(33, 6), snapset.ValueSet([-2, -1, 0, 1, 2]))
    model = with_quantizer(layer, Quantize(INT8))
    packed = st.pack(model)
    x = torch.randint(-100, 100, (17, 33)).float()
    assert torch.equal(packed(x), model(x))
    assert packed.last_kernel == "int8"


def test_float64_models_keep_their_output_dtype_on_the_8_bit_path() -> None:
    layer = hardened(nn.Linear(10, 3).double(), snapset.Ternary())
    model = with_quantizer(layer, Quantize(INT8, scale="token"))
    packed = st.pack(model)
    x = torch.randn(12, 10, dtype=torch.float64)
    y = packed(x)
    assert y.dtype == model(x).dtype == torch.float64
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
    assert packed.last_kernel == "int8"


def test_int8_weight_holds_code_zeros_integer_in_padding_rows() -> None:
    values = snapset.ValueSet([1, 2, 3])  # code 0 is the integer 1: padding rows are not 0
    codes = np.array([[2, 1, 0, 2, 1, 0, 1]])
    matrix = PackedMatrix.from_codes(codes, values, np.array([[1.0]]))
    assert int8_weight(matrix, IntegerGrid(1.0, (1, 2, 3))).T.tolist() == [[3, 2, 1, 3, 2, 1, 2]]
    grouped = PackedMatrix.from_codes(codes[:, :6], values, np.array([[1.0, 2.0]]))
    assert grouped.width == 10  # 3 inputs a scale, padded to 5 (a byte of ternary codes)
    weight = int8_weight(grouped, IntegerGrid(1.0, (1, 2, 3)))
    assert weight.T.tolist() == [[3, 2, 1, 1, 1, 3, 2, 1, 1, 1]]


def hardened(layer: nn.Module, values: snapset.ValueSet, scale: str | int | None = None) -> Any:
    torch.manual_seed(0)
    mode = None if scale is None else "absmean"
    return st.harden_(st.constrain(layer, "weight", values, scale=scale, scale_mode=mode)).eval()


def width(scale: str | int | None) -> int:
    """An odd width, or one that groups of 8 and 6 inputs divide."""
    return 48 if isinstance(scale, int) else 37


def with_quantizer(layer: nn.Module, quantizer: Quantize) -> Any:
    """``layer`` (hardened, or packed) with ``quantizer`` before its input."""
    return quantize_inputs_(layer, quantizer, modules=(type(layer),))


def first_layer(module: nn.Module, name: str) -> bool:
    return name == "0"


def middle_layer(module: nn.Module, name: str) -> bool:
    return name == "2"


def last_layer(module: nn.Module, name: str) -> bool:
    return name == "4"


@pytest.mark.parametrize(
    ("name", "scale"),
    [("int8", "token"), ("int8", "tensor"), ("ternary", "tensor"), ("four", None)],
)
def test_the_compiled_rounding_gives_the_quantizers_own_members(name: str, scale: str) -> None:
    """The 8-bit path rounds latents in one compiled pass; the members are the quantizer's
    own, bit for bit: ties (which go up), a row of zeros, signed zeros, the ends."""
    values = GRIDS[name][0]
    quantizer = Quantize(values, scale=scale).eval()
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(3)) * 40
    x[0, :255] = torch.arange(-127, 128) + 0.5  # with 127 below: halves of int8, alpha 1
    x[0, 255:] = 127.0
    x[1] = 0.0
    x[2, ::2] = -0.0
    layer = st.harden_(st.constrain(nn.Linear(300, 4), "weight", snapset.Ternary()))
    packed = st.pack(quantize_inputs_(layer, quantizer, modules=(nn.Linear,)))
    path = packed._int8
    assert path is not None
    latent, _ = quantizer.latents_and_scale(x)
    boundaries = quantizer.rounding.thresholds.numpy()
    compiled = _kernels.grid_integers(latent.reshape(-1).numpy(), boundaries, path.grid)
    assert compiled is not None  # the compiled pass ran, not the fallback
    members, alpha = path.members_and_scale(x)
    expected, expected_alpha = quantizer.members_and_scale(x)
    assert torch.equal(members, expected) and torch.equal(members.signbit(), expected.signbit())
    assert (alpha is None and expected_alpha is None) or torch.equal(alpha, expected_alpha)


def test_uneven_boundaries_that_one_correction_cannot_settle_fall_back() -> None:
    grid = integer_grid(snapset.ValueSet([-3, 0, 1, 2]))
    assert isinstance(grid, IntegerGrid)
    boundaries = np.array([-1.5, 0.5, 1.5], np.float32)
    assert _kernels.grid_integers(np.array([-2.9, 2.0], np.float32), boundaries, grid) is not None
    assert _kernels.grid_integers(np.array([np.nan], np.float32), boundaries, grid) is None


def test_the_8_bit_path_is_planned_only_where_int_mm_is_fast(monkeypatch) -> None:
    layer = hardened(nn.Linear(16, 4), snapset.Ternary())
    x = torch.randn(12, 16)
    expected = with_quantizer(copy.deepcopy(layer), Quantize(INT8, scale="token"))(x)
    monkeypatch.delenv("SNAPSET_INT8_MATMUL", raising=False)
    for capability, planned in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        packed = st.pack(layer, activations="int8")
        torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
        if planned:
            assert packed.kernel_plan == INT8_PLAN and packed.last_kernel == "int8"
        else:
            assert packed.kernel_plan == (
                "8-bit activations rounded in one compiled pass, multiplied on the float "
                f"kernels: torch._int_mm has no fast int8 kernel on this CPU ({capability})"
            )
            assert packed.last_kernel == "tiles" and packed.int8_bytes == 0
    monkeypatch.setenv("SNAPSET_INT8_MATMUL", "1")  # forced on an AVX2 CPU
    assert st.pack(layer, activations="int8").kernel_plan == INT8_PLAN
    monkeypatch.setenv("SNAPSET_INT8_MATMUL", "0")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert st.pack(layer, activations="int8").kernel_plan.endswith("SNAPSET_INT8_MATMUL=0")
