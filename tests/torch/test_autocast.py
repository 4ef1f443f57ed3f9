"""Mixed precision: under ``torch.autocast`` the constrained values stay exactly in the set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st

# Every value and midpoint is exact in bfloat16 and float16, so the half-precision copy that
# autocast hands to the matmul holds the same values as the float32 parameter.
VALUES = snapset.ValueSet([1, -1, 0.5, -0.5])
IN_SET = torch.tensor(VALUES.values)


def mixed_model(method: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    st.constrain(model[0], "weight", VALUES, method)
    st.constrain(model[2], "weight", snapset.Sign(), "flip")
    return model


def optimizers(model: nn.Module) -> list[torch.optim.Optimizer]:
    groups = st.param_groups(model)
    return [
        st.Bop(groups.flip, threshold=1e-4, gamma=0.1),
        torch.optim.Adam(groups.latent + groups.other, lr=1e-2),
    ]


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel", "flip"])
def test_bfloat16_autocast_training_keeps_values_in_the_set(method: str) -> None:
    model = mixed_model(method)
    opts = optimizers(model)
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(20):
        x, y = torch.randn(32, 8), torch.randn(32, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            for layer in (model[0], model[2]):
                # One draw (stochastic and gumbel draw anew at each access). The value keeps
                # the parameter's dtype; autocast casts only the matmul's inputs.
                weight = layer.weight
                assert weight.dtype == torch.float32
                assert torch.isin(weight, IN_SET).all()
                assert torch.equal(weight.bfloat16().float(), weight)
            loss = nn.functional.mse_loss(out.float(), y)
        assert out.dtype == torch.bfloat16
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
    model.eval()
    for layer in (model[0], model[2]):
        assert torch.isin(layer.weight, IN_SET).all()
    assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))


def test_float16_autocast_with_grad_scaler_and_bop() -> None:
    """GradScaler unscales the gradients Bop reads and skips the steps that overflowed."""
    model = mixed_model("ste")
    bop, adam = optimizers(model)
    scaler = torch.amp.GradScaler("cpu")
    flip_start = model[2].weight.detach().clone()
    for _ in range(20):
        x, y = torch.randn(32, 8), torch.randn(32, 2)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        bop.zero_grad()
        adam.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(bop)
        scaler.step(adam)
        scaler.update()
        assert torch.isin(model[0].weight, IN_SET).all()
        assert torch.isin(model[2].weight, IN_SET).all()
    assert scaler.get_scale() < 2.0**16, "the scaler should have met (and skipped) an overflow"
    assert bop.nonfinite_steps == 0, "the scaler, not Bop, skips overflowing steps"
    assert not torch.equal(flip_start, model[2].weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_cast_to_half_precision_trains_in_the_set(dtype: torch.dtype) -> None:
    model = mixed_model("stochastic").to(dtype)
    opts = optimizers(model)
    for _ in range(20):
        x, y = torch.randn(32, 8, dtype=dtype), torch.randn(32, 2, dtype=dtype)
        loss = nn.functional.mse_loss(model(x), y)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
    for layer in (model[0], model[2]):
        assert layer.weight.dtype == dtype
        assert torch.isin(layer.weight, IN_SET.to(dtype)).all()
