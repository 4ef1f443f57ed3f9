"""torch.compile sees the same exact values as eager mode, in inference and in training."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st

pytestmark = pytest.mark.slow  # inductor compiles C++ on first use: tens of seconds on 2 cores


def model(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return st.constrain_(net, snapset.ValueSet([1, -1, 0.5, -0.5]), method)


@pytest.mark.parametrize("method", ["ste", "gumbel"])
def test_compiled_inference_matches_eager(method):
    net = model(method).eval()
    x = torch.randn(8, 16)
    compiled = torch.compile(net)
    assert torch.allclose(compiled(x), net(x), rtol=1e-6, atol=1e-6)
    weight = torch.compile(lambda: net[0].weight)()
    assert torch.equal(weight, net[0].weight)


def test_compiled_training_step_matches_eager():
    x, y = torch.randn(64, 16), torch.randn(64, 4)

    def run(compile_model):
        net = model("ste")
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        forward = torch.compile(net) if compile_model else net  # backward is compiled too
        losses = []
        for _ in range(20):
            loss = nn.functional.mse_loss(forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        net.eval()
        return losses, [w.detach().clone() for w in (net[0].weight, net[2].weight)]

    eager_losses, eager_weights = run(False)
    compiled_losses, compiled_weights = run(True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for eager, compiled in zip(eager_weights, compiled_weights, strict=True):
        assert torch.isin(compiled, torch.tensor([-1, -0.5, 0.5, 1])).all()
        assert torch.equal(compiled, eager)
