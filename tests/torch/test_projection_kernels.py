"""The compiled projection and estimators (``snapset._kernels._project``) give the bits of the
torch operations they replace in eager mode, on every set, dtype, estimator and thread count,
and step aside wherever they do not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snapset
import snapset.torch as st
from snapset import _kernels
from snapset._kernels import _project
from snapset.torch import _functional as F

pytestmark = pytest.mark.skipif(not _kernels.compiled(), reason="numba is not installed")

SETS = {
    "sign": snapset.Sign(),
    "binary": snapset.Binary(),
    "ternary": snapset.Ternary(),
    "four": snapset.ValueSet([1, -1, 0.5, -0.5]),
    "uneven": snapset.ValueSet([-0.3, 0.1, 0.7]),  # its summed projection would round
    "seventeen": snapset.ValueSet(range(-8, 9)),  # 16 thresholds: the most a kernel takes
}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns, so that -0.0 and 0.0 differ and NaN equals NaN."""
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int64)


def latents(constraint: st.Constraint, dtype: torch.dtype) -> torch.Tensor:
    """Random latents in and beyond the range, every threshold and level, and the infinities."""
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(4099, dtype=dtype, generator=generator) * 0.15
    edges = torch.cat([constraint.thresholds, constraint.levels]).to(dtype)
    return torch.cat([spread, edges, torch.tensor([float("inf"), -float("inf")], dtype=dtype)])


def constraint_of(values: snapset.ValueSet, dtype: torch.dtype, **options) -> st.Constraint:
    layer = st.constrain(torch.nn.Linear(8, 8).to(dtype), "weight", values, **options)
    return layer.parametrizations.weight[0]


def torch_operations(monkeypatch: pytest.MonkeyPatch, run):
    with monkeypatch.context() as patch:
        patch.setenv("SNAPSET_KERNELS", "numpy")
        return run()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(SETS))
def test_the_projection_looks_up_what_torch_computes(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype
) -> None:
    constraint = constraint_of(SETS[name], dtype)
    u = latents(constraint, dtype)

    def nearest() -> torch.Tensor:
        return F.nearest(u, constraint.thresholds, constraint.table, constraint.steps)

    expected = torch_operations(monkeypatch, nearest)
    assert torch.equal(bits(nearest()), bits(expected))
    assert F.members(nearest(), constraint.table).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", _kernels.ESTIMATOR_KERNELS)
def test_each_estimator_kernel_gives_torchs_bits(
    monkeypatch: pytest.MonkeyPatch, estimator: str, dtype: torch.dtype
) -> None:
    u = torch.linspace(-0.3, 0.3, 4001, dtype=dtype)
    g = torch.randn(4001, dtype=dtype, generator=torch.Generator().manual_seed(1))
    g[::7] = -g[::7].abs()  # blocked entries of either sign: 0.0 and -0.0
    g[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])  # reach the guard as torch's
    got = F.latent_grad(estimator, u, g, 12.5, 0.1)
    expected = st.estimator_grad(estimator, u, g, 12.5, 0.1)
    assert torch.equal(bits(got), bits(expected))
    # SNAPSET_KERNELS=numpy: estimator_grad itself
    torch_path = torch_operations(monkeypatch, lambda: F.latent_grad(estimator, u, g, 12.5, 0.1))
    assert torch.equal(bits(torch_path), bits(expected))


@pytest.mark.parametrize("name", ["sign", "ternary", "four"])
@pytest.mark.parametrize("estimator", st.ESTIMATORS)
def test_a_training_step_is_the_same_with_and_without_kernels(
    monkeypatch: pytest.MonkeyPatch, name: str, estimator: str
) -> None:
    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        layer = st.constrain(torch.nn.Linear(64, 48), "weight", SETS[name], estimator=estimator)
        latent = layer.parametrizations.weight.original
        with torch.no_grad():  # latents beyond the range too
            latent.mul_(3)
        x = torch.randn(5, 64)
        out = layer(x)
        (out * torch.randn_like(out)).sum().backward()
        assert latent.grad is not None
        return out.detach(), layer.weight.detach(), latent.grad

    for got, expected in zip(step(), torch_operations(monkeypatch, step), strict=True):
        assert torch.equal(bits(got), bits(expected))


