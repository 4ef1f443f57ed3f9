"""Quantize, quantize and the input quantizers: exact outputs alpha * v, the surrogate gradients
(BinaryNet's, BitNet's, LSQ's) against references, learned scales, the options' refusals, and
quantizers on a model's layers through harden_, state_dict, deepcopy and torch.compile."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import snapset
import snapset.torch as st
from snapset._scales import ActivationScaling, bad_scale_message

INT8 = snapset.ValueSet(range(-128, 128))

# (scale, scale_mode) pairs: every granularity with every mode it takes
SCALES = [
    (None, None),
    (0.25, None),
    ("tensor", None),
    ("token", None),
    ("channel", None),
    ("tensor", "learned"),
    ("channel", "learned"),
]


def quantizer(values, scale=None, scale_mode=None, **options) -> st.Quantize:
    learned_channel = scale == "channel" and scale_mode == "learned"
    return st.Quantize(
        values,
        scale=scale,
        scale_mode=scale_mode,
        num_features=6 if learned_channel else None,
        **options,
    )


def reference_scales(q: st.Quantize, x: Tensor) -> Tensor | None:
    """alpha for x, from the core's numpy statistic (absmax) or the parameter (learned)."""
    scaling = q.scaling
    if scaling is None:
        return None
    if scaling.value is not None:
        return torch.tensor(scaling.value, dtype=x.dtype)
    layout = scaling.layout(tuple(x.shape), q.feature_axis)
    if q.alpha is not None:
        return q.alpha.detach().reshape(layout.grouped_scale)
    stat = layout.statistic(x.numpy(), "absmax", q.values)
    return torch.from_numpy(stat).to(x.dtype).reshape(layout.grouped_scale)


def nearest_members(values: snapset.ValueSet, on_set: Tensor) -> Tensor:
    return torch.from_numpy(values.project(on_set.double().numpy())).to(on_set.dtype)


# ----- outputs: exactly alpha * v -------------------------------------------------------------


@pytest.mark.parametrize("values", [snapset.Sign(), snapset.Ternary(), [0, 0.5, 2], INT8])
@pytest.mark.parametrize(("scale", "scale_mode"), SCALES)
@pytest.mark.parametrize("method", ["ste", "stochastic"])
@pytest.mark.parametrize("training", [True, False])
def test_output_is_exactly_alpha_times_members_of_the_set(
    values, scale, scale_mode, method, training
):
    torch.manual_seed(0)
    q = quantizer(values, scale, scale_mode, method=method).train(training)
    x = torch.randn(3, 4, 6) * 3
    first = q(x)
    y = q(x).detach()  # a learned scale started on the first training batch; nothing moves it here
    assert y.dtype == x.dtype and y.shape == x.shape
    alpha = reference_scales(q, x)
    value_set = snapset.ValueSet(values)
    if alpha is None:
        members = y
    else:
        # the members are recovered through a division, then proven by the product
        members = nearest_members(value_set, y / alpha)
        assert torch.equal(members * alpha, y)  # bit for bit: one product an entry
    table = torch.tensor(value_set.values, dtype=x.dtype)
    assert torch.isin(members, table).all()
    on_set = x if alpha is None else x / alpha
    if method == "ste" or not training:
        assert torch.equal(y, first)
        # the nearest member, wherever x / alpha is not within rounding of a tie
        low = torch.tensor(value_set.values[0])
        high = torch.tensor(value_set.values[-1])
        mids = torch.tensor(value_set.midpoints)
        clear = (on_set.unsqueeze(-1) - mids).abs().amin(-1) > 1e-4
        expected = nearest_members(value_set, on_set.clamp(low, high))
        assert clear.float().mean() > 0.9
        assert torch.equal(members[clear], expected[clear])
    else:
        # a random neighbour: between the two members around x / alpha (clamped to the set)
        bound = on_set.clamp(value_set.values[0], value_set.values[-1])
        steps = max(np.diff(value_set.values))
        assert ((members - bound).abs() <= steps).all()


