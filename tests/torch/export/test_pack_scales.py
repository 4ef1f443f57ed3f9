"""pack() of scaled sets (w = alpha * v) and of binary networks end to end (sign weights,
sign activations, BatchNorm folded into SignThresholds), against the unpacked model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import snapset
import snapset.torch as st
from snapset import _kernels
from snapset.torch._constrain import hardened_scales
from snapset.torch._quantize import Quantize, input_quantizers, quantize_inputs_
from snapset.torch.export._pack import SignThresholds

#: What the report says of a packed layer without an input quantizer.
FLOAT = "; float activations: no input quantizer"

SETS = {
    "sign": snapset.Sign(),
    "ternary": snapset.Ternary(),
    "four": snapset.ValueSet([1, -1, 0.5, -0.5]),
    "five": snapset.ValueSet([-2, -1, 0, 1, 2]),
}
# granularities, with group sizes that fill whole bytes of codes (8 signs, 4 four-values) and
# sizes that do not (8 ternary inputs are 1.6 bytes; 6 of anything but five values)
SCALES = ["tensor", "channel", 8, 6]


def scaled(layer: nn.Module, values: snapset.ValueSet, scale: str | int, mode: str) -> nn.Module:
    torch.manual_seed(0)
    return st.constrain(layer, "weight", values, scale=scale, scale_mode=mode).eval()


@pytest.mark.parametrize("mode", ["learned", "absmean"])
@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("set_name", list(SETS))
def test_scaled_linear_packs_to_the_float_layer(
    kernels: str, set_name: str, scale: str | int, mode: str
) -> None:
    values = SETS[set_name]
    layer = scaled(nn.Linear(48, 7), values, scale, mode)
    packed = st.pack(layer)  # warnings are errors: it must pack
    assert type(packed) is st.PackedLinear
    assert packed.packing_report.packed == {"weight": f"PackedLinear, scale={scale!r}{FLOAT}"}
    for batch in (1, st.export.LUT_MAX_ROWS + 5, 40):  # lookups, tiles
        x = torch.randn(batch, 48, generator=torch.Generator().manual_seed(batch))
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)
    signs = torch.randint(0, 2, (3, 48), generator=torch.Generator().manual_seed(1)) * 2.0 - 1
    torch.testing.assert_close(packed(signs), layer(signs), rtol=1e-5, atol=1e-5)
    # XNOR for sign weights, but not where 6-input groups pad the bytes with zero inputs
    expected = "xnor" if set_name == "sign" and scale != 6 else "lookup"
    assert packed.last_kernel == expected


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_scaled_convs_pack_to_the_float_layer(kernels: str, scale: str | int) -> None:
    conv = scaled(nn.Conv2d(48, 8, 3, groups=2, padding=1), snapset.Ternary(), scale, "learned")
    conv1d = scaled(nn.Conv1d(24, 4, 2, stride=2), snapset.Sign(), scale, "absmax")
    for layer, x in [(conv, torch.randn(2, 48, 5, 6)), (conv1d, torch.randn(24, 9))]:
        packed = st.pack(layer)
        assert type(packed) is st.PackedConv
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)


def test_the_xnor_sum_is_exact_then_scaled_once(kernels: str) -> None:
    layer = st.harden_(scaled(nn.Linear(200, 9), snapset.Sign(), "channel", "learned"))
    packed = st.PackedLinear.from_linear(layer, snapset.Sign())
    _, alpha = hardened_scales(layer.weight)
    x = torch.randint(0, 2, (5, 200), generator=torch.Generator().manual_seed(0)) * 2.0 - 1
    counts = x @ layer.weight.sign().T  # integers, exact in float32
    y = packed(x)
    assert packed.last_kernel == "xnor"
    # one product an output, then the bias: the correctly rounded result
    assert torch.equal(y, counts * alpha.reshape(-1) + layer.bias)


def test_packed_matrices_with_scales_match_their_definition(kernels: str) -> None:
    rng = np.random.default_rng(0)
    for values in SETS.values():
        for out, n_in, spans in [(7, 64, 1), (9, 40, 5), (5, 512, 2), (3, 30, 3), (4, 13, 1)]:
            codes = rng.integers(0, len(values), (out, n_in))
            scales = rng.uniform(0.1, 2, (out, spans)).astype(np.float32)
            m = _kernels.PackedMatrix.from_codes(codes, values, scales)
            weight = np.asarray(values.values, np.float32)[codes] * np.repeat(
                scales, n_in // spans, 1
            )
            bias = rng.standard_normal(out).astype(np.float32)
            for x in (rng.standard_normal((3, n_in)), rng.integers(0, 2, (3, n_in)) * 2 - 1):
                x = x.astype(np.float32)
                expected = x.astype(np.float64) @ weight.T + bias
                _, _, y = _kernels.small_matmul(x, m, bias, 8)
                np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
                buffer = np.empty((m.groups * m.group, out), np.float32)
                tile = _kernels.decode_rows(m, 0, m.groups, buffer)
                laid = np.zeros((3, len(tile)), np.float32)
                laid[:, : m.width] = m.lay_out(x)
                np.testing.assert_allclose(laid @ tile + bias, expected, rtol=1e-5, atol=1e-5)
            # the decoded tile holds alpha * v in float32, as the scaled float layer does
            rows = tile[: m.width].reshape(spans, -1, out)[:, : n_in // spans]
            assert np.array_equal(rows.reshape(n_in, out), weight.T)


def test_scales_count_in_the_packed_bytes_and_the_repr() -> None:
    layer = st.harden_(scaled(nn.Linear(1000, 10), snapset.Ternary(), 250, "learned"))
    packed = st.PackedLinear.from_linear(layer, snapset.Ternary())
    # 250 ternary inputs fill 50 bytes: 4 groups of 50 bytes, and 4 float32 scales an output
    assert packed.weight_bytes == 10 * 200 + 10 * 4 * 4
    assert "scales=40" in repr(packed)
    padded = st.harden_(scaled(nn.Linear(1000, 10), snapset.Ternary(), 8, "learned"))
    # 8 ternary inputs take 2 bytes (padded from 1.6): 125 groups of 2 bytes an output
    assert st.pack(padded).weight_bytes == 10 * 250 + 10 * 125 * 4
    tensor = st.harden_(scaled(nn.Linear(1000, 10), snapset.Ternary(), "tensor", "learned"))
    assert st.pack(tensor).weight_bytes == 10 * 200 + 4


def test_a_scaled_weight_changed_after_harden_stays_in_float() -> None:
    layer = st.harden_(scaled(nn.Linear(8, 3), snapset.Ternary(), "channel", "learned"))
    with torch.no_grad():
        layer.weight[0, 0] += 0.25  # fine-tuned in float after harden_
    with pytest.warns(UserWarning, match="'weight' \\(its values left their set after harden_"):
        assert type(st.pack(layer)) is nn.Linear
    with pytest.raises(ValueError, match=r"it changed since\. Harden a constrained layer"):
        st.PackedLinear.from_linear(layer, snapset.Ternary())


def test_scales_that_are_not_positive_or_leave_float32_stay_in_float() -> None:
    layer = st.harden_(scaled(nn.Linear(8, 3), snapset.Ternary(), "channel", "learned"))
    hardened_scales(layer.weight)[1][1] = -0.5
    with pytest.warns(UserWarning, match="its scales hold 1 entry that is not finite and > 0"):
        assert type(st.pack(layer)) is nn.Linear
    double = scaled(nn.Linear(8, 3).double(), snapset.Sign(), "tensor", "learned")
    with torch.no_grad():
        scale = double.parametrizations.weight[0].scale
        scale.assign(torch.full_like(scale.start, 1e-50))
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="where the scale 1e-50 times 1.0 underflows"):
        packed = st.pack(double)
    assert torch.equal(packed(x), double(x))  # the float64 layer, computing with 1e-50


def test_a_scaled_model_hardened_saved_and_loaded_packs_as_the_constrained_one(tmp_path):
    model = nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 3))
    model = st.constrain_(model, snapset.Ternary(), scale="channel").eval()
    x = torch.randn(5, 12)
    expected = model(x)
    path = st.save(st.harden_(model), tmp_path / "scaled.safetensors")
    loaded = st.load(nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 3)), path)
    packed = st.pack(loaded)
    assert packed.packing_report.packed == {
        "0.weight": f"PackedLinear, scale='channel'{FLOAT}",
        "1.weight": f"PackedLinear, scale='channel'{FLOAT}",
    }
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)


def test_packed_layers_keep_their_input_quantizers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    model = st.constrain_(model, snapset.Ternary(), scale="tensor", scale_mode="absmean")
    int8 = Quantize(snapset.ValueSet(range(-128, 128)), scale="token")  # BitNet b1.58's
    model = quantize_inputs_(model, int8).eval()
    packed = st.pack(model)
    assert [name for name, _ in input_quantizers(packed)] == ["0", "2"]
    x = torch.randn(6, 16)
    torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    assert packed.packing_report.folded == {}


# ----- binary networks end to end -------------------------------------------------------------


def digits() -> torch.Tensor:
    images = load_digits().data  # 1797 images of 8x8 pixels, 0..16
    return torch.tensor(images / 8.0 - 1.0, dtype=torch.float32)


def with_statistics(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """``model`` with its BatchNorms' running statistics from ``x`` and affine parameters of
    both signs (one gamma 0: a channel whose sign never changes), in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the batches
    with torch.no_grad():
        model.train()(x)
        generator = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                gamma = torch.randn(module.num_features, generator=generator)
                gamma[0] = 0.0
                module.weight.copy_(gamma)
                module.bias.copy_(torch.randn(module.num_features, generator=generator))
    return model.eval()


