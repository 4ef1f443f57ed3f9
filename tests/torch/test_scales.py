"""Scaled sets in the PyTorch front, beyond the forward: the optimizer guard on learned
scales, load_state_dict, dtype moves, Multiplier, input quantizers from constrain_, summary,
FlipTracker, param_groups and Bop, bad input, harden_, and BitNet b1.58's reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import snapset
import snapset.torch as st
from snapset.torch._constrain import hardened_scales, hardened_values
from snapset.torch._quantize import Quantize, input_quantizers

#: Every method with a learned scale, and the methods with a float latent with a statistic.
CASES = [(method, "learned") for method in ("ste", "stochastic", "gumbel", "flip")] + [
    (method, mode) for method in ("ste", "stochastic") for mode in ("absmean", "absmax")
]
GRANULARITIES = ["tensor", "channel", 4]


def scaled_model(method: str, scale: str | int, mode: str, seed: int = 0) -> nn.Sequential:
    """A convolution (weight (8, 4, 3)) and a linear layer (weight (8, 48)), both scaled."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8))
    return st.constrain_(model, snapset.Ternary(), method, scale=scale, scale_mode=mode)


def inputs(seed: int = 1) -> Tensor:
    return torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(seed))


def state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def same_state(model: nn.Module, before: dict[str, Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


def constraint(layer: nn.Module) -> st.Constraint:
    return layer.parametrizations.weight[0]


def log_gain_of(layer: nn.Module) -> nn.Parameter:
    return constraint(layer).scale.log_gain


def stored(layer: nn.Module) -> nn.Parameter:
    return layer.parametrizations.weight.original


# ----- 1. the optimizer guard keeps learned scales finite and > 0 ----------------------------


def test_a_step_that_makes_a_scale_negative_is_undone_counted_and_said() -> None:
    layer = st.constrain(nn.Linear(6, 3), "weight", snapset.Sign(), scale="channel")
    scale = constraint(layer).scale
    sgd = torch.optim.SGD(layer.parameters(), lr=1e4)
    layer.weight.abs().sum().backward()  # d/d log_gain = 6 start per channel: the step makes it < 0
    before, latent_before = scale.alpha.detach().clone(), stored(layer).detach().clone()
    with pytest.warns(RuntimeWarning) as caught:
        sgd.step()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("After a step of SGD, the learned scales of 'weight' hold 3 ")
    assert "not finite and > 0" in message and "undone" in message
    assert torch.equal(scale.alpha, before)
    assert scale.clamped == 3
    assert not torch.equal(stored(layer), latent_before)  # the rest of the step happened
    # the guard's write is recorded: the next check is O(1) and the forward works
    key = [(t.dtype, t.data_ptr(), t._version) for t in (scale.start, scale.log_gain)]
    assert scale._trusted == tuple(key)
    assert torch.equal(layer.weight.abs(), before.expand(3, 6))


def test_only_the_bad_entries_are_restored_and_one_warning_covers_every_scale() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    st.constrain_(model, snapset.Sign(), "flip", scale="channel")
    scales = [constraint(layer).scale for layer in model]
    before = [scale.log_gain.detach().clone() for scale in scales]
    for scale in scales:  # channel 0 shrinks by 1e3, channel 1 grows; one NaN in the second
        scale.log_gain.grad = torch.tensor([[1e3], [-1.0]])
    scales[1].log_gain.grad[1] = float("nan")
    sgd = torch.optim.SGD([scale.log_gain for scale in scales], lr=1.0)
    with pytest.warns(RuntimeWarning, match="'0.weight', '1.weight' hold 3 entries"):
        sgd.step()
    assert torch.equal(scales[0].log_gain[0], before[0][0])
    assert scales[0].log_gain[1].item() == pytest.approx(before[0][1].item() + 1.0)
    assert torch.equal(scales[1].log_gain, before[1])
    assert [scale.clamped for scale in scales] == [1, 2]


def test_an_optimizer_without_scales_pays_nothing_and_a_good_step_says_nothing() -> None:
    layer = st.constrain(nn.Linear(4, 2), "weight", snapset.Ternary(), scale="tensor")
    latents = torch.optim.Adam([stored(layer), layer.bias], lr=1e-2)
    everything = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for optimizer in (latents, everything):
        layer(torch.randn(3, 4)).square().sum().backward()
        optimizer.step()  # warnings are errors here: a good step says nothing
    assert not latents._optimizer_step_post_hooks
    assert len(everything._optimizer_step_post_hooks) == 1
    assert constraint(layer).scale.clamped == 0


def test_a_copied_model_has_its_scales_guarded_after_param_groups() -> None:
    twin = copy.deepcopy(st.constrain(nn.Linear(4, 2), "weight", snapset.Sign(), scale="tensor"))
    groups = st.param_groups(twin)
    sgd = torch.optim.SGD(groups.other, lr=1e4)
    twin.weight.abs().sum().backward()
    with pytest.warns(RuntimeWarning, match="learned scales of 'weight'"):
        sgd.step()
    assert constraint(twin).scale.alpha.item() > 0


# ----- 2. load_state_dict -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), CASES)
@pytest.mark.parametrize("scale", GRANULARITIES, ids=str)
def test_state_dict_round_trip_is_bit_for_bit(method: str, mode: str, scale: str | int) -> None:
    model = scaled_model(method, scale, mode, seed=0)
    if mode == "learned":
        with torch.no_grad():  # scales of their own, not those a fresh model starts from
            for layer in (model[0], model[3]):
                log_gain_of(layer).add_(torch.rand_like(log_gain_of(layer)) - 0.5)
    fresh = scaled_model(method, scale, mode, seed=7)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(inputs()), model(inputs()))
    for a, b in ((model[0], fresh[0]), (model[3], fresh[3])):
        assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize(
    ("part", "bad", "match"),
    [
        ("start", lambda a: -a, "hold 8 entries that are not finite and > 0"),
        ("start", lambda a: a * 0, "not finite and > 0"),
        ("log_gain", lambda a: torch.full_like(a, float("nan")), "not finite and > 0"),
        ("log_gain", lambda a: torch.full_like(a, 1e4), "not finite and > 0"),
        ("start", lambda a: a[:4], r"have shape \(4, 1\), and this model's have \(8, 1\)"),
        (
            "start",
            lambda a: a.double() * 1e-60,
            r"8 entries that are not finite and > 0 \(for example 0.0\)",
        ),
    ],
    ids=["negative", "zero", "nan", "inf", "shape", "zero in float32"],
)
def test_bad_incoming_scales_are_refused_with_nothing_loaded(part: str, bad, match: str) -> None:
    source = scaled_model("ste", "channel", "learned", seed=0)
    target = scaled_model("ste", "channel", "learned", seed=3)
    incoming = source.state_dict()
    key = f"3.parametrizations.weight.0.scale.{part}"
    incoming[key] = bad(incoming[key])
    before = state(target)
    with pytest.raises(ValueError, match=match) as error:
        target.load_state_dict(incoming)
    assert "'3.parametrizations.weight.0.scale" in str(error.value)
    assert "nothing was loaded" in str(error.value)
    assert same_state(target, before)


# ----- 3. dtype moves ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), [("ste", "learned"), ("flip", "learned"), *CASES[4:]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_a_dtype_move_moves_the_scales_and_the_forward_stays_exact(
    method: str, mode: str, dtype: torch.dtype
) -> None:
    model = scaled_model(method, 4, mode).eval().to(dtype)
    for layer in (model[0], model[3]):
        c = constraint(layer)
        held = stored(layer)
        alpha = c.scales(held)
        assert layer.weight.dtype == alpha.dtype == dtype
        if mode == "learned":
            assert c.scale.log_gain.dtype == c.scale.start.dtype == dtype
        else:  # recomputed from the float weight as it is now held
            assert torch.equal(alpha, c.scale.statistic(held.detach()))
            if dtype == torch.float64:
                reference = c.scale.layout.statistic(held.detach().numpy(), mode, c.values)
                np.testing.assert_allclose(alpha.numpy(), reference, rtol=1e-12)
        assert torch.equal(layer.weight, c.scale.expand(c.hard(held), alpha))
    assert model(inputs().to(dtype)).dtype == dtype