def test_stochastic_rounds_to_a_neighbour_at_random_and_without_bias():
    torch.manual_seed(0)
    q = st.Quantize(snapset.Ternary(), "stochastic", scale=2.0)
    x = torch.full((20000,), 0.6)  # x / alpha = 0.3: 1 with probability 0.3, else 0
    y = q(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert y.mean().item() == pytest.approx(0.6, abs=0.02)
    assert q.eval()(x).unique().tolist() == [0.0]  # eval: the nearest


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_integer_inputs_are_refused(dtype):
    with pytest.raises(TypeError, match=r"floating-point inputs, got torch\.\w+; cast"):
        st.Quantize(snapset.Sign())(torch.ones(3, dtype=dtype))
    with pytest.raises(TypeError, match="floating-point inputs"):
        st.quantize(torch.ones(3, dtype=dtype), snapset.Sign())


def test_computes_in_its_own_dtype():
    x = torch.tensor([0.1, -0.3, 0.04], dtype=torch.float64)
    q = st.Quantize(snapset.Ternary(), scale=0.1)
    y = q(x)  # a float32 quantizer casts, as autocast's float32 operations do
    tenth = torch.tensor(0.1).item()  # float32's 0.1
    assert y.dtype == torch.float32 and y.tolist() == [tenth, -tenth, 0.0]
    double = q.double()(x)  # float64 tables and scale now
    assert double.dtype == torch.float64 and double.tolist() == [0.1, -0.1, 0.0]


def test_under_autocast_a_lower_precision_input_is_quantized_in_float32():
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    st.constrain_(model, snapset.Ternary(), filter_fn=lambda m, name: name == "1")
    st.quantize_inputs_(model, st.Quantize(INT8, scale="token"))
    seen = []
    model[1].input_quantizer.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(4, 6))
    assert seen == [torch.float32] and y.dtype == torch.bfloat16


def test_the_functional_form_equals_the_module():
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64)
    for scale in (None, 0.5, "tensor", "token", "channel"):
        expected = st.Quantize(INT8, scale=scale).double()(x)
        assert torch.equal(st.quantize(x, INT8, scale=scale), expected)
        assert st.quantize(x, INT8, scale=scale).dtype == torch.float64
    stochastic = st.quantize(x, snapset.Sign(), "stochastic", training=False)
    assert torch.equal(stochastic, st.quantize(x, snapset.Sign()))


def test_the_functional_form_refuses_a_learned_scale():
    with pytest.raises(ValueError, match=r"no parameter to learn a scale in; use the module"):
        st.quantize(torch.ones(3), snapset.Sign(), scale="tensor", scale_mode="learned")


# ----- the surrogate gradients ----------------------------------------------------------------


def test_sign_with_clip_has_binarynets_gradient():
    # Courbariaux et al., 2016: d sign(x) / dx is taken as 1 where |x| <= 1, else 0
    one = torch.tensor(1.0)
    beyond = torch.nextafter(one, torch.tensor(2.0)).item()
    x = torch.tensor([-3.0, -beyond, -1.0, -0.5, 0.0, 0.5, 1.0, beyond, 3.0], requires_grad=True)
    y = st.Quantize(snapset.Sign())(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    g = torch.randn(9)
    y.backward(g)
    inside = x.detach().abs() <= 1
    assert torch.equal(x.grad[~inside], torch.zeros(4))
    # the straight-through slope (10) times the latent's scale (0.1): g up to one rounding
    torch.testing.assert_close(x.grad[inside], g[inside], rtol=2**-23, atol=0)


@pytest.mark.parametrize(("values", "scale"), [(INT8, "token"), (snapset.Sign(), "tensor")])
def test_absmax_scales_pass_the_gradient_straight_through(values, scale):
    # BitNet b1.58's estimator: x / absmax lies inside the set's range, so dL/dx = dL/dy
    x = torch.randn(4, 8, requires_grad=True)
    g = torch.randn(4, 8)
    st.Quantize(values, scale=scale)(x).backward(g)
    assert torch.allclose(x.grad, g, rtol=1e-6, atol=0)


def test_int8_per_token_absmax_matches_bitnets_reference():
    """BitNet b1.58's activation quantizer (Ma et al., 2024; the reference code of "The Era of
    1-bit LLMs", training tips): ``s = 127 / max|x|`` per token, ``q = (x * s).round().clamp(
    -128, 127)``, output ``q / s``. What is compared, on inputs where no ``x * 127 / max|x|``
    lies within 1e-3 of a half-integer (rounding ties: BitNet's ``round`` goes to even,
    snapset's ties go up, and the two ways of dividing may round such an entry apart; 99.8%
    of these entries): the integer codes are equal, and the outputs agree to 2**-22 relative
    (snapset multiplies ``q`` by ``alpha = max|x| / 127``, the reference divides ``q`` by
    ``s = 127 / max|x|``: each rounds twice, in another order)."""
    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 16).unsqueeze(1)
    peak = x.abs().amax(-1, keepdim=True)
    scaled = x * 127 / peak
    clear = (scaled - scaled.floor() - 0.5).abs() > 1e-3
    assert clear.float().mean() > 0.99
    codes = scaled.round().clamp(-128, 127)
    reference = codes / (127 / peak)
    y = st.Quantize(INT8, scale="token")(x)
    alpha = peak / 127  # no token here is below the floor of 1e-5 * 127
    ours = (y / alpha).round()  # alpha * q / alpha is q within rounding, for q up to 2**24
    assert torch.equal(y, ours * alpha)
    assert torch.equal(ours[clear], codes[clear])
    torch.testing.assert_close(y[clear], reference[clear], rtol=2**-22, atol=0)