def binary_mlp(scale: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 96),
        nn.BatchNorm1d(96),
        nn.Linear(96, 80),
        nn.BatchNorm1d(80),
        nn.Linear(80, 10),
        nn.BatchNorm1d(10),  # the logits' BatchNorm: no sign after it, not folded
    )
    model = st.constrain_(model, snapset.Sign(), scale=scale)
    return quantize_inputs_(model, Quantize(snapset.Sign()))  # the first layer's input too


@pytest.mark.parametrize("scale", [None, "tensor", "channel"], ids=str)
def test_a_binary_mlp_runs_on_xnor_end_to_end_with_the_unpacked_outputs(
    kernels: str, scale: str | None
) -> None:
    x = digits()
    model = with_statistics(binary_mlp(scale), x, seed=1)
    packed = st.pack(model)
    assert [type(layer).__name__ for layer in packed] == ["SignChain", "BatchNorm1d"]
    chain = packed[0]
    assert [type(layer).__name__ for layer in chain.layers] == [
        "PackedLinear",
        "SignThresholds",
        "PackedLinear",
        "SignThresholds",
        "PackedLinear",
    ]
    assert list(packed.packing_report.folded) == ["1", "3", "0..4"]
    assert [name for name, _ in input_quantizers(packed)] == ["0.layers.0"]  # the others: signs
    one_by_one = nn.Sequential(*chain.layers)  # the same modules, each on its own
    for rows in (x[:1], x[:5], x):
        with torch.no_grad():
            for i in (1, 3):  # every sign the hidden layers pass on is the unpacked model's
                signs = model[i + 1].input_quantizer(model[: i + 1](rows))
                assert torch.equal(one_by_one[: i + 1](rows), signs)
            assert torch.equal(chain(rows), one_by_one(rows))  # bits between layers, same signs
            if scale is None:  # integer sums plus the bias, as the float layer computes them
                assert torch.equal(packed(rows), model(rows))
            else:  # count * alpha rounded once, where the float layer adds +-alpha in turn
                torch.testing.assert_close(packed(rows), model(rows), rtol=1e-6, atol=1e-6)
        assert [chain.layers[i].last_kernel for i in (0, 2, 4)] == ["xnor"] * 3