def test_a_move_that_would_round_a_learned_scale_to_zero_is_refused() -> None:
    model = scaled_model("ste", "channel", "learned")
    with torch.no_grad():
        scale = constraint(model[3]).scale
        scale.assign(scale.start.index_fill(0, torch.tensor([2]), 1e-9))  # below float16's least
    before = state(model)
    with pytest.raises(ValueError, match=r"In torch.float16, the learned scales of '3.weight'"):
        model.half()
    assert same_state(model, before) and model[0].weight.dtype == torch.float32


# ----- 4. Multiplier -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), CASES)
def test_a_scaled_multiplier_multiplies_by_alpha_times_members(method: str, mode: str) -> None:
    layer = st.Multiplier(6, [1, -1, 0.5, -0.5], method, scale="channel", scale_mode=mode)
    c = layer.parametrizations.weight[0]
    assert c.scale.alpha is None if mode != "learned" else c.scale.alpha.shape == (6,)
    layer.eval()
    x = torch.randn(3, 6)
    members = c.hard(stored(layer))
    assert set(members.tolist()) <= {1.0, -1.0, 0.5, -0.5}
    assert torch.equal(layer(x), x * (members * c.scales(stored(layer))))


def test_a_multiplier_refuses_a_group_size_with_nothing_made() -> None:
    with pytest.raises(ValueError, match="groups the input axis, and a tensor of shape"):
        st.Multiplier(8, snapset.Sign(), scale=4)


