"""Exact resume: stop mid-training, save, load into a fresh process-like state, go on.

The resumed run must equal the uninterrupted one bit for bit: parameters (latents and flip
values), both optimizers' states (Bop's momentum, gradient average and step count included),
the hyperparameter schedule, and the random stream that ``stochastic`` rounding and the data
order draw from.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset.torch.optim import HyperparameterSchedule

STEPS, STOP = 24, 11


def build(method: str) -> nn.Sequential:
    """A model whose two weights use ``method``, plus a {-1, 1} flip multiplier."""
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.Tanh(),
        st.Multiplier(12, snapset.Sign(), method="flip"),
        nn.Linear(12, 3),
    )
    st.constrain(model[0], "weight", snapset.ValueSet([1, -1, 0.5, -0.5]), method)
    st.constrain(model[3], "weight", snapset.Ternary(), method)
    return model


class Run:
    """Model, optimizers, schedule and data stream; ``state()`` / ``load()`` checkpoint them."""

    def __init__(self, method: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = build(method)
        groups = st.param_groups(self.model)
        self.bop = st.Bop(groups.flip, threshold=0.05, gamma=0.2, threshold_mode="rel")
        self.adam = torch.optim.Adam(groups.latent + groups.other, lr=2e-2)
        self.schedule = HyperparameterSchedule(self.bop, "gamma", lambda step: 0.97**step)
        self.data = torch.Generator().manual_seed(seed + 1)

    def step(self) -> None:
        x = torch.randn(16, 6, generator=self.data)
        y = torch.randn(16, 3, generator=self.data)
        loss = nn.functional.mse_loss(self.model(x), y)
        self.bop.zero_grad()
        self.adam.zero_grad()
        loss.backward()
        self.bop.step()
        self.adam.step()
        self.schedule.step()

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "bop": self.bop.state_dict(),
            "adam": self.adam.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),  # stochastic rounding draws from it
            "data_rng": self.data.get_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.bop.load_state_dict(state["bop"])
        self.adam.load_state_dict(state["adam"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.data.set_state(state["data_rng"])


def checkpoint_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """Through bytes on disk, with the safe loader (no arbitrary pickles)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal bit for bit, through nested dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("method", ["ste", "flip", "stochastic"])
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(method: str) -> None:
    straight = Run(method, seed=0)
    for _ in range(STEPS):
        straight.step()

    first = Run(method, seed=0)
    for _ in range(STOP):
        first.step()
    saved = checkpoint_round_trip(first.state())
    del first
    torch.manual_seed(123)  # the global stream moves on before the resume, as in a new process
    torch.rand(7)
    resumed = Run(method, seed=99)  # different init and data: everything must come from the file
    resumed.load(saved)
    for _ in range(STEPS - STOP):
        resumed.step()

    assert_same(straight.state(), resumed.state())
    # The run did train: values moved and stayed in their sets.
    fresh = Run(method, seed=0)
    for name, constraint in st.named_constraints(resumed.model):
        weight = resumed.model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.isin(weight, torch.tensor(constraint.values.values)).all(), name
    assert not torch.equal(fresh.model[2].weight, resumed.model[2].weight)
    assert not torch.equal(fresh.model[0].weight, resumed.model[0].weight)


def test_resume_without_the_rng_state_diverges_for_stochastic() -> None:
    """The RNG state is part of the checkpoint: without it stochastic rounding draws anew."""
    straight = Run("stochastic", seed=0)
    for _ in range(STEPS):
        straight.step()
    first = Run("stochastic", seed=0)
    for _ in range(STOP):
        first.step()
    saved = checkpoint_round_trip(first.state())
    resumed = Run("stochastic", seed=99)
    saved["torch_rng"] = torch.get_rng_state()  # a checkpoint that forgot the RNG
    resumed.load(saved)
    for _ in range(STEPS - STOP):
        resumed.step()
    assert not torch.equal(straight.model[0].weight, resumed.model[0].weight)
