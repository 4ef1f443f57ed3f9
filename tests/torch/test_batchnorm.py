"""reestimate_batchnorm: running statistics against a slow reference computed by hand from the
exact (eval-mode) weights, modes and momenta restored, and refusals and failures that change
nothing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import snapset
import snapset.torch as st

SIZES = (5, 9, 16)  # unequal batches: torch's cumulative average counts each batch once


def conv_bn_model(method: str) -> nn.Sequential:
    """Conv-BN-ReLU, dropout, Linear-BN: both BatchNorm kinds, constrained weights."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
        nn.BatchNorm1d(4, momentum=0.3),
    )
    st.constrain_(model, snapset.Ternary(), method=method)
    # statistics that training left, which the call must forget
    model[1].running_mean.fill_(5.0)
    model[6].running_var.fill_(7.0)
    return model


def batches() -> list[tuple[Tensor, Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 2, 6, 6) + 0.5, torch.zeros(n)) for n in SIZES]


def train_mode_norm(h: Tensor, norm: nn.Module, axes: tuple[int, ...]) -> Tensor:
    """BatchNorm in train mode: the batch's own mean and biased variance."""
    shape = [1, -1] + [1] * (h.dim() - 2)
    mean = h.mean(axes).reshape(shape)
    var = h.var(axes, unbiased=False).reshape(shape)
    scaled = (h - mean) / torch.sqrt(var + norm.eps)
    return scaled * norm.weight.reshape(shape) + norm.bias.reshape(shape)