def test_thresholds_take_the_unpacked_decision_at_exact_ties() -> None:
    # y = acc + bias with bias 0, BatchNorm centred on 0 with no shift: every row whose count
    # is 0 lands exactly on the threshold
    model = binary_mlp(None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm1d):
                module.bias.zero_()
                module.weight.copy_(torch.linspace(-1, 1, module.num_features))
    model.eval()
    packed = st.pack(model)
    x = digits()
    hidden = model[1](model[0](x))
    assert (hidden == 0).float().mean() > 0.02  # ties happen, often
    assert torch.equal(packed(x), model(x))


def test_a_binary_cnn_folds_batchnorm2d_and_runs_its_second_conv_on_xnor(kernels: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3),  # no padding: zero padding would put 0s among the signs
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 16, 3, groups=2),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    model = quantize_inputs_(st.constrain_(model, snapset.Sign()), Quantize(snapset.Sign()))
    images = digits().reshape(-1, 1, 8, 8)
    model = with_statistics(model, images, seed=2)
    packed = st.pack(model)
    assert list(packed.packing_report.folded) == ["1"]  # a Flatten follows the second
    x = images[:500]  # 18,000 patch rows: numpy's XNOR, a row at a time, takes seconds
    assert torch.equal(packed(x), model(x))
    assert packed[2].last_kernel == "xnor"


