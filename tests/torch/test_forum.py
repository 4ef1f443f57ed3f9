"""The two forum problems, learned from noisy data, next to the answers the forums gave."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st


def planted_binary_matrix(seed=0, samples=2048, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    planted = torch.randint(0, 2, (64, 32), generator=g).float()
    x = torch.randn(samples, 32, generator=g)
    y = x @ planted.T + noise * torch.randn(samples, 64, generator=g)
    return planted, x, y


def fit(model, x, y, epochs, lr=1e-3, batch=64, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


class ForumAnswer(nn.Linear):
    """The accepted answer: weight = relu(sigmoid(w) - 0.9), whose range is (0, 0.1)."""

    def forward(self, x):
        return nn.functional.linear(x, torch.relu(torch.sigmoid(self.weight) - 0.9))


@pytest.mark.parametrize(("method", "epochs"), [("ste", 6), ("stochastic", 6), ("gumbel", 6)])
def test_planted_binary_matrix_is_recovered_entry_for_entry(method, epochs):
    planted, x, y = planted_binary_matrix()
    torch.manual_seed(1)
    layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), method)
    fit(layer, x, y, epochs)
    layer.eval()
    assert torch.equal(layer.weight, planted)


def test_the_forum_answer_cannot_reach_one_on_the_same_data():
    planted, x, y = planted_binary_matrix()
    torch.manual_seed(1)
    answer = fit(ForumAnswer(32, 64, bias=False), x, y, epochs=6)
    effective = torch.relu(torch.sigmoid(answer.weight) - 0.9).detach()
    assert effective.max() < 0.1  # never anywhere near 1
    recovered = ((effective >= 0.5).float() == planted).float().mean()
    assert recovered < 0.6  # only the zeros are "right"


@pytest.mark.parametrize("values", [snapset.Sign(), snapset.ValueSet([1, -1, 0.5, -0.5])], ids=repr)
@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_planted_multiplier_is_recovered_exactly(values, method):
    g = torch.Generator().manual_seed(3)
    planted = torch.tensor(values.values)[torch.randint(0, len(values), (64,), generator=g)]
    x = torch.randn(2048, 64, generator=g)
    y = x * planted + 0.1 * torch.randn(2048, 64, generator=g)
    torch.manual_seed(4)
    layer = fit(st.Multiplier(64, values, method), x, y, epochs=12, lr=3e-3)
    layer.eval()
    assert torch.equal(layer.weight, planted)