def started(q: st.Quantize, alpha: Tensor) -> st.Quantize:
    """``q`` with the learned scale ``alpha``, loaded as a trained one is."""
    zeros = torch.zeros_like(alpha)
    q.load_state_dict({"start": alpha, "log_gain": zeros, "initialized": torch.tensor(True)})
    return q


def test_a_learned_scale_gets_lsqs_gradient_by_hand():
    # ternary, alpha = 0.5: x / alpha = (0.6, -1.4, 5.0), v = (1, -1, 1), y = (0.5, -0.5, 0.5).
    # LSQ (Esser et al., 2020): dy/dalpha = v - x / alpha inside the range, v outside:
    # 1 - 0.6, -1, 1; dy/dx = 1 inside, 0 outside.
    q = st.Quantize(snapset.Ternary(), scale="tensor", scale_mode="learned").double()
    started(q, torch.tensor(0.5))
    x = torch.tensor([0.3, -0.7, 2.5], dtype=torch.float64, requires_grad=True)
    y = q(x)
    assert y.tolist() == [0.5, -0.5, 0.5]
    y.backward(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    # in the log domain: d/dlog_gain = alpha * dy/dalpha
    assert q.log_gain.grad.item() == pytest.approx(0.5 * (1 * 0.4 + 2 * -1 + 3 * 1), abs=1e-15)
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def lsq(x: Tensor, alpha: Tensor, low: float, high: float) -> Tensor:
    """LSQ's quantizer as its paper's code writes it, without the gradient scale:
    round_pass(clamp(x / s, -Q_N, Q_P)) * s with round_pass(v) = (v.round() - v).detach() + v."""
    clamped = (x / alpha).clamp(low, high)
    return ((clamped.round() - clamped).detach() + clamped) * alpha


@pytest.mark.parametrize("values", [snapset.Ternary(), INT8])
def test_a_learned_channel_scale_gets_lsqs_gradient(values):
    torch.manual_seed(0)
    q = st.Quantize(values, scale="channel", scale_mode="learned", num_features=5).double()
    x = torch.randn(7, 5, dtype=torch.float64) * 2
    started(q, torch.rand(5, dtype=torch.float64) + 0.2)
    on_set = x / q.alpha.detach()
    assert ((on_set - on_set.floor() - 0.5).abs() > 1e-6).all()  # no ties
    g = torch.randn(7, 5, dtype=torch.float64)
    alpha = q.alpha.detach().clone().requires_grad_(True)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    y = q(xs[0])
    y.backward(g)
    low, high = snapset.ValueSet(values).values[0], snapset.ValueSet(values).values[-1]
    expected = lsq(xs[1], alpha, low, high)
    expected.backward(g)
    assert torch.equal(y, expected)
    torch.testing.assert_close(q.log_gain.grad, alpha.grad * alpha, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-12, atol=0)


# ----- learned scales ---------------------------------------------------------------------


def test_a_learned_scale_starts_at_the_absmax_of_the_first_training_batch():
    q = st.Quantize(INT8, scale="channel", scale_mode="learned", num_features=3)
    first, second = torch.randn(4, 3), torch.randn(4, 3) * 10
    assert q.alpha.tolist() == [1.0, 1.0, 1.0] and not q.initialized
    q.eval()(first)  # eval does not start it
    assert q.alpha.tolist() == [1.0, 1.0, 1.0]
    q.train()(first)
    layout = ActivationScaling("channel", "absmax").layout((4, 3), -1)
    expected = layout.statistic(first.numpy(), "absmax", INT8).astype(np.float32).reshape(3)
    assert q.alpha.tolist() == expected.tolist() and q.initialized
    q(second)  # only once
    assert q.alpha.tolist() == expected.tolist()
    assert isinstance(q.log_gain, nn.Parameter) and q.log_gain.requires_grad


def test_a_loaded_learned_scale_is_not_started_again():
    trained = st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    trained(torch.randn(8))
    assert set(trained.state_dict()) == {"start", "log_gain", "initialized"}
    fresh = st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    fresh.load_state_dict(trained.state_dict())
    fresh(torch.randn(8) * 100)
    assert fresh.alpha.item() == trained.alpha.item()
    copied = copy.deepcopy(trained)
    copied(torch.randn(8) * 100)
    assert copied.alpha.item() == trained.alpha.item()


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_a_learned_scale_that_is_not_positive_and_finite_is_refused(bad):
    q = st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=3)
    q(torch.randn(2, 3))  # a good scale, checked and trusted
    with torch.no_grad():
        q.start[1] = bad
    message = bad_scale_message("the learned scales of Quantize", 1, bad)
    with pytest.raises(ValueError, match="Load or assign positive scales") as error:
        q(torch.randn(2, 3))
    assert str(error.value).startswith(message)
    with torch.no_grad():
        q.start[1] = 0.5
    assert torch.isin(q(torch.randn(2, 3)), q.alpha.detach() * torch.tensor([[-1.0], [1.0]])).all()


