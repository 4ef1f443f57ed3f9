import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import snapset
from snapset import ValueSet
from snapset._sets import round_to_dtype

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
        ([10**400, 1], "finite, got <an integer of 1329 bits>"),
        ([-(10**6000), 1], "finite, got <an integer of 19932 bits>"),
    ],
)
def test_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        ValueSet(values)


def test_a_hostile_list_is_refused_in_linear_time():
    # 200,000 distinct values and one repeat: a quadratic check would take hours
    hostile = [*range(200_000), 7]
    with pytest.raises(ValueError, match=r"7.0 more than once in \[0, 1, .*\(200001 entries\)\]"):
        ValueSet(hostile)


def test_accepts_an_array_or_tensor_of_values():
    torch = pytest.importorskip("torch")
    assert ValueSet(np.array([1, -1])) == ValueSet(torch.tensor([-1.0, 1.0])) == snapset.Sign()


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


# ----- the spread init ------------------------------------------------------------------------


def slow_spread(x, vs):
    """The definition, entry by entry: the entry of rank r (ties in index order) sits at the
    fraction (r + 0.5) / n of the way through the k bins, and inside its bin at the same
    fraction of the bin's width."""
    flat = list(np.asarray(x, dtype=np.float64).reshape(-1))
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))
    edges = vs.spread_edges
    out = [0.0] * len(flat)
    for rank, i in enumerate(order):
        position = (rank + 0.5) * (len(vs) / len(flat))
        b = min(math.floor(position), len(vs) - 1)
        out[i] = edges[b] + (position - b) * (edges[b + 1] - edges[b])
    return np.asarray(out).reshape(np.shape(x))


@given(value_sets, st.lists(finite, min_size=1, max_size=60))
def test_spread_matches_its_definition_bit_for_bit(vs, xs):
    assert vs.spread(xs).tolist() == slow_spread(xs, vs).tolist()


@pytest.mark.parametrize("values", [[0, 1], [-1, 0, 1], [1, -1, 0.5, -0.5], [0.1, 0.2, 0.3]])
def test_spread_uses_every_value_equally_and_keeps_the_order(values):
    vs = ValueSet(values)
    x = np.random.default_rng(0).normal(0, 0.01, size=(6, 10))  # far narrower than the set
    spread = vs.spread(x)
    assert spread.shape == x.shape
    counts = np.bincount(vs.encode(spread).reshape(-1), minlength=len(vs))
    assert counts.max() - counts.min() <= 1
    assert (np.argsort(spread, axis=None) == np.argsort(x, axis=None)).all()


def test_spread_breaks_ties_by_index():
    assert snapset.Sign().spread([0.0, 0.0, 0.0, 0.0]).tolist() == [-0.75, -0.25, 0.25, 0.75]


# ----- tables in a dtype ----------------------------------------------------------------------


def test_tables_hold_the_values_and_boundaries_as_the_dtype_rounds_them():
    vs = ValueSet([0.1, 0.2, 0.3])
    t = vs.tables("float32", latent_range=0.1)
    assert t.values.tolist() == np.float32([0.1, 0.2, 0.3]).astype(np.float64).tolist()
    assert t.values.dtype == np.float64
    assert t.midpoints.tolist() == np.float32([0.15, 0.25]).astype(np.float64).tolist()
    assert t.levels.tolist() == np.float32([-0.1, 0.0, 0.1]).astype(np.float64).tolist()
    assert t.scale == pytest.approx(1.0)
    assert t.dtype == "float32"


def test_tables_without_a_latent_range_have_no_latent_tables():
    t = snapset.Ternary().tables("float64")
    assert t.levels is None
    assert t.thresholds is None
    with pytest.raises(ValueError, match="without a latent range"):
        _ = t.scale


def test_tables_are_rounded_once_and_name_the_dtype_as_the_front_spells_it():
    values = ValueSet([0, 1 + 2**-8 + 2**-30])
    t = values.tables("torch.bfloat16", latent_range=0.1)
    assert t.values.tolist() == [0.0, 1 + 2**-7]  # through float32, it would be 1.0
    assert (t.dtype, t.latent_range, t.value_set) == ("torch.bfloat16", 0.1, values)
    with pytest.raises(ValueError, match=r"cannot be told apart in torch\.float16: 1\.0 and"):
        ValueSet([1, 1.0001]).tables("torch.float16")


@pytest.mark.parametrize(
    ("values", "dtype", "latent_range", "message"),
    [
        ([1, 1.0001], "float16", None, r"cannot be told apart in float16: 1\.0 and 1\.0001"),
        ([0, 1e39], "float32", None, r"does not fit in float32: a value overflows"),
        # the values are apart in float16 but the latent levels, scaled by 1e-9, are not
        ([0, 1, 2], "float16", 1e-9, r"cannot be told apart in float16: 0\.0 and 1\.0"),
    ],
)
def test_tables_refuse_a_dtype_that_merges_or_overflows(values, dtype, latent_range, message):
    with pytest.raises(ValueError, match=message):
        ValueSet(values).tables(dtype, latent_range=latent_range)


