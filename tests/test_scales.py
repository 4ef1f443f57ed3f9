"""The core rules of scales: names, checks, layouts and statistics (no framework)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import snapset
from snapset._scales import (
    STATISTIC_FLOOR,
    ActivationScaling,
    Scaling,
    bad_scale_message,
    scale_unit,
)


@pytest.mark.parametrize(
    ("values", "unit"),
    [
        (snapset.Sign(), 1.0),
        (snapset.Ternary(), 1.0),
        (snapset.Binary(), 1.0),
        (snapset.ValueSet(range(-128, 128)), 127.0),
        (snapset.ValueSet([1, 2, 3]), 3.0),
        (snapset.ValueSet([-4, -1]), 4.0),
        (snapset.ValueSet([-2, -1, 0.5, 3]), 2.0),
    ],
)
def test_the_unit_is_what_both_ends_of_the_set_reach(values, unit):
    assert scale_unit(values) == unit


@pytest.mark.parametrize(
    ("scale", "mode", "method", "message"),
    [
        (None, "absmean", "ste", "scale_mode='absmean' needs a scale"),
        ("row", None, "ste", "Unknown scale 'row'"),
        (0, None, "ste", "Invalid scale 0"),
        (-4, None, "ste", "Invalid scale -4"),
        (2.5, None, "ste", "Invalid scale 2.5"),
        (True, None, "ste", "Invalid scale True"),
        ("tensor", "median", "ste", "Unknown scale_mode 'median'"),
        ("tensor", "absmean", "flip", "method 'flip' stores none"),
        ("channel", "absmax", "gumbel", "method 'gumbel' stores none"),
    ],
)
def test_bad_scale_options_are_refused_with_the_fix(scale, mode, method, message):
    with pytest.raises(ValueError, match=message):
        Scaling.of(scale, mode, method=method)


def test_options_become_a_scaling():
    assert Scaling.of(None, None, method="flip") is None
    assert Scaling.of("tensor", None, method="flip") == Scaling("tensor", "learned")
    assert Scaling.of(256, "absmax", method="stochastic") == Scaling(256, "absmax")
    assert Scaling.of(np.int64(8), None, method="ste") == Scaling(8, "learned")


@pytest.mark.parametrize(
    ("shape", "out_axis", "in_axis", "scale", "scale_shape"),
    [
        ((6, 8), 0, 1, "tensor", (1, 1)),
        ((6, 8), 0, 1, "channel", (6, 1)),
        ((6, 8), 0, 1, 4, (6, 2)),
        ((6, 8, 3), 0, 1, 4, (6, 2, 1)),  # a PyTorch Conv1d weight
        ((3, 8, 6), -1, -2, 4, (1, 2, 6)),  # a Keras Conv1D kernel
        ((8, 6), -1, -2, "channel", (1, 6)),  # a Keras Dense kernel
        ((5,), 0, None, "channel", (5,)),  # a Multiplier's vector
        ((), 0, None, "tensor", ()),
    ],
)
def test_layouts(shape, out_axis, in_axis, scale, scale_shape):
    layout = Scaling(scale).layout(shape, out_axis, in_axis)
    assert layout.scale_shape == scale_shape
    assert int(np.prod(layout.grouped)) == int(np.prod(shape))
    assert int(np.prod(layout.grouped_scale)) == layout.count == int(np.prod(scale_shape))


def test_a_group_size_must_divide_the_input_axis_and_exist():
    with pytest.raises(ValueError, match=r"scale=3 groups 8 inputs .* such as 2"):
        Scaling(3).layout((4, 8), 0, 1)
    with pytest.raises(ValueError, match="has none; use scale='tensor' or 'channel'"):
        Scaling(4).layout((8,), 0, None)


@given(
    out=st.integers(1, 4),
    groups=st.integers(1, 3),
    size=st.integers(1, 4),
    kernel=st.integers(1, 3),
    mode=st.sampled_from(["absmean", "absmax"]),
    seed=st.integers(0, 2**16),
)
def test_statistic_covers_exactly_each_group(out, groups, size, kernel, mode, seed):
    """Each scale is the statistic of the entries of its group, found by brute force."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out, groups * size, kernel))
    layout = Scaling(size, mode).layout(weight.shape, 0, 1)
    stat = layout.statistic(weight, mode, snapset.Ternary())
    reduce = np.mean if mode == "absmean" else np.max
    for o in range(out):
        for g in range(groups):
            group = np.abs(weight[o, g * size : (g + 1) * size, :])
            assert stat[o, g, 0] == pytest.approx(max(reduce(group), STATISTIC_FLOOR))


def test_an_all_zero_group_keeps_a_positive_scale():
    layout = Scaling("channel").layout((2, 3), 0, 1)
    stat = layout.statistic(np.zeros((2, 3)), "absmax", snapset.Sign())
    assert (stat == STATISTIC_FLOOR).all()


@pytest.mark.parametrize(
    ("scale", "mode", "error", "message"),
    [
        (None, "absmax", ValueError, "needs a scale"),
        ("row", None, ValueError, "Unknown scale 'row'"),
        ("token", "learned", ValueError, "no parameter can hold"),
        ("tensor", "static", ValueError, "needs the scale itself"),
        ("tensor", "mean", ValueError, "Unknown scale_mode 'mean'"),
        (0.0, None, ValueError, "not finite and > 0"),
        (float("nan"), None, ValueError, "not finite and > 0"),
        (-1, None, ValueError, "not finite and > 0"),
        (2.0, "absmax", ValueError, "is a static scale"),
        ([1.0], None, TypeError, "Invalid scale"),
    ],
)
def test_bad_activation_scales_are_refused(scale, mode, error, message):
    with pytest.raises(error, match=message):
        ActivationScaling.of(scale, mode)


def test_activation_layouts():
    token = ActivationScaling.of("token", None)
    assert token is not None
    assert token.layout((2, 5, 7), -1).scale_shape == (2, 5, 1)
    channel = ActivationScaling.of("channel", "learned")
    assert channel is not None
    assert channel.layout((2, 7, 5), 1).scale_shape == (1, 7, 1)
    static = ActivationScaling.of(0.25, None)
    assert static == ActivationScaling("tensor", "static", 0.25)


def test_int8_absmax_per_token_is_bitnets():
    """max|x| / 127 per token: BitNet b1.58's activation scale."""
    x = np.random.default_rng(0).standard_normal((3, 16))
    scaling = ActivationScaling.of("token", None)
    assert scaling is not None
    layout = scaling.layout(x.shape, -1)
    stat = layout.statistic(x, "absmax", snapset.ValueSet(range(-128, 128)))
    np.testing.assert_allclose(stat[:, 0], np.abs(x).max(axis=1) / 127)


def test_the_message_counts():
    assert "1 entry that is" in bad_scale_message("x", 1, 0.0)
    assert "3 entries that are" in bad_scale_message("x", 3, 0.0)