# ----- 5. constrain_(..., inputs=Quantize) ---------------------------------------------------


def test_constrain_puts_a_copy_of_the_quantizer_before_each_chosen_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8))
    quantizer = Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
    st.constrain_(
        model,
        snapset.Ternary(),
        scale="tensor",
        scale_mode="absmean",
        inputs=quantizer,
        filter_fn=lambda module, name: name == "3",
    )
    assert [name for name, _ in st.named_constraints(model)] == ["3.weight"]
    assert [name for name, _ in input_quantizers(model)] == ["3"]
    copied = model[3].input_quantizer
    assert copied is not quantizer and isinstance(copied, Quantize)
    x = torch.randn(2, 48)
    linear = nn.functional.linear(copied(x), model[3].weight, model[3].bias)
    assert torch.equal(model[3](x), linear)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(inputs="sign"), TypeError, "takes a snapset.torch.Quantize"),
        (dict(scale=3), ValueError, "constrain_ chose '0'"),  # the Linear alone would take 3
        (dict(taken=True), ValueError, "already has an attribute 'input_quantizer'"),
    ],
    ids=["not a quantizer", "a weight refused", "a layer taken"],
)
def test_constrain_with_inputs_checks_everything_first(change, error, match: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8))
    if change.pop("taken", False):
        model[3].input_quantizer = nn.Identity()
    before, modules = state(model), [type(module) for module in model.modules()]
    options = {"scale": "tensor", "inputs": Quantize(snapset.Sign()), **change}
    with pytest.raises(error, match=match):
        st.constrain_(model, snapset.Sign(), **options)
    assert same_state(model, before)
    assert [type(module) for module in model.modules()] == modules
    assert not any(parametrize.is_parametrized(module) for module in model.modules())
    assert list(input_quantizers(model)) == []


# ----- 6. summary and FlipTracker ------------------------------------------------------------


def test_summary_counts_the_scales_as_gguf_counts_tq2_0() -> None:
    layer = nn.Linear(512, 2).half()
    st.constrain(layer, "weight", snapset.ValueSet([-2, -1, 1, 2]), scale=256)
    (bias, weight) = st.summary(layer).rows
    assert (bias.name, weight.name) == ("bias", "weight")  # alpha has no row of its own
    assert (weight.scale, weight.scale_count, weight.scale_bits) == ("256", 4, 16)
    assert weight.bits_per_weight == 2.0625  # 2 bits a code, a float16 scale per 256
    assert weight.packed_bytes == 1024 * 2 // 8 + 4 * 2