@pytest.mark.parametrize("dtype", ["int32", "torch.int8", "float8_e4m3fn", "complex64"])
def test_tables_refuse_a_dtype_that_is_not_a_float_snapset_keeps(dtype):
    with pytest.raises(TypeError, match=rf"floating-point weights only \(.*\), got dtype {dtype}"):
        snapset.Sign().tables(dtype)


# ----- rounding to a float dtype, once ---------------------------------------------------------

FORMATS = {  # stored significand bits, exponent of the smallest normal, largest finite
    "float16": (10, -14, 65504.0),
    "bfloat16": (7, -126, float.fromhex("0x1.fep127")),
    "float32": (23, -126, float.fromhex("0x1.fffffep127")),
    "float64": (52, -1022, float.fromhex("0x1.fffffffffffffp1023")),
}


def hard_numbers(dtype, n=4000, seed=0):
    """float64 numbers that are hard to round to ``dtype``: random ones over its whole range,
    exact halfway points between its neighbours (ties), a hair either side of them,
    subnormals, and numbers around its largest finite one."""
    mantissa_bits, minexp, largest = FORMATS[dtype]
    rng = np.random.default_rng(seed)
    maxexp = math.frexp(largest)[1]  # 2**maxexp is the first power of two beyond largest
    exponents = rng.integers(minexp - mantissa_bits - 2, maxexp, n)
    random = rng.uniform(-2, 2, n) * np.exp2(exponents.astype(np.float64))
    # A neighbour's gap, from its exponent; plus half of it, a tie (or near one, where the
    # numbers are below what float64 resolves, which only makes more plain cases).
    _, exponent = np.frexp(random)
    gap = np.exp2(np.maximum(exponent - 1, minexp) - mantissa_bits)
    grid = np.round(random / gap) * gap
    halfway = grid + gap / 2
    hair = np.abs(halfway) * 2.0**-40
    with np.errstate(over="ignore"):
        edges = [largest, -largest, largest * (1 + 2.0**-30), largest * 1.5, 0.0, -0.0]
    return np.concatenate([random, halfway, halfway + hair, halfway - hair, edges])


@pytest.mark.parametrize(
    ("dtype", "narrower"), [("float16", True), ("float32", True), ("float64", False)]
)
def test_rounding_is_numpys_for_the_dtypes_numpy_has(dtype, narrower):
    numbers = hard_numbers(dtype)
    with np.errstate(over="ignore"):
        expected = numbers.astype(dtype).astype(np.float64)
    assert ((expected != numbers).sum() > 1000) == narrower  # most numbers round, ties included
    np.testing.assert_array_equal(round_to_dtype(numbers, dtype), expected)


def test_rounding_to_bfloat16_finds_the_nearest_one_once():
    # Every finite bfloat16 (a float32 whose low 16 bits are zero), sorted: the nearest one of
    # each number is found by search, a tie going to the one with an even last bit.
    bits = np.arange(2**16, dtype=np.uint32)
    bits = bits[bits & 0x7F80 != 0x7F80]  # the largest exponent holds infinities and NaNs
    finite = (bits << 16).view(np.float32).astype(np.float64)
    order = np.argsort(finite, kind="stable")
    grid, grid_bits = finite[order], bits[order]
    keep = np.concatenate([[True], np.diff(grid) > 0])  # -0.0 and 0.0: one entry
    grid, grid_bits = grid[keep], grid_bits[keep]
    numbers = hard_numbers("bfloat16")
    numbers = numbers[np.abs(numbers) <= grid[-1]]  # overflow is tested for float16 above
    above = np.clip(np.searchsorted(grid, numbers), 1, len(grid) - 1)
    low, high = grid[above - 1], grid[above]
    to_high = (numbers - low > high - numbers) | (
        (numbers - low == high - numbers) & (grid_bits[above] % 2 == 0)
    )
    expected = np.where(to_high, high, low)
    expected = np.where(numbers == 0, numbers, expected)  # keeps the sign of zero
    np.testing.assert_array_equal(round_to_dtype(numbers, "bfloat16"), expected)
    # A cast through float32 rounds twice, and wrongly here: the tie goes down, then the hair.
    tie_and_hair = 1 + 2**-8 + 2**-30
    assert round_to_dtype([tie_and_hair], "bfloat16").tolist() == [1 + 2**-7]
    assert round_to_dtype(round_to_dtype([tie_and_hair], "float32"), "bfloat16").tolist() == [1.0]
