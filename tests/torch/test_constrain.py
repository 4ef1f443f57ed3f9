"""constrain, constrain_ and harden_: lifecycle, exactness and bad input."""

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst
from torch import nn
from torch.nn.utils import parametrize

import snapset
import snapset.torch as st

METHODS = ["ste", "stochastic", "gumbel"]
SETS = [
    snapset.Sign(),
    snapset.Binary(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([-3, 0.25, 7, 8, 100]),
]
value_sets = hst.lists(
    hst.integers(-64, 64).map(lambda v: v / 8), min_size=2, max_size=6, unique=True
).map(snapset.ValueSet)


def in_set(tensor, values):
    return bool(torch.isin(tensor, torch.tensor(values.values, dtype=tensor.dtype)).all())


def uses_all(tensor, values):
    return tensor.unique().tolist() == list(values.values)


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14, 16), nn.Linear(16, 3)
    )


# ----- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_lifecycle_register_step_harden(method):
    values = snapset.Ternary()
    layer = nn.Linear(20, 10)
    param, count = layer.weight, sum(p.numel() for p in layer.parameters())
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)  # built before constrain

    st.constrain(layer, "weight", values, method)
    assert parametrize.is_parametrized(layer, "weight")
    assert layer.parametrizations.weight.original is param
    assert in_set(layer.weight, values) and uses_all(layer.weight, values)
    for _ in range(5):
        loss = layer(torch.randn(8, 20)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert in_set(layer.weight, values)

    layer.eval()
    x = torch.randn(4, 20)
    before = layer(x)
    st.harden_(layer)
    assert type(layer) is nn.Linear
    assert layer.weight is param
    assert sum(p.numel() for p in layer.parameters()) == count
    assert in_set(layer.weight, values)
    assert torch.equal(layer(x), before)
    assert set(layer.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("values", SETS, ids=repr)
def test_training_changes_weights_and_keeps_them_in_the_set(method, values):
    torch.manual_seed(1)
    model = st.constrain_(small_model(), values, method).eval()
    for module in (model[0], model[3], model[4]):
        assert uses_all(module.weight, values), module
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 2, 16), torch.randint(0, 3, (64,))
    start = {name: w.detach().clone() for name, w in model.named_parameters()}
    first = [model[3].weight.detach().clone()]
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for module in (model[0], model[3], model[4]):
            assert in_set(module.weight, values)
    for name, w in model.named_parameters():
        assert not torch.equal(w, start[name]), f"{name} did not change"
    model.eval()
    assert not torch.equal(model[3].weight, first[0])


@settings(max_examples=15, deadline=None)
@given(value_sets, hst.sampled_from(METHODS), hst.integers(1, 300))
def test_random_sets_use_every_value_and_stay_exact(values, method, fan_in):
    layer = st.constrain(nn.Linear(fan_in, 7), "weight", values, method)
    assert in_set(layer.weight, values)
    layer.weight.sum().backward()
    assert layer.parametrizations.weight.original.grad.abs().sum() > 0
    layer.eval()  # the deterministic values: random draws need not use every value
    assert uses_all(layer.weight, values)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_values_are_exact_in_the_parameters_dtype(method, dtype):
    values = snapset.ValueSet([0.1, -0.7, 1.3])  # none is exact in binary floating point
    layer = st.constrain(nn.Linear(30, 30, dtype=dtype), "weight", values, method)
    table = torch.tensor(values.values, dtype=torch.float64).to(dtype)
    for mode in (True, False):
        layer.train(mode)
        weight = layer.weight
        assert weight.dtype == dtype
        assert weight.unique().tolist() == table.tolist()


def test_moving_to_another_dtype_rebuilds_the_tables():
    layer = st.constrain(nn.Linear(8, 8), "weight", [0.1, 0.2, 0.3])
    before = layer.weight.detach().clone()
    layer.double()
    assert layer.weight.dtype == torch.float64
    assert layer.weight.unique().tolist() == [0.1, 0.2, 0.3]
    assert torch.equal(layer.weight.float(), before)


def test_moving_to_a_dtype_that_merges_values_is_refused():
    layer = st.constrain(nn.Linear(8, 8), "weight", [1.0, 1.0001])
    with pytest.raises(ValueError, match=r"cannot be told apart in torch.float16"):
        layer.half()


def test_state_dict_alone_fixes_the_projection():
    values = snapset.ValueSet([1, -1, 0.5, -0.5])
    for method in METHODS:
        trained = st.constrain_(small_model(), values, method)
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(0.03 * torch.randn_like(p))
        buffer = io.BytesIO()
        torch.save(trained.state_dict(), buffer)
        buffer.seek(0)
        fresh = st.constrain_(small_model(), values, method)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        trained.eval()
        fresh.eval()
        x = torch.randn(5, 2, 16)
        assert torch.equal(fresh(x), trained(x))


def test_state_dict_holds_only_the_stored_tensor():
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Ternary())
    assert set(layer.state_dict()) == {"bias", "parametrizations.weight.original"}


