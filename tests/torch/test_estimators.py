"""The estimators: each surrogate derivative against its closed form, one entry at a time."""

import pytest
import torch

import snapset
import snapset.torch as st
from snapset import _spec
from snapset.torch import _estimators


def constrained_vector(values, method="ste", n=64, **options):
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.linspace(-1, 1, n, dtype=torch.float64))
    return st.constrain(module, "weight", values, method, **options)


def closed_form_estimator(estimator, u, g, scale, r):
    """The estimators' definitions, one entry at a time."""
    out = torch.empty_like(g)
    for i, (ui, gi) in enumerate(zip(u.tolist(), g.tolist(), strict=True)):
        inside = -r <= ui <= r
        if estimator == "identity" or inside:
            passes = True
        elif estimator == "clip":
            passes = False
        else:  # inward: descent moves u by -g; it may only head back into [-r, r]
            passes = (ui > r and gi > 0) or (ui < -r and gi < 0)
        out[i] = gi * scale if passes else 0.0
    return out


@pytest.mark.parametrize("estimator", st.ESTIMATORS)
@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_surrogate_gradient_matches_closed_form(estimator, method):
    values = snapset.ValueSet([0, 2, 3, 10])  # half range 5
    module = constrained_vector(values, method, estimator=estimator)
    latent = module.parametrizations.weight.original
    with torch.no_grad():  # put some latents outside [-r, r] on both sides
        latent.copy_(torch.linspace(-0.3, 0.3, latent.numel(), dtype=latent.dtype))
    g = torch.randn(latent.shape, dtype=latent.dtype, generator=torch.Generator().manual_seed(0))
    (module.weight * g).sum().backward()
    expected = closed_form_estimator(estimator, latent.detach(), g, scale=5 / 0.1, r=0.1)
    assert torch.equal(latent.grad, expected)


def latents_and_grads(r=0.1, n=301, seed=0):
    """Latents on both sides of the range and exactly on its edges, with gradients of both signs
    (and zeros)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.cat([torch.linspace(-3 * r, 3 * r, n, dtype=torch.float64), torch.tensor([-r, r])])
    g = torch.randn(u.shape, dtype=torch.float64, generator=gen)
    g[::7] = 0.0
    return u, g


def test_one_function_for_each_estimator_name():
    assert tuple(_estimators.ESTIMATOR_FUNCTIONS) == _spec.ESTIMATORS
    assert st.ESTIMATORS == _spec.ESTIMATORS
    for name, function in _estimators.ESTIMATOR_FUNCTIONS.items():
        assert function.__name__ == name
        assert "Examples:" in function.__doc__


@pytest.mark.parametrize("estimator", _spec.ESTIMATORS)
def test_each_function_is_its_closed_form_and_leaves_its_inputs_alone(estimator):
    u, g = latents_and_grads()
    u_before, g_before = u.clone(), g.clone()
    got = _estimators.ESTIMATOR_FUNCTIONS[estimator](u, g, 7.5, 0.1)
    assert torch.equal(got, closed_form_estimator(estimator, u, g, scale=7.5, r=0.1))
    assert torch.equal(u, u_before) and torch.equal(g, g_before)  # in place in its own buffers
    assert torch.equal(st.estimator_grad(estimator, u, g, 7.5, 0.1), got)


def test_the_estimators_differ_only_outside_the_range():
    u, g = latents_and_grads()
    grads = {e: st.estimator_grad(e, u, g, 1.0, 0.1) for e in _spec.ESTIMATORS}
    inside = u.abs() <= 0.1
    for e in _spec.ESTIMATORS:
        assert torch.equal(grads[e][inside], g[inside])
    outward = ~inside & (u * g < 0)  # descent (-g) would carry u further out
    inward = ~inside & (u * g > 0)
    assert outward.any() and inward.any()
    assert torch.equal(grads["inward"][inward], g[inward])
    assert not grads["inward"][outward].any()
    assert not grads["clip"][~inside].any()
    assert torch.equal(grads["identity"], g)
