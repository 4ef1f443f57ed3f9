"""A whole training step under torch.compile: forward, backward, Bop and Adam steps, zero_grad.

The compiled step must give what eager mode gives (within float tolerance for the latents and
losses, exactly for the flip values here) and keep every value in its set.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st

pytestmark = pytest.mark.slow  # inductor compiles C++ on first use: tens of seconds on 2 cores

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mixed_model(latent_method: str = "ste") -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        st.Multiplier(32, FOUR, method="flip"),  # uneven steps: Bop looks values up
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    st.constrain(model[0], "weight", FOUR, latent_method)
    st.constrain(model[3], "weight", snapset.Binary(), "flip")
    st.constrain(model[5], "weight", snapset.Ternary(), latent_method)
    return model


def training_step(model: nn.Module) -> tuple[Step, st.Bop, torch.optim.Adam]:
    groups = st.param_groups(model)
    bop = st.Bop(groups.flip, threshold=1e-3, gamma=0.2)
    adam = torch.optim.Adam(groups.latent + groups.other, lr=5e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        value = loss.detach()  # before backward: a non-leaf loss live after it makes dynamo warn
        loss.backward()
        bop.step()
        adam.step()
        bop.zero_grad()
        adam.zero_grad()
        return value

    return step, bop, adam


def assert_in_sets(model: nn.Module) -> None:
    for name, constraint in st.named_constraints(model):
        weight = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.isin(weight, torch.tensor(constraint.values.values)).all(), name


def test_compiled_training_step_matches_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(1)
    data = [(torch.randn(64, 16), torch.randn(64, 4)) for _ in range(15)]
    runs = {}
    for compiled in (False, True):
        model = mixed_model()
        step, bop, _ = training_step(model)
        run = torch.compile(step) if compiled else step
        losses = [float(run(x, y)) for x, y in data]
        assert_in_sets(model)
        runs[compiled] = (losses, model, bop)
    (eager_losses, eager, eager_bop), (compiled_losses, compiled, compiled_bop) = runs.values()
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    flip_ids = {id(p) for p in st.param_groups(eager).flip}
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if id(a) in flip_ids:
            assert torch.equal(a, b), name  # flips are decisions: the same ones were made
        else:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    flips_eager = [s["momentum"] for s in eager_bop.state.values()]
    flips_compiled = [s["momentum"] for s in compiled_bop.state.values()]
    for a, b in zip(flips_eager, flips_compiled, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    start = mixed_model()
    assert not torch.equal(start[2].weight, compiled[2].weight), "Bop never flipped"
    assert not torch.equal(start[3].weight, compiled[3].weight), "Bop never flipped"


@pytest.mark.parametrize("method", ["stochastic", "gumbel"])
def test_compiled_step_with_random_methods_trains_in_the_sets(method: str) -> None:
    """Compiled code draws its own random numbers: values differ from eager, sets do not."""
    torch._dynamo.reset()
    model = mixed_model(method)
    start = [p.detach().clone() for p in model.parameters()]
    step, _, _ = training_step(model)
    run = torch.compile(step)
    torch.manual_seed(2)
    for _ in range(10):
        run(torch.randn(64, 16), torch.randn(64, 4))
        assert_in_sets(model)
    assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))


def test_compiled_step_skips_a_nonfinite_bop_step() -> None:
    torch._dynamo.reset()
    model = mixed_model()
    step, bop, _ = training_step(model)
    run = torch.compile(step)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    run(x, y)
    flip_values = model[3].weight.detach().clone()
    momentum = bop.state[model[3].parametrizations.weight.original]["momentum"].clone()
    x_bad = x.clone()
    x_bad[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="Bop skipped this step"):
        run(x_bad, y)
    assert bop.nonfinite_steps == 1
    assert torch.equal(model[3].weight, flip_values)
    assert torch.equal(bop.state[model[3].parametrizations.weight.original]["momentum"], momentum)
