"""The maths of the PyTorch front against closed forms and slow references."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst

import snapset
import snapset.torch as st
from snapset.torch import _functional as F

value_sets = hst.lists(
    hst.floats(-100, 100, allow_nan=False, allow_subnormal=False).map(lambda v: round(v, 3)),
    min_size=2,
    max_size=7,
    unique=True,
).map(snapset.ValueSet)


def constrained_vector(values, method="ste", n=64, **options):
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.linspace(-1, 1, n, dtype=torch.float64))
    return st.constrain(module, "weight", values, method, **options)


def test_gumbel_gradient_matches_autograd_of_the_soft_expectation():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    table = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=torch.float64)
    g = torch.randn(5, dtype=torch.float64)
    for tau in (1.0, 0.3):
        soft = torch.softmax(logits / tau, dim=-1) @ table
        (expected,) = torch.autograd.grad((soft * g).sum(), logits)
        got = F.gumbel_expectation_grad(logits.detach(), table, tau, g)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(value_sets, hst.integers(0, 2**31))
def test_summed_bucketized_and_looked_up_projections_agree(values, seed):
    constraint = constrained_vector(values).parametrizations.weight[0]
    latent = torch.randn(257, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    latent = torch.cat([latent * 0.15, constraint.thresholds, constraint.levels])
    bucketized = constraint.table[F.reached(latent, constraint.thresholds)]
    if constraint.steps is not None:
        summed = F.summed(latent, constraint.thresholds, constraint.table, constraint.steps)
        assert torch.equal(summed, bucketized)
    looked_up = F.nearest(latent, constraint.thresholds, constraint.table, constraint.steps)
    assert torch.equal(looked_up, bucketized)  # the compiled kernel, where numba is there
    reference = torch.tensor(values.project(values.from_latent(latent.numpy() / 0.1)))
    far_from_boundaries = (latent[:, None] - constraint.thresholds).abs().min(dim=1).values > 1e-9
    assert torch.equal(bucketized[far_from_boundaries], reference[far_from_boundaries])
    on_boundary = bucketized[257 : 257 + len(values) - 1]
    assert on_boundary.tolist() == list(values.values[1:])  # ties go to the larger value


def test_summed_projection_is_refused_where_it_would_round():
    exact = constrained_vector(snapset.Ternary()).parametrizations.weight[0]
    assert exact.steps is not None
    inexact = constrained_vector([-0.3, 0.1, 0.7]).parametrizations.weight[0]
    assert (0.1 - -0.3) + -0.3 != 0.1  # the summed path rounds in float64
    assert inexact.steps is None
    assert torch.equal(inexact.hard(inexact.levels), inexact.table)


def test_stochastic_rounding_is_unbiased_and_picks_neighbours():
    torch.manual_seed(0)
    module = constrained_vector([-1, 0, 2], "stochastic", n=4)
    latent = module.parametrizations.weight.original
    with torch.no_grad():  # values -0.4, 0.5, 1.25 and one above the range
        latent.copy_(torch.tensor([-0.4, 0.5, 1.25, 9.0]) * 0.1 / 1.5 - 0.5 * 0.1 / 1.5)
    point = torch.tensor([-0.4, 0.5, 1.25, 2.0], dtype=torch.float64)
    draws = torch.stack([module.weight.detach() for _ in range(20000)])
    assert set(draws[:, 0].unique().tolist()) == {-1.0, 0.0}
    assert set(draws[:, 1].unique().tolist()) == {0.0, 2.0}
    assert draws[:, 3].unique().tolist() == [2.0]
    assert torch.allclose(draws.mean(0), point, atol=0.03)
    module.eval()
    assert module.weight.tolist() == [0.0, 0.0, 2.0, 2.0]


@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_dither_draws_only_within_its_band_around_each_threshold(method):
    """Values [-1, 0, 2]: thresholds at -0.5 and 1; with dither 0.5 a latent draws at random
    only within a quarter of its gap on either side of a threshold, linearly."""
    torch.manual_seed(0)
    module = constrained_vector([-1, 0, 2], method, n=6, dither=0.5)
    latent = module.parametrizations.weight.original
    # on the value scale: outside every band, inside the first band (a quarter of the way
    # up it: p = 0.25), on a threshold (p = 0.5), just above a band, and in the second band
    point = torch.tensor([-0.8, -0.625, 1.0, 1.6, 1.25, -0.2])
    with torch.no_grad():
        latent.copy_(module.parametrizations.weight[0].right_inverse(point))
    draws = torch.stack([module.weight.detach() for _ in range(20000)])
    up = [(draws[:, i] == high).float().mean().item() for i, high in enumerate([0, 0, 2, 2, 2, 0])]
    assert up[0] == 0 and up[3] == 1 and up[5] == 1  # outside the bands: the nearest value
    assert up[1] == pytest.approx(0.25, abs=0.02)
    assert up[2] == pytest.approx(0.5, abs=0.02)
    assert up[4] == pytest.approx(0.75, abs=0.02)
    module.eval()  # eval: the nearest value, always
    assert module.weight.tolist() == [-1.0, -1.0, 2.0, 2.0, 2.0, 0.0]


def test_dither_one_is_stochastic_rounding_bit_for_bit():
    levels, table = torch.tensor([-0.1, 0.0, 0.1]), torch.tensor([-1.0, 0.0, 1.0])
    latent = torch.linspace(-0.2, 0.2, 1001)
    torch.manual_seed(3)
    default = F.stochastic_round(latent, levels, table)
    torch.manual_seed(3)
    assert torch.equal(F.stochastic_round(latent, levels, table, dither=1.0), default)
    torch.manual_seed(3)
    narrow = F.stochastic_round(latent, levels, table, dither=0.2)
    assert not torch.equal(narrow, default)


@pytest.mark.parametrize("dither", [-0.1, 1.5, float("nan")])
def test_a_dither_outside_zero_to_one_is_refused(dither):
    layer = torch.nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="Invalid dither"):
        st.constrain(layer, "weight", snapset.Sign(), dither=dither)
    assert torch.equal(layer.weight, before) and not hasattr(layer, "parametrizations")


def test_dither_does_not_apply_to_gumbel_or_flip():
    for method in ("gumbel", "flip"):
        with pytest.raises(ValueError, match="Option 'dither' does not apply"):
            st.constrain(torch.nn.Linear(3, 2), "weight", snapset.Sign(), method, dither=0.5)


def test_argmax_ties_go_to_the_larger_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, 1.0, 1.0, 1.0]])
    assert F.argmax_ties_up(scores).tolist() == [2, 3, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_reached_is_bucketize_for_many_boundaries(dtype):
    """The arithmetic guess with its correction counts exactly what bucketize counts, on and
    just below every boundary of the int8 set's latent tables, outside them, and for NaN."""
    tables = snapset.ValueSet(range(-128, 128)).tables(str(dtype), 0.1)
    boundaries = torch.from_numpy(tables.thresholds).to(dtype)
    below = torch.nextafter(boundaries, torch.tensor(-1.0, dtype=dtype))
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 5.0], dtype=dtype)
    x = torch.cat([boundaries, below, special, (torch.rand(20000) * 0.3 - 0.15).to(dtype)])
    assert torch.equal(F.reached(x, boundaries), torch.bucketize(x, boundaries, right=True))


def test_reached_falls_back_to_bucketize_for_uneven_boundaries():
    torch.manual_seed(0)
    boundaries = torch.sort(torch.randn(40) ** 3).values
    x = torch.randn(5000) * 2
    assert torch.equal(F.reached(x, boundaries), torch.bucketize(x, boundaries, right=True))
