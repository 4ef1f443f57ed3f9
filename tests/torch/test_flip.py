"""The flip method: the stored tensor is the set value itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import snapset
import snapset.torch as st

SETS = [
    snapset.Binary(),
    snapset.Sign(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.3, 2.5, 7]),
]


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