def test_a_step_moves_a_learned_scale_by_a_factor_and_never_past_zero():
    q = st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    q(torch.full((4,), 0.5))  # starts alpha at 0.5
    optimizer = torch.optim.SGD(q.parameters(), lr=1.0)
    q(torch.full((4,), 3.0)).sum().backward()  # outside the range: dy/dalpha = 4 * v = 4
    optimizer.step()  # trained directly, alpha would be 0.5 - 4 < 0
    assert q.alpha.item() == pytest.approx(0.5 * math.exp(-0.5 * 4))


def test_a_step_that_overflows_a_learned_scale_is_refused_at_the_next_forward():
    q = st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    q(torch.full((4,), 0.5))
    optimizer = torch.optim.SGD(q.parameters(), lr=1e3)
    q(torch.full((4,), 3.0)).sum().backward()
    optimizer.step()  # log_gain = -2000: exp underflows, alpha = 0
    assert q.alpha.item() == 0
    with pytest.raises(ValueError, match=r"hold 1 entry that is not finite and > 0"):
        q(torch.ones(4))


# ----- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"method": "gumbel"}, ValueError, "not available in snapset.torch; its methods: 'ste'"),
        ({"method": "flip"}, ValueError, "not available"),
        ({"method": "nearest"}, ValueError, "Unknown method 'nearest'"),
        ({"estimator": "tanh"}, ValueError, "Unknown estimator 'tanh'"),
        ({"scale": "token", "scale_mode": "learned"}, ValueError, "no parameter can hold"),
        ({"scale": "row"}, ValueError, "Unknown scale 'row'"),
        ({"scale": -1.0}, ValueError, "not finite and > 0"),
        ({"scale": "channel", "scale_mode": "learned"}, ValueError, "pass num_features"),
        ({"scale": "tensor", "num_features": 4}, ValueError, "applies only with"),
        (
            {"scale": "channel", "scale_mode": "learned", "num_features": 0},
            ValueError,
            "Invalid num_features: 0",
        ),
        ({"feature_axis": 1.0}, TypeError, "Invalid feature_axis"),
    ],
)
def test_options_are_checked_when_made(options, error, match):
    with pytest.raises(error, match=match):
        st.Quantize(snapset.Sign(), **options)