def test_summary_names_each_scale_and_keeps_it_after_harden() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2), nn.Linear(2, 2))
    st.constrain(model[0], "weight", snapset.Ternary(), scale="channel")
    st.constrain(model[1], "weight", snapset.Sign(), scale="tensor", scale_mode="absmean")
    text = str(st.summary(model))
    assert "| {-1, 0, 1} x channel " in text and "| {-1, 1} x tensor absmean " in text
    rows = {row.name: row for row in st.summary(model).rows}
    assert "0.parametrizations.weight.0.scale.log_gain" not in rows
    assert (rows["0.weight"].scale_count, rows["1.weight"].scale_count) == (4, 1)
    assert rows["0.weight"].bits_per_weight == pytest.approx(1.5862068965517242 + 4 * 32 / 32)
    assert rows["2.weight"].scale is None

    st.harden_(model)
    hardened = {row.name: row for row in st.summary(model).rows}
    for name in ("0.weight", "1.weight"):
        assert hardened[name].method == "hardened"
        assert hardened[name].scale == rows[name].scale
        assert hardened[name].bits_per_weight == rows[name].bits_per_weight
    with torch.no_grad():
        model[0].weight[0, 0] += 0.125  # no longer alpha times a member
    assert {row.name: row.method for row in st.summary(model).rows}["0.weight"] == "-"


@pytest.mark.parametrize(("method", "mode"), CASES)
def test_flip_tracker_follows_the_codes_of_a_scaled_set(method: str, mode: str) -> None:
    layer = st.constrain(
        nn.Linear(16, 8), "weight", snapset.Ternary(), method, scale=4, scale_mode=mode
    )
    c = constraint(layer)
    tracker = st.FlipTracker(layer)
    start = c.codes(stored(layer)).long()
    if c.scale.alpha is not None:
        with torch.no_grad():
            c.scale.log_gain.add_(1.0)  # a new scale moves no code
        tracker.update()
        assert tracker.flip_ratios()["weight"] == [0.0]
    with torch.no_grad():  # a third of the columns to another member
        members = c.hard(stored(layer)).clone()
        members[:, ::3] = torch.where(members[:, ::3] == 1, -1.0, 1.0)
        layer.weight = c.scale.expand(members, c.scales(stored(layer)))
    codes = c.codes(stored(layer)).long()
    changed = (codes != start).sum().item() / codes.numel()
    assert changed > 0
    tracker.update()
    assert tracker.flip_ratios()["weight"][-1] == changed
    histogram = tracker.histograms()["weight"][-1].tolist()
    assert histogram == torch.bincount(codes.flatten(), minlength=3).tolist()


# ----- 7. param_groups, and flip codes with a learned scale trained by Bop and Adam ----------


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel", "flip"])
def test_learned_scales_land_in_other(method: str) -> None:
    layer = st.constrain(nn.Linear(4, 2), "weight", snapset.Sign(), method, scale="channel")
    groups = st.param_groups(layer)
    assert [id(p) for p in groups.other] == [id(layer.bias), id(log_gain_of(layer))]
    assert stored(layer) in (groups.flip if method == "flip" else groups.latent)


def test_bop_flips_the_codes_and_adam_fits_the_channel_scales() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        planted_codes = torch.randint(0, 2, (4, 16)).float() * 2 - 1
        planted_scales = torch.tensor([[0.5], [1.0], [2.0], [0.25]])
        x = torch.randn(256, 16)
        y = x @ (planted_scales * planted_codes).T
        model = nn.Linear(16, 4, bias=False)
        st.constrain(model, "weight", snapset.Sign(), "flip", scale="channel")
        groups = st.param_groups(model)
        assert groups.flip == [stored(model)] and groups.other == [log_gain_of(model)]
        bop = st.Bop(groups.flip, threshold=1e-5, gamma=1e-2)
        adam = torch.optim.Adam(groups.latent + groups.other, lr=3e-2)
        tracker = st.FlipTracker(model)
        start = constraint(model).scale.alpha.detach().clone()
        for _ in range(200):
            loss = nn.functional.mse_loss(model(x), y)
            for optimizer in (bop, adam):
                optimizer.zero_grad()
            loss.backward()
            for optimizer in (bop, adam):
                optimizer.step()
            tracker.update()
            assert set(stored(model).unique().tolist()) <= {-1.0, 1.0}
    finally:
        torch.set_num_threads(threads)
    assert sum(tracker.flip_ratios()["weight"]) > 0  # Bop moved codes
    alpha = constraint(model).scale.alpha.detach()
    assert not torch.equal(alpha, start)  # Adam moved the scales
    assert torch.equal(stored(model).detach(), planted_codes)
    torch.testing.assert_close(alpha, planted_scales, rtol=2e-2, atol=0)
    assert loss.item() < 1e-3


