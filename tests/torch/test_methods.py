"""The methods' protocol (method, stores, hard, codes, right_inverse, value_shape) for every
method, GF2Linear's included, and the flip method: the stored tensor is the set value itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import snapset
import snapset.torch as st
from snapset import _spec
from snapset.torch._constrain import constraint_of

SETS = [
    snapset.Binary(),
    snapset.Sign(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.3, 2.5, 7]),
]
WIDE = snapset.ValueSet(range(300))  # more values than a byte counts
CASES = [(method, values) for method in st.METHODS for values in [*SETS, WIDE]]
CASES.append(("gf2", snapset.Binary()))
# bfloat16 (8 bits of mantissa) cannot tell 300 integers apart
ROUND_TRIPS = [
    (method, values, dtype)
    for method, values in CASES
    for dtype in (torch.float64, torch.bfloat16)
    if not (values is WIDE and dtype == torch.bfloat16)
]


def constrained(method: str, values: snapset.ValueSet, dtype: torch.dtype = torch.float32):
    """A layer whose weight is constrained by ``method``, its constraint and its stored tensor,
    the stored tensor set at random (ties included) so that every code shows up."""
    torch.manual_seed(0)
    if method == "gf2":
        layer: nn.Module = st.GF2Linear(40, 30, dtype=dtype)
    else:
        layer = st.constrain(nn.Linear(40, 30, dtype=dtype), "weight", values, method)
    constraint = layer.parametrizations.weight[0]
    stored = layer.parametrizations.weight.original
    with torch.no_grad():
        if constraint.stores == "latent":
            stored.normal_(0.0, 0.07)
            stored.view(-1)[: len(values) - 1] = constraint.thresholds  # ties: on a boundary
        elif constraint.stores == "logits":
            stored.normal_(0.0, 3.0).round_()  # rounded: many ties between logits, and zeros
        else:
            layer.weight = torch.randn(30, 40, dtype=dtype) * values.half_range + values.center
    return layer, constraint, stored


def expected_code_dtype(values: snapset.ValueSet) -> torch.dtype:
    return torch.bool if len(values) == 2 else torch.uint8 if len(values) <= 256 else torch.int16


def test_each_method_names_itself_and_what_it_stores_as_the_spec_does() -> None:
    assert list(st.METHODS) == list(_spec.METHODS)
    for name, cls in st.METHODS.items():
        assert cls.spec is _spec.METHODS[name]
        constraint = cls(snapset.Sign(), torch.empty(0))
        assert (constraint.method, constraint.stores) == (name, _spec.METHODS[name].stores)
    gf2 = st.GF2Linear(3, 2).parametrizations.weight[0]
    assert (gf2.method, gf2.stores, gf2.values) == ("gf2", "logits", snapset.Binary())
    assert "gf2" not in st.METHODS  # GF2Linear's own, not a method of constrain()


@pytest.mark.parametrize(("method", "values"), CASES, ids=lambda case: repr(case))
def test_hard_and_codes_agree_in_the_values_shape(method: str, values: snapset.ValueSet) -> None:
    layer, constraint, stored = constrained(method, values)
    hard = constraint.hard(stored)
    codes = constraint.codes(stored)
    assert codes.dtype == expected_code_dtype(values)
    assert hard.shape == codes.shape == constraint.value_shape(stored.shape) == (30, 40)
    table = torch.tensor(values.values, dtype=hard.dtype)
    assert torch.equal(table[codes.long()], hard)
    assert torch.equal(constraint.codes(stored, out=torch.empty_like(codes)), codes)
    assert not codes.requires_grad
    layer.eval()
    assert torch.equal(layer.weight, hard)  # eval shows the hard values


@pytest.mark.parametrize(("method", "values", "dtype"), ROUND_TRIPS, ids=lambda case: repr(case))
def test_right_inverse_round_trips_every_value_exactly(
    method: str, values: snapset.ValueSet, dtype: torch.dtype
) -> None:
    _, constraint, stored = constrained(method, values, dtype)
    table = torch.tensor(values.values, dtype=torch.float64).to(dtype)
    value = table[torch.arange(30 * 40) % len(values)].reshape(30, 40)
    new = constraint.right_inverse(value)
    assert new.shape == stored.shape and new.dtype == dtype
    assert constraint.value_shape(new.shape) == value.shape
    assert torch.equal(constraint.hard(new), value)


@pytest.mark.parametrize("method", [*st.METHODS, "gf2"])
def test_every_method_records_its_stored_tensor_until_hardened(method: str) -> None:
    layer, constraint, stored = constrained(method, snapset.Binary())
    assert constraint_of(stored) is constraint
    assert constraint_of(copy.deepcopy(layer).parametrizations.weight.original) is None
    st.harden_(layer)
    assert constraint_of(stored) is None


def test_bop_refuses_a_constrained_parameter_of_another_method() -> None:
    layer = st.constrain(nn.Linear(3, 2), "weight", snapset.Sign(), "ste")
    with pytest.raises(ValueError, match="not flip-constrained"):
        st.Bop([layer.parametrizations.weight.original])


# ----- flip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_fresh_layer_uses_every_value_exactly(values: snapset.ValueSet) -> None:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(8, 16), "weight", values, method="flip")
    assert torch.equal(layer.weight.unique(), torch.tensor(values.values, dtype=torch.float32))
    # The stored tensor is the weight itself: no latent, no copy.
    assert torch.equal(layer.parametrizations.weight.original, layer.weight)
    counts = torch.stack([(layer.weight == v).sum() for v in values])
    assert int(counts.max() - counts.min()) <= 1  # spread: every value equally used


def test_gradient_reaches_stored_tensor_unchanged() -> None:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(5, 3), "weight", snapset.Sign(), method="flip")
    plain = nn.Linear(5, 3)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    x = torch.randn(7, 5)
    layer(x).square().sum().backward()
    plain(x).square().sum().backward()
    stored = layer.parametrizations.weight.original
    assert stored.grad is not None and plain.weight.grad is not None
    assert torch.equal(stored.grad, plain.weight.grad)


def test_assignment_stores_nearest_value_ties_up() -> None:
    layer = st.Multiplier(5, snapset.Binary(), method="flip")
    layer.weight = torch.tensor([0.5, 0.49, -3.0, 7.0, 1.0])
    assert layer.weight.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="NaN"):
        layer.weight = torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0])


def test_dtype_move_keeps_values_and_set() -> None:
    values = snapset.ValueSet([0, 0.1, 0.3])
    layer = st.Multiplier(6, values, method="flip").to(torch.float64)
    assert layer.weight.dtype == torch.float64
    layer.weight = torch.tensor([0.1, 0.2, 0.19, 5.0, -1.0, 0.3], dtype=torch.float64)
    assert layer.weight.tolist() == [0.1, 0.3, 0.1, 0.3, 0.0, 0.3]


def test_lifecycle_constrain_step_harden() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    param = layer.weight
    count = sum(p.numel() for p in layer.parameters())
    st.constrain(layer, "weight", snapset.Ternary(), method="flip")
    assert parametrize.is_parametrized(layer, "weight")
    assert layer.parametrizations.weight.original is param
    opt = st.Bop([param], threshold=1e-3, gamma=0.5)
    before = layer.weight.clone()
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(16, 6)).sum().backward()
        opt.step()
        assert set(layer.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert not torch.equal(layer.weight, before)
    values = layer.weight.clone()
    st.harden_(layer)
    assert type(layer) is nn.Linear
    assert layer.weight is param
    assert sum(p.numel() for p in layer.parameters()) == count
    assert torch.equal(layer.weight, values)
    with pytest.raises(ValueError, match="not flip-constrained"):
        st.Bop([param])


def test_copied_model_is_registered_by_param_groups() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    st.constrain(model[0], "weight", snapset.Binary(), method="flip")
    twin = copy.deepcopy(model)
    stored = twin[0].parametrizations.weight.original
    with pytest.raises(ValueError, match="copied or unpickled"):
        st.Bop([stored])
    groups = st.param_groups(twin)
    assert groups.flip == [stored]
    st.Bop(groups.flip)  # accepted now


def test_flip_is_a_method_of_constrain_() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    st.constrain_(model, snapset.Sign(), method="flip")
    assert [(name, c.method) for name, c in st.named_constraints(model)] == [
        ("0.weight", "flip"),
        ("2.weight", "flip"),
    ]
    with pytest.raises(ValueError, match="does not apply to method 'flip'"):
        st.constrain(nn.Linear(2, 2), "weight", snapset.Sign(), method="flip", estimator="clip")
