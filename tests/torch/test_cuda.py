"""The constraints on a GPU: exact values, training, harden_ and torch.compile (runs only
where CUDA is present)."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
VALUES = snapset.ValueSet([1, -1, 0.5, -0.5])


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_on_cuda_keeps_values_exact_and_matches_cpu_after_harden(method, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    model = st.constrain_(model, VALUES, method).to("cuda", dtype)
    table = torch.tensor(VALUES.values, device="cuda", dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randn(128, 32, device="cuda", dtype=dtype)
    y = torch.randn(128, 4, device="cuda", dtype=dtype)
    for _ in range(20):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isin(model[0].weight, table).all()
    model.eval()
    assert model[0].weight.unique().tolist() == table.tolist()
    on_gpu = model(x)
    st.harden_(model)
    assert model[0].weight.is_cuda
    assert torch.equal(model(x), on_gpu)
    cpu = model.cpu()
    assert torch.isin(cpu[0].weight, table.cpu()).all()


def test_compiled_model_on_cuda_matches_eager():
    torch.manual_seed(0)
    model = st.constrain_(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)), VALUES)
    model = model.cuda().eval()
    x = torch.randn(16, 64, device="cuda")
    compiled = torch.compile(model)
    assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.compile(lambda: model[0].weight)(), model[0].weight)
