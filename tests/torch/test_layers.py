"""Multiplier, and GF2Linear: exact eval forward, the surrogate's maths, a constrained tensor like
any other, hardening, and planted recovery."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import snapset
import snapset.torch
from snapset import gf2
from snapset.torch import GF2Linear

# ----- Multiplier ------------------------------------------------------------------------------


def test_multiplier_multiplies_by_set_values() -> None:
    layer = snapset.torch.Multiplier(8, [1, -1, 0.5, -0.5])
    assert layer.weight.unique().tolist() == [-1.0, -0.5, 0.5, 1.0]
    x = torch.randn(3, 5, 8)
    assert torch.equal(layer(x), x * layer.weight)
    assert "Multiplier(\n  num_features=8" in repr(layer)
    gumbel = snapset.torch.Multiplier(4, snapset.Sign(), "gumbel", temperature=0.5)
    assert gumbel.parametrizations.weight[0].temperature == 0.5


# ----- GF2Linear -------------------------------------------------------------------------------


def random_layer(in_features: int, out_features: int, seed: int) -> GF2Linear:
    torch.manual_seed(seed)
    layer = GF2Linear(in_features, out_features)
    with torch.no_grad():
        layer.logits.normal_(0.0, 3.0)
    return layer


def random_bits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).float()


# ----- eval: exact -----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 140), st.integers(1, 70), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_eval_forward_equals_gf2_matmul_and_integer_arithmetic(
    in_features: int, out_features: int, batch: int, seed: int
) -> None:
    layer = random_layer(in_features, out_features, seed).eval()
    x = random_bits(batch, in_features, seed=seed)
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (batch, out_features)
    assert torch.equal(y, gf2.matmul(x, layer.weight.T))
    # An independent exact computation: integer product, then mod 2.
    expected = (x.long() @ layer.weight.long().T) % 2
    assert torch.equal(y.long(), expected)


def test_eval_forward_keeps_leading_dimensions_and_dtypes() -> None:
    layer = random_layer(70, 3, seed=1).eval()
    x = random_bits(2, 5, 70, seed=2)
    y = layer(x)
    assert y.shape == (2, 5, 3)
    assert torch.equal(y.reshape(10, 3), layer(x.reshape(10, 70)))
    assert layer(x.bool()).dtype == torch.bool
    assert torch.equal(layer(x.bool()).float(), y)


def test_weight_is_hard_in_both_modes_with_ties_going_to_one() -> None:
    layer = random_layer(9, 4, seed=3)
    with torch.no_grad():
        layer.logits[0, 0] = 0.0
    for mode in (True, False):
        layer.train(mode)
        w = layer.weight
        assert set(w.unique().tolist()) <= {0.0, 1.0}
        assert not w.requires_grad
        assert torch.equal(w, (torch.sigmoid(layer.logits) >= 0.5).float())
        assert w[0, 0] == 1.0


# ----- training: the surrogate -----------------------------------------------------------------


def brute_force_probability(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """P(x W^T is odd) by summing over every weight matrix row, weighted by its probability."""
    out = torch.zeros(x.shape[0], probs.shape[0], dtype=torch.float64)
    n = probs.shape[1]
    for j in range(probs.shape[0]):
        for bits in itertools.product([0, 1], repeat=n):
            w = torch.tensor(bits, dtype=torch.float64)
            weight_prob = torch.prod(torch.where(w == 1, probs[j], 1 - probs[j]))
            out[:, j] += weight_prob * ((x @ w) % 2)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_training_forward_is_the_exact_expected_parity(seed: int) -> None:
    torch.manual_seed(seed)
    layer = GF2Linear(5, 3, dtype=torch.float64).train()
    with torch.no_grad():
        layer.logits.normal_(0.0, 2.0)
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    expected = brute_force_probability(x, torch.sigmoid(layer.logits).detach())
    got = layer(x)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert torch.allclose(torch.sigmoid(layer.log_odds(x)), expected, atol=1e-12, rtol=0)


def test_log_odds_gradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 6, dtype=torch.float64) * 2).requires_grad_()
    x = random_bits(7, 6, seed=4).double()
    layer = GF2Linear(6, 3, dtype=torch.float64)

    def log_odds(logits: torch.Tensor) -> torch.Tensor:
        # the logits are the stored tensor of the constrained weight, named as in state_dict
        stored = {"parametrizations.weight.original": logits}
        return F.sigmoid(torch.func.functional_call(layer, stored, (x,)))

    assert torch.autograd.gradcheck(log_odds, (logits,))


def test_saturated_training_forward_equals_eval_forward() -> None:
    layer = random_layer(40, 6, seed=5)
    with torch.no_grad():
        layer.logits.copy_(torch.where(layer.logits >= 0, 12.0, -12.0))
    x = random_bits(64, 40, seed=6)
    soft = layer.train()(x)
    hard = layer.eval()(x)
    assert torch.allclose(soft, hard, atol=1e-3)
    assert torch.isfinite(layer.log_odds(x)).all()


def test_log_odds_is_finite_with_finite_gradients_at_the_edges() -> None:
    layer = GF2Linear(4, 2)
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([[0.0, 0.0, 50.0, -50.0], [1e-9, -1e-9, 0.0, 30.0]]))
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    z = layer.log_odds(x)
    F.binary_cross_entropy_with_logits(z, torch.ones_like(z)).backward()
    assert torch.isfinite(z).all()
    assert layer.logits.grad is not None and torch.isfinite(layer.logits.grad).all()
    assert z[0].max() < -10  # no input on: the output is surely 0


# ----- hardening ----------------------------------------------------------------------------------


def test_harden_keeps_outputs_and_stores_exact_bits() -> None:
    layer = random_layer(33, 5, seed=7).eval()
    x = random_bits(50, 33, seed=8)
    before, weight = layer(x), layer.weight
    assert layer.harden_() is layer
    assert layer.is_hard and list(layer.parameters()) == []
    assert list(layer.state_dict()) == ["weight"]
    assert torch.equal(layer.state_dict()["weight"], weight)
    assert torch.equal(layer(x), before)
    assert torch.equal(layer.train()(x), before)  # no surrogate left
    with pytest.raises(RuntimeError, match="hardened"):
        layer.log_odds(x)
    fresh = GF2Linear(33, 5)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.is_hard and torch.equal(fresh.eval()(x), before)


# ----- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_inputs_other_than_bits_are_refused(training: bool) -> None:
    layer = GF2Linear(3, 2).train(training)
    with pytest.raises(ValueError, match=r"inputs in \{0, 1\}, got an entry 2.0.*x % 2"):
        layer(torch.tensor([[0.0, 2.0, 1.0]]))
    with pytest.raises(ValueError, match=r"got an entry 0\.5"):
        layer(torch.tensor([[0.5, 1.0, 1.0]]))


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="in_features"):
        GF2Linear(0, 2)
    with pytest.raises(ValueError, match="out_features"):
        GF2Linear(2, 0)
    with pytest.raises(ValueError, match="init_prob"):
        GF2Linear(2, 2, init_prob=1.0)


# ----- planted recovery ---------------------------------------------------------------------------


def train_planted(in_features: int, fan_in: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """The protocol of benchmarks/gf2_recovery.py: returns (learnt W, planted W)."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.zeros(8, in_features)
    for row in planted:
        row[torch.randperm(in_features, generator=g)[:fan_in]] = 1
    x = torch.randint(0, 2, (4096, in_features), generator=g).float()
    y = (x @ planted.T) % 2
    y = torch.where(torch.rand(y.shape, generator=g) < noise, 1 - y, y)
    torch.manual_seed(seed)
    layer = GF2Linear(in_features, 8)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    # The products are small: extra threads only add contention (5x slower on 2 busy cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(1000):
            loss = F.binary_cross_entropy_with_logits(layer.log_odds(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return layer.weight, planted


# The settings at which the recovery table (benchmarks/results/gf2_recovery.md) recovered every
# row of every seed: the largest fan-in for each input width and noise level, and one below.
@pytest.mark.parametrize(
    ("in_features", "fan_in", "noise"),
    [(16, 3, 0.0), (16, 3, 0.05), (16, 4, 0.0), (32, 2, 0.0), (32, 2, 0.05)],
)
def test_planted_parities_are_recovered_where_the_table_says(
    in_features: int, fan_in: int, noise: float
) -> None:
    learnt, planted = train_planted(in_features, fan_in, noise, seed=1)
    assert torch.equal(learnt, planted)


def test_gf2_solve_recovers_what_gradient_training_cannot() -> None:
    # Fan-in 12 of 16 is far past what training recovers; exact elimination needs no more
    # than a few dozen noise-free samples.
    rng = np.random.default_rng(0)
    planted = np.zeros(16, dtype=np.uint8)
    planted[rng.permutation(16)[:12]] = 1
    x = rng.integers(0, 2, (40, 16), dtype=np.uint8)
    y = gf2.matmul(x, planted)
    assert gf2.rank(x) == 16
    assert np.array_equal(gf2.solve(x, y), planted)


def test_harden_of_a_whole_model_hardens_its_gf2_layers():
    model = torch.nn.Sequential(GF2Linear(6, 4), GF2Linear(4, 2)).eval()
    x = torch.randint(0, 2, (9, 6)).float()
    before = model(x)
    snapset.torch.harden_(model)
    assert all(layer.is_hard for layer in model)
    assert set(model.state_dict()) == {"0.weight", "1.weight"}
    assert torch.equal(model(x), before)


# ----- a constrained tensor like any other ----------------------------------------------------


def test_the_weight_is_a_constrained_tensor_stored_as_logits() -> None:
    layer = random_layer(5, 3, seed=9)
    assert [(name, c.method, c.values) for name, c in snapset.torch.named_constraints(layer)] == [
        ("weight", "gf2", snapset.Binary())
    ]
    assert list(layer.state_dict()) == ["parametrizations.weight.original"]
    assert [p is layer.logits for p in layer.parameters()] == [True]
    layer.weight = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]]).repeat(3, 1)  # stores sure logits
    assert layer.logits.tolist() == [[12.0, -12.0, 12.0, -12.0, -12.0]] * 3
    assert layer.weight.tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]] * 3


def test_training_moves_the_logits_and_the_weight_follows() -> None:
    layer = random_layer(8, 2, seed=10)
    x = random_bits(32, 8, seed=11)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5)
    start = layer.logits.detach().clone()
    for _ in range(5):
        loss = F.binary_cross_entropy_with_logits(layer.log_odds(x), torch.ones(32, 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(layer.logits, start)
    assert torch.equal(layer.weight, (torch.sigmoid(layer.logits) >= 0.5).float())


def test_summary_and_flip_tracker_see_the_weight() -> None:
    layer = random_layer(16, 4, seed=12)
    (row,) = snapset.torch.summary(layer).rows
    assert (row.name, row.method, row.count, row.bits, row.packed_bytes) == (
        "weight",
        "gf2",
        64,
        1,
        8,
    )
    tracker = snapset.torch.FlipTracker(layer)
    with torch.no_grad():
        layer.logits[0, :3] = -layer.logits[0, :3] - (layer.logits[0, :3] == 0).float()
    tracker.update()
    assert tracker.flip_ratios() == {"weight": [3 / 64]}
    assert tracker.histograms()["weight"][-1].tolist() == [
        int((layer.weight == 0).sum()),
        int((layer.weight == 1).sum()),
    ]
