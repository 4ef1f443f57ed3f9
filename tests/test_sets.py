import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import snapset
from snapset import ValueSet

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
# Entries at least 1e-9 apart: closer neighbours may have no float between them (refused).
entries = finite.map(lambda v: round(v, 9))
value_sets = st.lists(entries, min_size=2, max_size=9, unique=True).map(ValueSet)


def test_design_example():
    vs = ValueSet([1, -1, 0.5, -0.5])
    assert vs.values == (-1.0, -0.5, 0.5, 1.0)
    assert len(vs) == 4
    assert vs.bits == 2
    assert snapset.Binary() == ValueSet([0, 1])
    assert snapset.Sign() == ValueSet([-1, 1])
    assert snapset.Ternary() == ValueSet([-1, 0, 1])


@pytest.mark.parametrize(("size", "bits"), [(2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4)])
def test_bits(size, bits):
    assert ValueSet(range(size)).bits == bits


def test_equality_and_hash_ignore_order_and_type():
    a, b = ValueSet([1, 0, -1]), ValueSet((-1.0, 0.0, np.float32(1.0)))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, snapset.Sign()}) == 2
    assert a != snapset.Sign()
    assert a != [-1, 0, 1]


def test_repr_round_trips():
    vs = ValueSet([0.25, -3, 7])
    assert repr(vs) == "ValueSet([-3, 0.25, 7])"
    assert eval(repr(vs), {"ValueSet": ValueSet}) == vs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1], "at least two values"),
        ([], "at least two values"),
        ([1, 1, 2], "distinct, got 1.0 more than once"),
        ([0, float("nan")], "finite, got nan"),
        ([0, float("inf")], "finite, got inf"),
        ([0, "1"], "real numbers, got '1'"),
        ([0, None], "real numbers, got None"),
        ([0, 1j], "real numbers"),
        ([True, False], "real numbers, got True"),
        ("01", "list of numbers"),
        (3, "list of numbers"),
        ([-1e308, 1e308], "overflows"),
        ([0, 5e-324], "too close to tell apart"),
    ],
)
def test_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        ValueSet(values)


@given(value_sets, st.lists(finite, min_size=1, max_size=50))
def test_projection_is_the_nearest_member(vs, xs):
    projected = vs.project(xs)
    assert vs.contains(projected).all()
    for x, p in zip(xs, projected, strict=True):
        assert abs(x - p) <= min(abs(x - v) for v in vs.values)


@given(value_sets, st.lists(finite, min_size=1, max_size=50))
def test_projection_is_idempotent_and_codes_agree(vs, xs):
    projected = vs.project(xs)
    assert np.array_equal(vs.project(projected), projected)
    assert np.array_equal(vs.decode(vs.encode(xs)), projected)
    assert np.array_equal(vs.encode(vs.values), np.arange(len(vs)))


@given(value_sets)
def test_tie_goes_to_the_larger_value(vs):
    for low, mid, high in zip(vs.values, vs.midpoints, vs.values[1:], strict=False):
        if abs(mid - low) == abs(high - mid):  # the midpoint is exact in float64
            assert vs.project([mid])[0] == high


def test_tie_rule_examples():
    assert snapset.Sign().project([0.0, -0.0]).tolist() == [1.0, 1.0]
    assert snapset.Binary().project([0.5]).tolist() == [1.0]
    assert snapset.Ternary().project([-0.5, 0.5]).tolist() == [0.0, 1.0]


@given(value_sets)
def test_latent_scale_maps_range_to_unit_interval(vs):
    latent = vs.to_latent(vs.values)
    assert math.isclose(latent[0], -1.0)
    assert math.isclose(latent[-1], 1.0)
    assert np.allclose(vs.from_latent(latent), vs.values, rtol=1e-12, atol=1e-9)


def test_decode_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2\]"):
        snapset.Ternary().decode([0, 3])


def test_encode_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        snapset.Sign().encode([0.0, float("nan")])