# ----- 8. bad input --------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(scale_mode="absmean"), "scale_mode='absmean' needs a scale"),
    (dict(scale="row"), "Unknown scale 'row'"),
    (dict(scale=0), "Invalid scale 0"),
    (dict(scale=True), "Invalid scale True"),
    (dict(scale=2.5), "Invalid scale 2.5"),
    (dict(scale="tensor", scale_mode="median"), "Unknown scale_mode 'median'"),
    (dict(method="flip", scale="tensor", scale_mode="absmean"), "method 'flip' stores none"),
    (dict(method="gumbel", scale="channel", scale_mode="absmax"), "method 'gumbel' stores none"),
    (dict(scale=3), "in groups of 3, which does not divide them; .* such as 2"),
]


@pytest.mark.parametrize(("options", "match"), BAD_OPTIONS, ids=lambda o: str(o)[:40])
def test_constrain_refuses_bad_scales_with_the_module_unchanged(options, match: str) -> None:
    layer = nn.Linear(4, 3)
    before = state(layer)
    with pytest.raises(ValueError, match=match):
        st.constrain(layer, "weight", snapset.Ternary(), **options)
    assert same_state(layer, before) and type(layer) is nn.Linear


@pytest.mark.parametrize(("options", "match"), BAD_OPTIONS, ids=lambda o: str(o)[:40])
def test_constrain_all_refuses_bad_scales_with_the_model_unchanged(options, match: str) -> None:
    torch.manual_seed(0)
    # the Linear (48 inputs) would take a group of 3; the convolution (4 inputs) cannot
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8))
    before = state(model)
    with pytest.raises(ValueError, match=match):
        st.constrain_(model, snapset.Ternary(), **options)
    assert same_state(model, before)
    assert not any(parametrize.is_parametrized(module) for module in model.modules())


def test_a_group_size_on_a_weight_of_one_axis_is_refused() -> None:
    norm = nn.LayerNorm(8)
    before = state(norm)
    match = r"scale=4 groups the input axis, and a tensor of shape \(8,\) has none"
    with pytest.raises(ValueError, match=match):
        st.constrain(norm, "weight", snapset.Sign(), scale=4)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    with pytest.raises(ValueError, match="constrain_ chose '1': " + match):
        st.constrain_(model, snapset.Sign(), scale=4, modules=(nn.Linear, nn.LayerNorm))
    assert same_state(norm, before)
    assert not any(parametrize.is_parametrized(module) for module in model.modules())


# ----- 9. harden_ ----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), CASES)
@pytest.mark.parametrize("scale", GRANULARITIES, ids=str)
def test_harden_leaves_the_eval_forward_bit_for_bit(
    method: str, mode: str, scale: str | int
) -> None:
    model = scaled_model(method, scale, mode)
    if mode == "learned":
        with torch.no_grad():
            for layer in (model[0], model[3]):
                log_gain_of(layer).add_(torch.rand_like(log_gain_of(layer)) - 0.5)
    model.eval()
    expected = model(inputs())
    layers = (model[0], model[3])
    shown = [layer.weight.detach().clone() for layer in layers]
    records = [
        (constraint(layer).scale, constraint(layer).hard(stored(layer)).detach().clone())
        for layer in layers
    ]
    alphas = [constraint(layer).scales(stored(layer)).clone() for layer in layers]
    st.harden_(model)
    assert torch.equal(model(inputs()), expected)
    for layer, weight, (scale_module, members), alpha in zip(
        layers, shown, records, alphas, strict=True
    ):
        assert type(layer) in (nn.Conv1d, nn.Linear)
        assert torch.equal(layer.weight, weight)
        assert hardened_values(layer.weight) == snapset.Ternary()
        scale_back, alpha_back = hardened_scales(layer.weight)
        assert scale_back is scale_module and torch.equal(alpha_back, alpha)
        assert torch.equal(scale_back.expand(members, alpha_back), layer.weight)