def test_the_input_must_fit_the_feature_axis_and_count():
    q = st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=4)
    with pytest.raises(ValueError, match=r"num_features=4 .* has 3; pass"):
        q(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"feature_axis=2 is not an axis of the input"):
        st.Quantize(snapset.Sign(), scale="token", feature_axis=2)(torch.ones(2, 3))
    conv_input = torch.randn(2, 4, 5, 5)
    per_channel = st.Quantize(snapset.Sign(), scale="channel", feature_axis=1)(conv_input)
    peak = conv_input.abs().amax((0, 2, 3), keepdim=True)
    assert torch.equal(per_channel.abs(), peak.expand_as(conv_input))


def test_repr_names_the_options():
    assert repr(st.Quantize(snapset.Sign(), "stochastic", scale=0.5)) == (
        "Quantize(\n  method='stochastic', scale=0.5\n  (rounding): StochasticRounding("
        "ValueSet([-1, 1]), estimator='clip', latent_range=0.1)\n)"
    )
    assert "scale='token', scale_mode='absmax', feature_axis=-1\n" in repr(
        st.Quantize(INT8, scale="token")
    )


# ----- input quantizers on a model ----------------------------------------------------------


def binary_net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
    )
    # first and last layers in float, as binary networks usually keep them
    return st.constrain_(model, snapset.Sign(), filter_fn=lambda m, name: name == "2")


def test_quantize_inputs_puts_a_copy_before_each_constrained_layer():
    model = binary_net()
    template = st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned")
    assert st.quantize_inputs_(model, template) is model
    assert [name for name, _ in st.input_quantizers(model)] == ["2"]
    q = model[2].input_quantizer
    assert q is not template and q.log_gain is not template.log_gain
    assert "(input_quantizer): Quantize(" in repr(model)
    names = {f"2.input_quantizer.{part}" for part in ("start", "log_gain", "initialized")}
    assert names <= set(model.state_dict())
    model.train()(torch.randn(16, 6))  # starts the learned scale
    model.eval()
    x = torch.randn(5, 6)
    hidden = model[1](model[0](x))
    quantized = nn.functional.linear(q(hidden), model[2].weight, model[2].bias)
    assert torch.equal(model(x), model[4](model[3](quantized)))


def test_the_choice_follows_modules_and_filter_fn():
    model = binary_net()
    sign = st.Quantize(snapset.Sign())
    st.quantize_inputs_(model, sign, modules=st.LINEAR_AND_CONV, filter_fn=lambda m, n: n != "0")
    assert [name for name, _ in st.input_quantizers(model)] == ["2", "4"]
    layers = [model[2].input_quantizer, model[4].input_quantizer]
    assert layers[0] is not layers[1]


def test_the_default_leaves_out_gf2_layers_which_take_bits():
    model = nn.Sequential(st.GF2Linear(4, 4), nn.Linear(4, 2))
    st.constrain(model[1], "weight", snapset.Sign())
    st.quantize_inputs_(model, st.Quantize(snapset.Sign()))
    assert [name for name, _ in st.input_quantizers(model)] == ["1"]


def test_each_copy_learns_its_own_scale():
    torch.manual_seed(0)
    model = st.constrain_(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), snapset.Ternary())
    template = st.Quantize(INT8, scale="tensor", scale_mode="learned")
    st.quantize_inputs_(model, template)
    model(torch.randn(3, 4) * 5)
    first, second = (q.alpha.item() for _, q in st.input_quantizers(model))
    assert first != second and template.alpha.item() == 1.0
    assert not template.initialized


def test_a_layer_that_already_has_one_is_refused_and_nothing_changes():
    model = binary_net()
    st.quantize_inputs_(model, st.Quantize(snapset.Sign()), filter_fn=lambda m, n: n == "2")
    before = dict(model.named_modules())
    with pytest.raises(ValueError, match=r"chose '2', which already has an attribute"):
        st.quantize_inputs_(model, st.Quantize(snapset.Sign()), modules=st.LINEAR_AND_CONV)
    assert dict(model.named_modules()) == before
    assert len(model[0]._forward_pre_hooks) == 0 and len(model[2]._forward_pre_hooks) == 1


def test_refusals_of_quantize_inputs():
    with pytest.raises(TypeError, match=r"takes a snapset\.torch\.Quantize, got Softsign"):
        st.quantize_inputs_(binary_net(), nn.Softsign())
    plain = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="chose no layer: no module of the model holds snapset"):
        st.quantize_inputs_(plain, st.Quantize(snapset.Sign()))
    assert not list(st.input_quantizers(plain)) and not plain[0]._forward_pre_hooks