@pytest.mark.parametrize("method", METHODS)
def test_harden_is_bit_exact_on_a_whole_model(method):
    model = st.constrain_(small_model(), snapset.Ternary(), method).eval()
    x = torch.randn(7, 2, 16)
    before = model(x)
    params = [id(p) for p in model.parameters()]
    st.harden_(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [id(p) for p in model.parameters()] == params
    assert torch.equal(model(x), before)
    assert list(st.named_constraints(model)) == []


def test_harden_keeps_parametrizations_stacked_on_top():
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    layer = st.constrain(nn.Linear(4, 3), "weight", snapset.Sign())
    parametrize.register_parametrization(layer, "weight", Double())
    assert set(layer.weight.unique().tolist()) <= {-2.0, 2.0}
    st.harden_(layer)
    assert [type(p).__name__ for p in layer.parametrizations.weight] == ["Double"]
    assert set(layer.parametrizations.weight.original.unique().tolist()) == {-1.0, 1.0}


def test_gumbel_hardens_back_to_the_weight_shape_and_drops_a_stale_grad():
    layer = st.constrain(nn.Linear(5, 4), "weight", snapset.Ternary(), "gumbel")
    assert layer.parametrizations.weight.original.shape == (4, 5, 3)
    layer(torch.randn(2, 5)).sum().backward()
    param = layer.parametrizations.weight.original
    st.harden_(layer)
    assert layer.weight is param
    assert layer.weight.shape == (4, 5)
    assert layer.weight.grad is None


def test_assigning_set_values_stores_them_exactly():
    for method in METHODS:
        layer = st.constrain(nn.Linear(6, 4), "weight", [1, -1, 0.5, -0.5], method).eval()
        target = torch.tensor([1, -1, 0.5, -0.5]).repeat(4, 6)[:, :6]
        layer.weight = target
        assert torch.equal(layer.weight, target)


def test_nearest_init_keeps_values_on_the_sets_scale():
    layer = nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.9, -0.2, 0.3, 2.0]]))
    st.constrain(layer, "weight", snapset.Ternary(), init="nearest")
    assert layer.weight.tolist() == [[-1.0, 0.0, 0.0, 1.0]]


def test_set_temperature_reaches_every_gumbel_constraint():
    model = st.constrain_(small_model(), snapset.Sign(), "gumbel")
    assert st.set_temperature(model, 0.25) == 3
    assert {c.temperature for _, c in st.named_constraints(model)} == {0.25}
    with pytest.raises(ValueError, match="Invalid temperature"):
        st.set_temperature(model, 0.0)


def test_constrain_underscore_chooses_linear_and_conv_weights_by_default():
    model = st.constrain_(small_model(), snapset.Sign())
    assert [name for name, _ in st.named_constraints(model)] == [
        "0.weight",
        "3.weight",
        "4.weight",
    ]
    assert not parametrize.is_parametrized(model[0], "bias")


def test_constrain_underscore_filter_fn_keeps_first_and_last_in_float():
    model = st.constrain_(
        small_model(), snapset.Ternary(), filter_fn=lambda module, name: name == "3"
    )
    assert [name for name, _ in st.named_constraints(model)] == ["3.weight"]


# ----- bad input: a clear error and the model as it was ----------------------------------------