def reference_stats(model: nn.Sequential, data: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """The slow, obvious computation: each batch through the exact weights, each BatchNorm's
    per-batch mean and unbiased variance, averaged over the batches (each counts once)."""
    exact = copy.deepcopy(model).eval()
    conv, norm2d, linear = exact[0], exact[1], exact[5]
    sums = [torch.zeros(3), torch.zeros(3), torch.zeros(4), torch.zeros(4)]
    with torch.no_grad():
        for x, _ in data:
            h = F.conv2d(x, conv.weight, conv.bias)  # eval mode: the exact weights
            first = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
            h = torch.relu(train_mode_norm(h, norm2d, (0, 2, 3))).flatten(1)
            h = F.linear(h, linear.weight, linear.bias)
            second = h.mean(0), h.var(0, unbiased=True)
            for total, stat in zip(sums, (*first, *second), strict=True):
                total += stat
    return [total / len(data) for total in sums]


def modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


def state(model: nn.Module) -> dict[str, Tensor]:
    return {key: _copy(value) for key, value in model.state_dict().items()}


def _copy(value: Tensor) -> Tensor:
    # a lazy module's uninitialized tensors cannot be cloned: kept as they are, and compared
    # by identity
    return value if isinstance(value, nn.parameter.UninitializedTensorMixin) else value.clone()


def assert_unchanged(model: nn.Module, before: dict[str, Tensor], flags: list[bool]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, nn.parameter.UninitializedTensorMixin):
            assert after[key] is value, key
        else:
            assert torch.equal(after[key], value), key
    assert modes(model) == flags


@pytest.mark.parametrize("method", ["ste", "stochastic", "gumbel"])
def test_running_stats_are_those_of_the_exact_weights(method: str) -> None:
    model = conv_bn_model(method)
    data = batches()
    expected = reference_stats(model, data)
    st.reestimate_batchnorm(model, data)
    got = [model[1].running_mean, model[1].running_var, model[6].running_mean]
    got.append(model[6].running_var)
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    assert model[1].num_batches_tracked.item() == model[6].num_batches_tracked.item() == 3


def test_random_weights_would_give_other_statistics() -> None:
    # the reference is worth something: stochastic's train-mode weights are random draws
    model = conv_bn_model("stochastic").train()
    x = batches()[2][0]
    with torch.no_grad():
        drawn = model[0](x).mean((0, 2, 3))
        exact = model.eval()[0](x).mean((0, 2, 3))
    assert not torch.allclose(drawn, exact)


def test_modes_and_momenta_are_restored() -> None:
    model = conv_bn_model("stochastic").train()
    model[3].eval()  # a module in another mode than its parent stays so
    model[1].momentum = None
    flags = modes(model)
    returned = st.reestimate_batchnorm(model, batches())
    assert returned is model
    assert modes(model) == flags
    assert (model[1].momentum, model[6].momentum) == (None, 0.3)


def test_batches_limits_the_data() -> None:
    model = conv_bn_model("ste")
    data = batches()
    expected = reference_stats(model, data[:1])
    st.reestimate_batchnorm(model, iter(data), batches=1)
    torch.testing.assert_close(model[6].running_mean, expected[2], rtol=1e-5, atol=1e-6)
    assert model[6].num_batches_tracked.item() == 1


def test_tensor_and_dict_batches() -> None:
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(2)

        def forward(self, features: Tensor, scale: float = 1.0) -> Tensor:
            return self.norm(features * scale)

    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    plain = st.reestimate_batchnorm(nn.BatchNorm1d(2), [x])
    named = st.reestimate_batchnorm(Named(), [{"features": x, "scale": 2.0}])
    assert plain.running_mean.tolist() == [2.0, 4.0]
    assert named.norm.running_mean.tolist() == [4.0, 8.0]


def test_a_failing_forward_changes_nothing() -> None:
    model = conv_bn_model("gumbel")
    model[1].momentum = None
    before, flags = state(model), modes(model)
    data = [*batches(), (torch.randn(4, 5, 6, 6), None)]  # 5 channels: the conv raises
    with pytest.raises(RuntimeError):
        st.reestimate_batchnorm(model, data)
    assert_unchanged(model, before, flags)
    assert (model[1].momentum, model[6].momentum) == (None, 0.3)


def test_the_refusals_change_nothing() -> None:
    model = conv_bn_model("ste")
    before, flags = state(model), modes(model)
    cases = [
        (model, [], ValueError, "got no batch from data"),
        (model, batches(), ValueError, "Invalid batches: 0"),
        (model, [()], ValueError, "empty tuple as a batch"),
    ]
    for target, data, error, message in cases:
        with pytest.raises(error, match=message):
            st.reestimate_batchnorm(target, data, batches=0 if "Invalid" in message else None)
        assert_unchanged(model, before, flags)
    with pytest.raises(TypeError, match="Invalid batches: '2'"):
        st.reestimate_batchnorm(model, batches(), batches="2")  # type: ignore[arg-type]
    assert_unchanged(model, before, flags)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([nn.Linear(2, 2), nn.ReLU()], "found no BatchNorm layer in model 'Sequential'"),
        (
            [nn.BatchNorm1d(2), nn.BatchNorm1d(2, track_running_stats=False)],
            "cannot re-estimate BatchNorm '1': it keeps no running statistics",
        ),
        ([nn.BatchNorm1d(2), nn.LazyBatchNorm1d()], "BatchNorm '1': it is not built yet"),
    ],
)
def test_models_it_cannot_reestimate(layers: list[nn.Module], message: str) -> None:
    model = nn.Sequential(*layers)
    if isinstance(model[0], nn.BatchNorm1d):
        model[0].running_mean.fill_(3.0)
    before, flags = state(model), modes(model)
    with pytest.raises(ValueError, match=message):
        st.reestimate_batchnorm(model, [torch.randn(4, 2)])
    assert_unchanged(model, before, flags)


def test_lazy_and_sync_batchnorm_once_built() -> None:
    model = nn.Sequential(nn.LazyBatchNorm1d(), nn.SyncBatchNorm(3))
    x = torch.randn(8, 3)
    model(x)  # initializes the lazy module
    st.reestimate_batchnorm(model, [x])
    torch.testing.assert_close(model[0].running_mean, x.mean(0))
    torch.testing.assert_close(model[0].running_var, x.var(0, unbiased=True))