def test_remove_input_quantizers_restores_the_layers():
    model = binary_net().eval()
    x = torch.randn(5, 6)
    plain = model(x)
    st.quantize_inputs_(model, st.Quantize(snapset.Sign()), modules=st.LINEAR_AND_CONV)
    assert not torch.equal(model(x), plain)
    assert st.remove_input_quantizers_(model) is model
    assert not list(st.input_quantizers(model))
    assert all(not m._forward_pre_hooks and not hasattr(m, "input_quantizer") for m in model)
    assert torch.equal(model(x), plain)
    st.quantize_inputs_(model, st.Quantize(snapset.Sign()))  # may be put back


def test_a_model_with_input_quantizers_deepcopies_and_moves():
    model = binary_net()
    st.quantize_inputs_(model, st.Quantize(INT8, scale="tensor", scale_mode="learned"))
    model.train()(torch.randn(4, 6))
    twin = copy.deepcopy(model)
    assert twin[2].input_quantizer is not model[2].input_quantizer
    model.eval(), twin.eval()
    x = torch.randn(4, 6)
    assert torch.equal(twin(x), model(x))
    with torch.no_grad():
        twin[2].input_quantizer.start.mul_(2)
    assert not torch.equal(twin(x), model(x))
    model.double()
    assert model[2].input_quantizer.alpha.dtype == torch.float64
    assert model(x.double()).dtype == torch.float64


def test_harden_keeps_the_input_quantizers_and_the_outputs_bit_for_bit():
    model = binary_net()
    st.quantize_inputs_(
        model, st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=8)
    )
    last = st.Quantize(INT8, scale="token")
    st.quantize_inputs_(model, last, modules=(nn.Linear,), filter_fn=lambda m, n: n == "4")
    model.train()(torch.randn(16, 6))
    model.eval()
    x = torch.randn(9, 6)
    expected = model(x)
    st.harden_(model)
    assert not list(st.named_constraints(model))
    assert [name for name, _ in st.input_quantizers(model)] == ["2", "4"]
    assert torch.equal(model(x), expected)


def test_a_state_dict_round_trip_carries_the_learned_scales():
    model = binary_net()
    st.quantize_inputs_(model, st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned"))
    model.train()(torch.randn(16, 6))
    other = binary_net()
    st.quantize_inputs_(other, st.Quantize(snapset.Sign(), scale="tensor", scale_mode="learned"))
    other.load_state_dict(model.state_dict())
    other.train()(torch.randn(16, 6) * 50)  # loaded as started: not started again
    assert other[2].input_quantizer.alpha.item() == model[2].input_quantizer.alpha.item()
    with pytest.raises(RuntimeError, match=r"input_quantizer\.start"):
        binary_net().load_state_dict(model.state_dict())


def test_the_input_must_come_positionally():
    layer = st.quantize_inputs_(
        st.constrain(nn.Linear(3, 2), "weight", snapset.Sign()), st.Quantize(snapset.Sign())
    )
    with pytest.raises(TypeError, match="pass the input positionally"):
        layer(input=torch.ones(3))


@pytest.mark.slow  # inductor compiles C++ on first use: tens of seconds on 2 cores
def test_a_compiled_model_with_quantizers_matches_eager():
    # One training step's forward and gradients, then eval. (Whole training runs are not
    # compared: a gradient summed in another order moves a scale by an ulp, which flips a code
    # near a threshold, and from there the runs part as any two discrete runs do.)
    model = binary_net()
    st.quantize_inputs_(model, st.Quantize(INT8, scale="tensor", scale_mode="learned"))
    last = st.Quantize(snapset.Sign())
    st.quantize_inputs_(model, last, modules=(nn.Linear,), filter_fn=lambda m, n: n == "4")
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin)
    x, target = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(2):  # the first call starts the learned scale, in the graph too
        outputs = [model(x), compiled(x)]
        assert torch.equal(twin[2].input_quantizer.alpha, model[2].input_quantizer.alpha)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-6, atol=1e-6)
        for net, y in zip((model, twin), outputs, strict=True):
            net.zero_grad()
            nn.functional.mse_loss(y, target).backward()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            # a sum of many terms that cancel (the scale's), added in another order
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)
    model.eval(), twin.eval()
    assert torch.equal(compiled(x), model(x))