def snapshot(model):
    return type(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    kind, state = before
    assert type(model) is kind
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m: st.constrain(m, "weight", [0, 1], "stee"),
            ValueError,
            r"Unknown method 'stee'; valid methods: 'ste', 'stochastic', 'gumbel'",
        ),
        (
            lambda m: st.constrain(m, "wieght", [0, 1]),
            ValueError,
            r"Module 'Linear' has no parameter named 'wieght'; its parameters are "
            r"'weight', 'bias'",
        ),
        (lambda m: st.constrain(m, "weight", [1]), ValueError, "at least two values"),
        (
            lambda m: st.constrain(m, "weight", [0, 1], "gumbel", estimator="clip"),
            ValueError,
            r"Option 'estimator' does not apply to method 'gumbel'; its options are "
            r"'temperature', 'latent_range'",
        ),
        (
            lambda m: st.constrain(m, "weight", [0, 1], estimator="sigmoid"),
            ValueError,
            r"Unknown estimator 'sigmoid'; valid estimators: 'inward', 'clip', 'identity'",
        ),
        (
            lambda m: st.constrain(m, "weight", [0, 1], init="zeros"),
            ValueError,
            r"Unknown init 'zeros'",
        ),
        (
            lambda m: st.constrain(m.half(), "weight", [1, 1.0001]),
            ValueError,
            r"ValueSet\(\[1, 1.0001\]\) cannot be told apart in torch.float16: 1.0 and 1.0001",
        ),
        (
            lambda m: st.constrain(m, "weight", [0, 1e39]),
            ValueError,
            r"does not fit in torch.float32",
        ),
        (
            lambda m: st.constrain(m, "weight", [0, 1], "gumbel", temperature=-1),
            ValueError,
            r"Invalid temperature: -1",
        ),
    ],
)
def test_bad_input_is_refused_with_the_module_left_as_it_was(call, error, message):
    layer = nn.Linear(3, 2)
    before = snapshot(layer)
    with pytest.raises(error, match=message):
        call(layer)
    if layer.weight.dtype == torch.float16:
        before = (before[0], {k: v.half() for k, v in before[1].items()})
    assert_unchanged(layer, before)


def test_a_second_constrain_is_refused_and_says_how_to_remove_the_first():
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Sign())
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"already constrained \(ste, ValueSet\(\[-1, 1\]\)\)"):
        st.constrain(layer, "weight", snapset.Binary())
    with pytest.raises(ValueError, match=r"harden_\(module\).*remove_parametrizations"):
        st.constrain(layer, "weight", snapset.Binary())
    assert_unchanged(layer, before)


def test_non_floating_parameters_and_buffers_are_refused():
    module = nn.Module()
    module.codes = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    module.register_buffer("stats", torch.zeros(3))
    with pytest.raises(TypeError, match=r"'codes' of Module is torch.int64; snapset constrains"):
        st.constrain(module, "codes", snapset.Sign())
    with pytest.raises(TypeError, match=r"'stats' of Module is a buffer"):
        st.constrain(module, "stats", snapset.Sign())


def test_foreign_parametrization_underneath_is_refused():
    class Scale(nn.Module):
        def forward(self, x):
            return 3 * x

    layer = nn.Linear(3, 2)
    parametrize.register_parametrization(layer, "weight", Scale())
    with pytest.raises(ValueError, match=r"already has parametrizations \(Scale\)"):
        st.constrain(layer, "weight", snapset.Sign())


def test_constrain_underscore_is_all_or_nothing():
    model = small_model()
    st.constrain(model[4], "weight", snapset.Sign())
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"constrain_ chose '4': Parameter 'weight' of Linear"):
        st.constrain_(model, snapset.Ternary())
    assert_unchanged(model, before)
    assert not parametrize.is_parametrized(model[0])


def test_filter_fn_narrows_the_default_choice_instead_of_replacing_it():
    # issue 13, item 16: the README's filter_fn once chose the model itself and every ReLU
    model = st.constrain_(small_model(), snapset.Sign(), filter_fn=lambda m, n: n not in ("0",))
    assert [name for name, _ in st.named_constraints(model)] == ["3.weight", "4.weight"]


def test_modules_chooses_any_module_with_a_weight():
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2))
    everything = st.constrain_(model, snapset.Sign(), modules=(nn.Module,))
    assert [name for name, _ in st.named_constraints(everything)] == [
        "0.weight",
        "1.weight",
        "3.weight",
    ]


def test_deepcopy_keeps_constraints():
    model = st.constrain_(small_model(), snapset.Ternary()).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 2, 16)
    assert torch.equal(twin(x), model(x))
    assert [c.values for _, c in st.named_constraints(twin)] == [snapset.Ternary()] * 3


def test_hardening_a_deepcopy_leaves_the_original_constrained():
    # deepcopy shares torch's generated parametrized class between the two models
    model = st.constrain_(small_model(), snapset.Ternary()).eval()
    x = torch.randn(2, 2, 16)
    expected = model(x)
    twin = st.harden_(copy.deepcopy(model))
    assert torch.equal(twin(x), expected)
    assert torch.equal(model(x), expected)
    assert len(list(st.named_constraints(model))) == 3