# ----- 10. BitNet b1.58's absmean ternary ----------------------------------------------------


def test_absmean_ternary_per_tensor_is_bitnets_quantizer() -> None:
    """BitNet b1.58 (Ma et al., 2024): ``gamma = max(mean|W|, 1e-5)``, ``w = gamma *
    clamp(round(W / gamma), -1, 1)``, and the gradient reaches ``W`` straight through."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    latent = layer.weight.detach().clone()
    st.constrain(layer, "weight", snapset.Ternary(), scale="tensor", scale_mode="absmean")
    assert torch.equal(stored(layer), latent)  # the latent is the float weight itself
    assert torch.equal(layer.weight, bitnet(latent))

    g = torch.randn(32, 64)
    (layer.weight * g).sum().backward()  # a statistic's default estimator is BitNet's identity
    assert layer.parametrizations.weight[0].estimator == "identity"
    torch.testing.assert_close(stored(layer).grad, g, rtol=1e-6, atol=0)
    assert int(((latent / bitnet_scale(latent)).abs() > 1).sum()) > 0  # outside too


def test_a_statistic_scale_keeps_an_estimator_it_is_given() -> None:
    """Outside the range ``inward`` passes only the steps back in."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    latent = layer.weight.detach().clone()
    st.constrain(
        layer, "weight", snapset.Ternary(), estimator="inward", scale="tensor", scale_mode="absmean"
    )
    g = torch.randn(32, 64)
    (layer.weight * g).sum().backward()
    inside = (latent / bitnet_scale(latent)).abs() <= 1
    torch.testing.assert_close(stored(layer).grad[inside], g[inside], rtol=1e-6, atol=0)
    inward = torch.where(g * latent > 0, g, torch.zeros_like(g))
    torch.testing.assert_close(stored(layer).grad[~inside], inward[~inside], rtol=1e-6, atol=0)


def test_absmean_ternary_differs_from_bitnet_only_on_ties() -> None:
    """snapset's nearest member takes the larger one on a tie (``W / gamma = 0.5`` gives 1),
    where ``torch.round`` rounds half to even (0); ``-0.5`` gives 0 in both, and ``1.5`` 1
    after the clamp. Magnitudes in pairs that average 1, times a power of two, make ``mean|W|``
    and ``W / gamma`` exact."""
    torch.manual_seed(0)
    pairs = torch.tensor([[0.5, 1.5], [0.0, 2.0], [1.0, 1.0], [0.25, 1.75]]).repeat(64, 1)
    ratios = pairs.flatten()[torch.randperm(512)] * (torch.randint(0, 2, (512,)) * 2 - 1)
    latent = (ratios * 2.0**-5).reshape(16, 32)
    layer = st.constrain(
        nn.Linear(32, 16), "weight", snapset.Ternary(), scale="tensor", scale_mode="absmean"
    )
    layer.weight = latent  # a statistic scale stores the float weight as it is
    gamma = bitnet_scale(latent)
    assert gamma == 2.0**-5 and torch.equal(latent / gamma, ratios.reshape(16, 32))
    tie = latent / gamma == 0.5
    assert int(tie.sum()) > 0
    expected = torch.where(tie, gamma, bitnet(latent))
    assert torch.equal(layer.weight, expected)


def bitnet_scale(weight: Tensor) -> Tensor:
    return weight.abs().mean().clamp(min=1e-5)


def bitnet(weight: Tensor) -> Tensor:
    """BitNet b1.58's weight quantizer, as its authors wrote it."""
    gamma = bitnet_scale(weight)
    return (weight / gamma).round().clamp(-1, 1) * gamma


def test_absmean_with_the_identity_estimator_passes_every_gradient() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    st.constrain(
        layer,
        "weight",
        snapset.Ternary(),
        estimator="identity",
        scale="tensor",
        scale_mode="absmean",
    )
    g = torch.randn(32, 64)
    (layer.weight * g).sum().backward()
    torch.testing.assert_close(stored(layer).grad, g, rtol=1e-6, atol=0)
