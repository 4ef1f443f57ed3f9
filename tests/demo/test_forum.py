"""The two forum problems, learned from noisy data, next to the answers the forums gave."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset import demo


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_planted_binary_matrix_is_recovered_entry_for_entry(method):
    planted, x, y = demo.planted_binary_matrix()
    torch.manual_seed(1)
    layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), method)
    demo.fit_adam(layer, x, y, epochs=6)
    layer.eval()
    assert torch.equal(layer.weight, planted)


@pytest.mark.parametrize(
    ("method", "options", "anneal"),
    [
        ("ste", {}, True),
        ("ste", {"dither": 0.25}, False),
        ("stochastic", {}, True),
        ("stochastic", {}, False),
        ("gumbel", {}, True),
        ("gumbel", {}, False),
    ],
)
def test_planted_binary_matrix_at_adams_usual_rate(method, options, anneal):
    # lr 1e-2: a step is a tenth of the latent range. Without a schedule, latents whose
    # gradient is only noise keep crossing thresholds to the end (plain ste ends 0 to 4
    # entries wrong of 2048); random draws near a threshold (stochastic, gumbel, ste's dither)
    # let the loss hold them on the right side.
    planted, x, y = demo.planted_binary_matrix(3)
    torch.manual_seed(3)
    layer = st.constrain(
        nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), method, **options
    )
    demo.fit_adam(layer, x, y, epochs=10, lr=1e-2, seed=3, anneal=anneal)
    assert torch.equal(layer.eval().weight, planted)


def test_the_relu_sigmoid_answer_cannot_reach_one_on_the_same_data():
    planted, x, y = demo.planted_binary_matrix()
    torch.manual_seed(1)
    answer = demo.fit_adam(demo.ReluSigmoidAnswer(32, 64, bias=False), x, y, epochs=6)
    effective = answer.effective_weight().detach()
    assert effective.max() < 0.1  # never anywhere near 1
    recovered = ((effective >= 0.5).float() == planted).float().mean()
    assert recovered < 0.6  # only the zeros are "right"


def test_the_sign_answer_never_moves():
    _, x, y = demo.planted_multiplier(snapset.Sign())
    answer = demo.SignAnswer(64)
    before = answer.weight.detach().clone()
    demo.fit_adam(answer, x, y, epochs=1)
    assert torch.equal(answer.weight, before)


@pytest.mark.parametrize("values", [snapset.Sign(), snapset.ValueSet([1, -1, 0.5, -0.5])], ids=repr)
@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_planted_multiplier_is_recovered_exactly(values, method):
    planted, x, y = demo.planted_multiplier(values, seed=3)
    torch.manual_seed(4)
    layer = demo.fit_adam(st.Multiplier(64, values, method), x, y, epochs=12, lr=3e-3)
    layer.eval()
    assert torch.equal(layer.weight, planted)