def test_the_result_does_not_depend_on_the_number_of_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_project, "_SHARE", 1000)  # split even a small tensor
    constraint = constraint_of(SETS["ternary"], torch.float32)
    u = latents(constraint, torch.float32)
    g = torch.randn_like(u)
    arrays = [t.numpy() for t in (u, constraint.thresholds, constraint.table)]
    one, several = np.empty_like(arrays[0]), np.empty_like(arrays[0])
    assert _kernels.nearest(*arrays, one, threads=1) and _kernels.nearest(*arrays, several, 3)
    assert np.array_equal(one, several)
    assert _kernels.estimator_grad("inward", u.numpy(), g.numpy(), 10.0, 0.1, one, threads=1)
    assert _kernels.estimator_grad("inward", u.numpy(), g.numpy(), 10.0, 0.1, several, 3)
    assert np.array_equal(one.view(np.int32), several.view(np.int32))


def test_torchs_operations_run_where_the_kernels_do_not_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    constraint = constraint_of(SETS["ternary"], torch.float32)
    half = constraint_of(SETS["ternary"], torch.float16)
    calls: list[str] = []
    for name in ("nearest", "estimator_grad"):
        kernel = getattr(_kernels, name)
        monkeypatch.setattr(
            _kernels, name, lambda *a, _k=kernel, _n=name, **k: calls.append(_n) or _k(*a, **k)
        )
    u = torch.linspace(-0.3, 0.3, 64).reshape(8, 8)
    g = torch.ones(8, 8)
    F.nearest(u, constraint.thresholds, constraint.table, constraint.steps)
    F.latent_grad("inward", u, g, 10.0, 0.1)
    assert calls == ["nearest", "estimator_grad"]
    calls.clear()
    F.nearest(u.t(), constraint.thresholds, constraint.table, constraint.steps)  # strided
    F.latent_grad("inward", u, g.t(), 10.0, 0.1)
    F.latent_grad("identity", u, g, 10.0, 0.1)  # one multiplication: no kernel
    F.latent_grad("inward", u, g.double(), 10.0, 0.1)  # mixed dtypes
    F.nearest(u.half(), half.thresholds, half.table, half.steps)
    assert calls == []


def test_a_gradient_with_a_graph_of_its_own_keeps_it() -> None:
    # create_graph=True: the latent's gradient stays differentiable in the incoming one
    u = torch.linspace(-0.3, 0.3, 16, requires_grad=True)
    g = torch.ones(16, requires_grad=True)
    grad = F.latent_grad("inward", u.detach(), g * 2, 10.0, 0.1)
    assert grad.requires_grad
    grad.sum().backward()
    expected = st.estimator_grad("inward", u.detach(), torch.full((16,), 2.0), 10.0, 0.1)
    assert g.grad is not None and torch.equal(g.grad, expected)  # d(keep * 2g * s)/dg


def test_torch_func_transforms_take_torchs_operations() -> None:
    # torch.func wraps tensors without storage that numpy could see: the kernels step aside
    from torch.func import functional_call, grad

    layer = st.constrain(torch.nn.Linear(6, 3), "weight", SETS["ternary"])
    params = dict(layer.named_parameters())
    x = torch.randn(4, 6)
    grads = grad(lambda p: functional_call(layer, p, (x,)).sum())(params)
    layer(x).sum().backward()
    for name, param in params.items():
        assert param.grad is not None and torch.equal(grads[name], param.grad)


def test_every_storage_the_kernels_touch_stays_resizable() -> None:
    # FSDP2's fully_shard frees an unsharded parameter by resizing its storage to 0, which
    # tensor.numpy() would forbid for good
    layer = st.constrain(torch.nn.Linear(6, 3), "weight", SETS["ternary"])
    latent = layer.parametrizations.weight.original
    weight = layer.weight
    weight.sum().backward()
    assert latent.grad is not None
    for tensor in (latent, weight, latent.grad):
        tensor.untyped_storage().resize_(0)
    tracked = st.constrain(torch.nn.Linear(6, 3), "weight", SETS["ternary"])
    tracker = st.FlipTracker(tracked)
    tracker.update()  # the flip tracker's compiled sweep reads the latent the same way
    tracked.parametrizations.weight.original.untyped_storage().resize_(0)
