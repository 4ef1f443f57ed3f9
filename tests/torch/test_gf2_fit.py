"""GF2Linear from samples (gf2.lstsq as an algebraic start), then trained end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import snapset.torch as st
from snapset.torch._gf2_fit import from_samples


def planted_samples(
    d: int, out: int, samples: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    planted = (torch.rand(out, d, generator=g) < 0.5).float()
    x = torch.randint(0, 2, (samples, d), generator=g).float()
    y = (x @ planted.T) % 2
    flips = torch.rand(y.shape, generator=g) < noise
    return planted, x, torch.where(flips, 1 - y, y)


def test_from_samples_recovers_a_dense_map_that_gradients_cannot() -> None:
    # Fan-in about 32 of 64: far past what training alone recovers (see the recovery table).
    planted, x, y = planted_samples(64, 4, 512, 0.05, seed=0)
    layer = from_samples(st.GF2Linear, x, y)
    assert torch.equal(layer.weight, planted)
    assert torch.equal(layer.eval()(x), (x @ planted.T) % 2)
    sure = torch.sigmoid(torch.tensor(np.log(0.95 / 0.05))).item()
    assert torch.allclose(layer.probs, torch.where(planted.bool(), sure, 1 - sure))


def test_training_goes_on_from_the_algebraic_start() -> None:
    planted, x, y = planted_samples(24, 3, 256, 0.02, seed=1)
    layer = from_samples(st.GF2Linear, x, y, probability=0.9).train()
    start = layer.logits.detach().clone()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(20):
        loss = F.binary_cross_entropy_with_logits(layer.log_odds(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(layer.logits, start)  # gradients reach the started weights
    assert torch.equal(layer.weight, planted)  # and keep the right map
    st.harden_(layer)
    assert torch.equal(layer(x), (x @ planted.T) % 2)


def test_from_samples_warns_when_the_budget_runs_out_and_checks_arguments() -> None:
    planted, x, y = planted_samples(48, 2, 96, 0.25, seed=2)
    with pytest.warns(RuntimeWarning, match=r"budget of 2 iterations .* outputs \[0, 1\]"):
        layer = from_samples(st.GF2Linear, x, y, budget=2)
    assert layer.weight.shape == planted.shape
    with pytest.raises(ValueError, match="probability must be in"):
        from_samples(st.GF2Linear, x, y, probability=0.5)
    with pytest.raises(ValueError, match="x has 96 samples but y has 95"):
        from_samples(st.GF2Linear, x, y[1:])
    with pytest.raises(ValueError, match=r"x must hold only 0 and 1 .* x\[0, \d+\] = 2"):
        from_samples(st.GF2Linear, x * 2, y)
