"""Values never leave the set (issue 13): flip parameters written by something other than a flip
optimizer, dtype moves, load_state_dict, tied weights, non-finite gradients, GF2Linear loads,
refused dtype moves, and a property test over random sequences of all of them."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from torch import nn

import snapset
import snapset.torch as st
from snapset._sets import round_to_dtype

TENTHS = snapset.ValueSet([0.1, 0.2, 0.3])  # no member is exact in binary: rounding shows


def flip_model(values: snapset.ValueSet = TENTHS) -> nn.Sequential:
    torch.manual_seed(0)
    return st.constrain_(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), values, "flip")


def table(values: snapset.ValueSet, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(round_to_dtype(values.values, str(dtype)), dtype=dtype)


def in_set(tensor: torch.Tensor, values: snapset.ValueSet) -> bool:
    return bool(torch.isin(tensor, table(values, tensor.dtype)).all())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True)


def stored(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


# ----- item 1: a flip parameter written by something other than a flip optimizer --------------


def test_an_ordinary_optimizer_is_refused_before_it_steps_a_flip_parameter() -> None:
    model = flip_model()
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    before = state(model)
    with pytest.raises(TypeError, match=r"Adam cannot step flip parameters '0.weight', "):
        adam.step()
    assert_state(model, before)
    assert not adam.state  # not even Adam's own state moved


def test_the_guard_sees_a_constraint_added_after_the_optimizer_stepped() -> None:
    layer = nn.Linear(3, 2)
    sgd = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(2, 3)).sum().backward()
    sgd.step()  # no flip parameter yet: the guard caches that
    st.constrain(layer, "weight", snapset.Sign(), "flip")
    layer(torch.randn(2, 3)).sum().backward()
    with pytest.raises(TypeError, match="SGD cannot step flip parameter"):
        sgd.step()


def test_routed_optimizers_and_flip_parameters_without_gradients_pass() -> None:
    model = flip_model()
    groups = st.param_groups(model)
    bop, adam = st.Bop(groups.flip, threshold=0.0, gamma=1.0), torch.optim.Adam(groups.other)
    model(torch.randn(3, 4)).sum().backward()
    bop.step()
    adam.step()
    frozen = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen.zero_grad()
    frozen.step()  # no gradients: nothing to step, nothing refused


def test_a_value_written_off_the_set_is_refused_by_every_eager_consumer() -> None:
    model = flip_model()
    with torch.no_grad():
        stored(model[1])[0, 1] = 0.15  # what Adam would do
    before = state(model)
    message = r"flip parameter '1.weight' holds 1 value outside ValueSet\(\[0.1, 0.2, 0.3\]\)"
    with pytest.raises(snapset.OutsideSetError, match=message + r" .*Something other than"):
        model(torch.randn(1, 4))
    with pytest.raises(snapset.OutsideSetError, match=message):
        st.check_values(model)
    with pytest.raises(snapset.OutsideSetError, match=message):
        st.harden_(model)
    assert_state(model, before)
    assert len(list(st.named_constraints(model))) == 2


def test_bop_never_steps_a_value_that_another_write_put_off_the_set() -> None:
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Sign(), "flip")
    bop = st.Bop([stored(layer)], threshold=0.0, gamma=1.0)
    with torch.no_grad():
        stored(layer).fill_(0.3)  # issue 13: Bop turned 0.3 into -0.7
    stored(layer).grad = torch.ones(2, 3)
    with pytest.raises(snapset.OutsideSetError, match="flip parameter 'weight' holds 6 values"):
        bop.step()
    assert torch.equal(stored(layer), torch.full((2, 3), 0.3))


def test_the_check_costs_nothing_while_only_snapset_writes() -> None:
    model = flip_model()
    constraint = model[0].parametrizations.weight[0]
    groups = st.param_groups(model)
    bop = st.Bop(groups.flip, threshold=0.0, gamma=1.0)
    model(torch.randn(3, 4)).sum().backward()
    bop.step()
    assert constraint._trusted == (
        torch.float32,
        stored(model[0]).data_ptr(),
        stored(model[0])._version,
    )


# ----- item 2: dtype moves re-project the values onto the new dtype's members -----------------


@pytest.mark.parametrize(
    "path",
    [
        (torch.float64,),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.float64, torch.bfloat16, torch.float32),
    ],
)
def test_a_dtype_move_leaves_the_new_dtypes_exact_values(path: tuple[torch.dtype, ...]) -> None:
    model = flip_model()
    codes = [c.codes(stored(m)) for m in model for c in m.parametrizations.weight]
    for dtype in path:
        model = model.to(dtype)
    model(torch.randn(1, 4, dtype=path[-1]))
    for module, before in zip(model, codes, strict=True):
        assert module.weight.dtype == path[-1]
        assert torch.equal(module.weight, table(TENTHS, path[-1])[before.long()])


def test_values_of_a_lower_precision_are_not_taken_for_members() -> None:
    model = flip_model().half().float()
    with torch.no_grad():
        stored(model[0])[0, 0] = 0.10001  # rounds to float16's 0.1, but is not float16's
    with pytest.raises(snapset.OutsideSetError, match=r"0\.10001"):
        model(torch.randn(1, 4))


# ----- item 3: load_state_dict -------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.3, float("nan"), 7.0])
def test_a_state_with_values_outside_the_set_is_refused_before_any_module_loads(
    bad: float,
) -> None:
    model = flip_model(snapset.Sign())
    incoming = {k: v.clone() for k, v in flip_model(snapset.Sign()).state_dict().items()}
    incoming["0.bias"] += 1.0
    incoming["1.parametrizations.weight.original"][0, 0] = bad
    before = state(model)
    with pytest.raises(snapset.OutsideSetError, match=r"'1.weight' holds 1 value outside"):
        model.load_state_dict(incoming)
    assert_state(model, before)  # the first module did not load either


def test_a_module_loaded_alone_refuses_too() -> None:
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Sign(), "flip")
    before = state(layer)
    incoming = state(layer) | {"parametrizations.weight.original": torch.full((2, 3), 0.3)}
    with pytest.raises(snapset.OutsideSetError, match="flip parameter 'weight' holds 6 values"):
        layer.load_state_dict(incoming)
    assert_state(layer, before)


def test_a_state_saved_in_another_dtype_loads_as_this_dtypes_members() -> None:
    half = flip_model().half()
    model = flip_model()
    incoming = half.state_dict()
    sent = dict(incoming)
    model.load_state_dict(incoming)
    assert all(incoming[k] is sent[k] for k in sent)  # the caller's state is left alone
    for module, other in zip(model, half, strict=True):
        assert module.weight.dtype == torch.float32
        codes = other.parametrizations.weight[0].codes(stored(other))
        assert torch.equal(module.weight, table(TENTHS, torch.float32)[codes.long()])


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_non_finite_latents_are_refused(method: str) -> None:
    model = st.constrain_(nn.Sequential(nn.Linear(3, 2)), snapset.Ternary(), method)
    incoming = state(model)
    incoming["0.parametrizations.weight.original"].view(-1)[0] = float("nan")
    before = state(model)
    with pytest.raises(ValueError, match=r"'0.weight' holds 1 non-finite \(NaN or inf\)"):
        model.load_state_dict(incoming)
    assert_state(model, before)


def test_harden_removes_the_load_checks() -> None:
    model = st.harden_(flip_model(snapset.Sign()))
    model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})  # plain now
    assert all(not m._load_state_dict_pre_hooks for m in model.modules())


# ----- item 4: tied weights ----------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embedding.weight


def test_constrain_underscore_refuses_tied_weights_naming_both() -> None:
    model = Tied()
    before = state(model)
    with pytest.raises(ValueError, match=r"chose 'head.weight', whose parameter is also "):
        st.constrain_(model, snapset.Sign())
    with pytest.raises(ValueError, match=r"'embedding.weight'.*nn.Parameter"):
        st.constrain_(model, snapset.Sign(), modules=(nn.Embedding,))
    assert_state(model, before)
    assert not list(st.named_constraints(model))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.weight = self.inner.weight


def test_constrain_refuses_a_tie_inside_the_module() -> None:
    with pytest.raises(ValueError, match=r"chose 'weight', whose parameter is also 'inner.weight'"):
        st.constrain(Twice(), "weight", snapset.Sign())


def test_a_parameter_already_stored_by_another_constraint_is_refused() -> None:
    model = Tied()
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())  # untied
    st.constrain(model.embedding, "weight", snapset.Sign())
    model.head.weight = stored(model.embedding)  # tied to the latent itself
    with pytest.raises(ValueError, match="the stored tensor of a ste constraint"):
        st.constrain(model.head, "weight", snapset.Sign())


# ----- item 5: non-finite gradients of latents -----------------------------------------------


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_non_finite_gradient_entries_are_zeroed_counted_and_reported(method: str) -> None:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Ternary(), method)
    adam = torch.optim.Adam(layer.parameters(), lr=0.01)
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")  # one input entry: NaN in one column of the weight's gradient
    layer(x).sum().backward()
    bad = int((~stored(layer).grad.isfinite()).sum())
    with pytest.warns(RuntimeWarning, match=rf"snapset zeroed {bad} non-finite .* of 'weight'"):
        adam.step()
    assert bool(stored(layer).isfinite().all())
    assert layer.parametrizations.weight[0].nonfinite_gradients == bad


def test_finite_gradients_pass_untouched() -> None:
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Ternary())
    layer(torch.randn(4, 3)).sum().backward()
    grad = stored(layer).grad.clone()
    torch.optim.SGD(layer.parameters(), lr=0.0).step()
    assert torch.equal(stored(layer).grad, grad)
    assert layer.parametrizations.weight[0].nonfinite_gradients == 0


# ----- item 11: GF2Linear.load_state_dict checks before it hardens ----------------------------


@pytest.mark.parametrize("bad", [0.5, float("nan"), 2.0])
def test_gf2_refuses_a_weight_other_than_bits_and_keeps_its_logits(bad: float) -> None:
    layer = st.GF2Linear(3, 2)
    logits = layer.logits.detach().clone()
    with pytest.raises(snapset.OutsideSetError, match=r"GF2Linear weight 'weight' holds 1 value"):
        layer.load_state_dict({"weight": torch.tensor([[bad, 1.0, 0.0], [1.0, 0.0, 0.0]])})
    assert not layer.is_hard
    assert torch.equal(layer.logits, logits)


def test_gf2_refuses_non_finite_logits() -> None:
    layer = st.GF2Linear(3, 2)
    before = state(layer)
    incoming = {"parametrizations.weight.original": torch.full((2, 3), float("nan"))}
    with pytest.raises(ValueError, match="non-finite"):
        layer.load_state_dict(incoming)
    assert_state(layer, before)


# ----- item 12: a refused dtype move changes nothing ------------------------------------------


def test_a_refused_dtype_move_leaves_the_whole_model_as_it_was() -> None:
    model = nn.Sequential(nn.Embedding(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    st.constrain_(model, snapset.Sign(), filter_fn=lambda module, name: name == "1")
    st.constrain_(model, [1, 1.0001], filter_fn=lambda module, name: name == "2")
    before = state(model)
    tables = [c.table.clone() for _, c in st.named_constraints(model)]
    with pytest.raises(ValueError, match=r"cannot be told apart in torch.float16"):
        model.half()
    assert_state(model, before)  # the float embedding and the first constraint too
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for (_, constraint), old in zip(st.named_constraints(model), tables, strict=True):
        assert torch.equal(constraint.table, old)


def test_the_move_probe_follows_a_copy_and_leaves_with_harden() -> None:
    model = st.constrain_(nn.Sequential(nn.Linear(2, 2)), snapset.Sign())
    twin = copy.deepcopy(model)
    assert twin._apply.__self__ is twin
    assert twin.double()[0].weight.dtype == torch.float64
    assert "_apply" not in st.harden_(model).__dict__


# ----- item 19: a swapped Multiplier, and pickling ----------------------------------------------


def test_a_multiplier_with_swapped_arguments_names_the_order() -> None:
    with pytest.raises(TypeError, match=r"number of features first, then the values"):
        st.Multiplier([1, -1], 64)  # type: ignore[arg-type]


def test_pickling_a_constrained_model_says_what_to_do_and_deepcopy_works() -> None:
    model = flip_model()
    with pytest.raises(RuntimeError, match=r"snapset.torch.save\(model, path\)"):
        pickle.dumps(model)
    twin = copy.deepcopy(model)
    x = torch.randn(2, 4)
    assert torch.equal(twin(x), model(x))
    plain = pickle.loads(pickle.dumps(st.harden_(model)))
    assert torch.equal(plain(x), twin(x))


# ----- the property: no path leaves the set --------------------------------------------------

SETS = hst.lists(
    hst.sampled_from([v / 8 for v in range(-16, 17)] + [v / 10 for v in range(-9, 10)]),
    min_size=2,
    max_size=5,
    unique=True,
).map(snapset.ValueSet)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
ACTIONS = ["step", "adam_on_flip", "assign", "write_off", "load_good", "load_bad", "move"]


class Run:
    """One constrained model, the actions of the property, and its invariants."""

    def __init__(
        self, values: snapset.ValueSet, method: str, seed: int, compiled: bool = False
    ) -> None:
        torch.manual_seed(seed)
        self.values, self.method = values, method
        self.model = st.constrain_(nn.Sequential(nn.Linear(4, 3)), values, method)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.opt = self.optimizer()

    def optimizer(self) -> torch.optim.Optimizer:
        groups = st.param_groups(self.model)
        if self.method == "flip":
            return st.Bop(groups.flip, threshold=0.0, gamma=0.5)
        return torch.optim.Adam(groups.latent + groups.other, lr=0.05)

    @property
    def dtype(self) -> torch.dtype:
        return self.model[0].bias.dtype

    def check(self) -> None:
        """Every value the model shows or hardens to is a member of the set in its dtype."""
        self.model.eval()
        assert in_set(self.model[0].weight, self.values)
        self.model(torch.randn(2, 4, dtype=self.dtype))
        hard = st.harden_(copy.deepcopy(self.model))
        assert in_set(hard.state_dict()["0.weight"], self.values)
        self.model.train()

    def refused(self, call: object, error: type[Exception]) -> None:
        before = state(self.model)
        with pytest.raises(error):
            call()  # type: ignore[operator]
        assert_state(self.model, before)

    def act(self, action: str, draw: hst.DrawFn) -> None:
        model, stored_weight = self.model, stored(self.model[0])
        if action == "step":
            self.opt.zero_grad()
            self.forward(torch.randn(8, 4, dtype=self.dtype)).square().sum().backward()
            self.opt.step()
        elif action == "adam_on_flip" and self.method == "flip":
            adam = torch.optim.Adam(model.parameters())
            model(torch.randn(8, 4, dtype=self.dtype)).sum().backward()
            self.refused(adam.step, TypeError)
            self.opt.zero_grad()
        elif action == "assign":
            wanted = draw(hst.lists(hst.floats(-3, 3), min_size=12, max_size=12))
            model[0].weight = torch.tensor(wanted, dtype=self.dtype).view(3, 4)
        elif action == "write_off" and self.method == "flip":
            keep = stored_weight.detach().clone()
            with torch.no_grad():
                stored_weight.view(-1)[draw(hst.integers(0, 11))] = torch.nan
            self.refused(lambda: model(torch.randn(1, 4, dtype=self.dtype)), ValueError)
            self.refused(lambda: st.harden_(model), ValueError)
            with torch.no_grad():
                stored_weight.copy_(keep)
        elif action == "load_good":
            twin = Run(self.values, self.method, draw(hst.integers(0, 99))).model
            model.load_state_dict(twin.to(draw(hst.sampled_from(DTYPES[:2]))).state_dict())
        elif action == "load_bad":
            incoming = state(model)
            incoming["0.parametrizations.weight.original"].view(-1)[0] = draw(
                hst.sampled_from([float("nan"), float("inf")])
            )
            self.refused(lambda: model.load_state_dict(incoming), ValueError)
        elif action == "move":
            dtype = draw(hst.sampled_from(DTYPES))
            try:
                self.values.tables(str(dtype))
                if self.method != "flip":
                    self.values.tables(str(dtype), 0.1)
            except ValueError:
                self.refused(lambda: model.to(dtype), ValueError)
            else:
                model.to(dtype)
                self.opt = self.optimizer()  # torch's optimizers keep state in the old dtype


def run_property(data: hst.DataObject, compiled: bool) -> None:
    values = data.draw(SETS, label="values")
    method = data.draw(hst.sampled_from(["ste", "stochastic", "gumbel", "flip"]), label="method")
    if compiled:
        torch._dynamo.reset()
    run = Run(values, method, data.draw(hst.integers(0, 99)), compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Bop's and the latents' NaN reports
        for action in data.draw(hst.lists(hst.sampled_from(ACTIONS), max_size=8), label="acts"):
            run.act(action, data.draw)
            run.check()


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hst.data())
def test_no_path_leaves_the_set(data: hst.DataObject) -> None:
    run_property(data, compiled=False)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True)
@given(hst.data())
def test_no_path_leaves_the_set_at_length(data: hst.DataObject) -> None:
    run_property(data, compiled=False)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True)
@given(hst.data())
def test_no_path_leaves_the_set_under_compile(data: hst.DataObject) -> None:
    run_property(data, compiled=True)