def test_a_float_first_layer_folds_its_batchnorm_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 10))
    model = st.constrain_(model, snapset.Sign(), filter_fn=lambda module, name: name == "2")
    model = with_statistics(quantize_inputs_(model, Quantize(snapset.Sign())), digits(), 3)
    packed = st.pack(model)
    assert [type(layer).__name__ for layer in packed] == [
        "Linear",
        "SignThresholds",
        "PackedLinear",
    ]
    x = digits()
    assert torch.equal(packed(x), model(x))
    assert packed[2].last_kernel == "xnor"


def test_without_a_foldable_batchnorm_the_quantizers_stay() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 32),
        nn.BatchNorm1d(32, track_running_stats=False),  # batch statistics even in eval
        nn.Linear(32, 16),
        nn.Linear(16, 8),  # no BatchNorm before it: its quantizer signs the outputs
    )
    model = quantize_inputs_(st.constrain_(model, snapset.Sign()), Quantize(snapset.Sign()))
    model.eval()
    packed = st.pack(model)
    assert packed.packing_report.folded == {}
    assert [name for name, _ in input_quantizers(packed)] == ["0", "2", "3"]
    x = digits()[:50]
    assert torch.equal(packed(x), model(x))


def test_sign_thresholds_decide_as_batchnorm_and_the_sign_on_every_side_of_them() -> None:
    generator = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm1d(64).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(64, generator=generator) * 10)
        bn.running_var.copy_(torch.rand(64, generator=generator) * 5)
        bn.weight.copy_(torch.randn(64, generator=generator))
        bn.weight[:4] = 0.0
        bn.bias.copy_(torch.randn(64, generator=generator))
    sign = Quantize(snapset.Sign()).eval()
    folded = SignThresholds.of(lambda y: sign(bn(y[None]))[0], 64)
    edges = folded.threshold.clamp(-1e30, 1e30)
    around = [edges, torch.nextafter(edges, torch.tensor(-torch.inf)), torch.zeros(64)]
    y = torch.cat([torch.stack(around), torch.randn(500, 64, generator=generator) * 20])
    assert torch.equal(folded(y), sign(bn(y)))
    assert torch.equal(folded.low[:4], folded.high[:4])  # gamma 0: one sign, always
    assert bool((folded.low[4:] == -torch.sign(bn.weight[4:])).all())


def test_a_chain_that_ends_with_thresholds_passes_signs_to_the_next_layer(kernels: str) -> None:
    """The last layer cannot join the chain (groups of 6 inputs pad its bytes): the chain
    ends with the thresholds and hands their signs, as floats, to the layer after it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.Linear(48, 10))
    st.constrain(model[0], "weight", snapset.Sign())
    st.constrain(model[2], "weight", snapset.Sign(), scale=6)
    model = quantize_inputs_(model, Quantize(snapset.Sign()))
    x = digits()
    model = with_statistics(model, x, seed=2)
    packed = st.pack(model)
    assert [type(layer).__name__ for layer in packed] == ["SignChain", "PackedLinear"]
    assert [type(layer).__name__ for layer in packed[0].layers] == [
        "PackedLinear",
        "SignThresholds",
    ]
    with torch.no_grad():
        signs = packed[0](x)
        assert set(signs.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(signs, nn.Sequential(*packed[0].layers)(x))
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
