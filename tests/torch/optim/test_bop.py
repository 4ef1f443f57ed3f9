"""Bop for any ordered value set: the rule, its options, its safety nets and its training."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset.torch.optim import HyperparameterSchedule


def _vector(values: snapset.ValueSet | list[float], start: list[float]) -> st.Multiplier:
    layer = st.Multiplier(len(start), values, method="flip")
    layer.weight = torch.tensor(start)
    return layer


def _step(layer: st.Multiplier, opt: torch.optim.Optimizer, grad: list[float]) -> list[float]:
    layer.parametrizations.weight.original.grad = torch.tensor(grad)
    opt.step()
    return layer.weight.tolist()


# ----- the rule, by hand --------------------------------------------------------------------

WORKED = [
    ([-1, 1], [-1, 1, -1, 1], [-0.5, -0.5, 0.5, 0.5], [1, 1, -1, -1]),
    ([0, 1], [0, 1, 0, 1], [-0.5, -0.5, 0.5, 0.5], [1, 1, 0, 0]),
    ([-1, -0.5, 0.5, 1], [-0.5, 0.5, 1, -1], [-0.5, 0.5, -0.5, 0.5], [0.5, -0.5, 1, -1]),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("values", "start", "grad", "expected"), WORKED)
def test_worked_examples_of_the_issue(
    values: list[float], start: list[float], grad: list[float], expected: list[float], foreach: bool
) -> None:
    layer = _vector(values, start)
    opt = st.Bop(layer.parameters(), threshold=0.1, gamma=0.5, foreach=foreach)
    assert _step(layer, opt, grad) == expected


def test_momentum_accumulates_until_it_passes_the_threshold() -> None:
    # m: 0.05, 0.075, 0.0875 against a threshold of 0.08: the move comes at the third step.
    layer = _vector([0, 1], [1.0, 0.0])
    opt = st.Bop(layer.parameters(), threshold=0.08, gamma=0.5)
    assert _step(layer, opt, [0.1, -0.1]) == [1, 0]
    assert _step(layer, opt, [0.1, -0.1]) == [1, 0]
    assert _step(layer, opt, [0.1, -0.1]) == [0, 1]
    momentum = opt.state[layer.parametrizations.weight.original]["momentum"]
    assert momentum.tolist() == pytest.approx([0.0875, -0.0875], rel=1e-6)  # ends keep it


def test_the_threshold_is_strict_and_the_ends_hold() -> None:
    layer = _vector(snapset.Ternary(), [1.0, -1.0, 0.0, 0.0])
    opt = st.Bop(layer.parameters(), threshold=0.25, gamma=0.5)
    # m = [-0.5, 0.5, 0.25, -0.25]: up at the top and down at the bottom stay; |m| = threshold
    # does not move.
    assert _step(layer, opt, [-1.0, 1.0, 0.5, -0.5]) == [1, -1, 0, 0]


def test_never_slides_on_stale_momentum_interior_does_not() -> None:
    # One strong gradient, then none: the stale momentum (0.25 > 0.2) slides an entry of a
    # three-value set a second level only under "never".
    results = {}
    for reset in ("never", "interior", "always"):
        layer = _vector(snapset.Ternary(), [1.0])
        opt = st.Bop(layer.parameters(), threshold=0.2, gamma=0.5, momentum_reset=reset)
        assert _step(layer, opt, [1.0]) == [0.0]
        results[reset] = _step(layer, opt, [0.0])
    assert results == {"never": [-1.0], "interior": [0.0], "always": [0.0]}


def test_interior_keeps_bops_hysteresis_at_the_ends_always_does_not() -> None:
    # A flip from 1 to 0, then a gradient of the other sign: with the momentum kept at the end
    # (0.5 -> 0.0 after the second step) no flip back; with it reset, -0.25 < -0.2 flips back.
    results = {}
    for reset in ("interior", "always"):
        layer = _vector([0, 1], [1.0])
        opt = st.Bop(layer.parameters(), threshold=0.2, gamma=0.5, momentum_reset=reset)
        assert _step(layer, opt, [1.0]) == [0.0]
        results[reset] = _step(layer, opt, [-0.5])
    assert results == {"interior": [0.0], "always": [1.0]}


@pytest.mark.parametrize(("threshold", "moves"), [(0.7, True), (0.71, False)])
def test_relative_threshold_by_hand(threshold: float, moves: bool) -> None:
    # g = [2, 0]: mean square 2, s = 0.5 * 2 = 1, bias-corrected 1 / 0.5 = 2, rms = 1.414;
    # m = [1, 0]: moves iff 1 > threshold * 1.414, that is threshold < 0.7071.
    layer = _vector(snapset.Sign(), [1.0, 1.0])
    opt = st.Bop(layer.parameters(), threshold=threshold, gamma=0.5, threshold_mode="rel")
    assert _step(layer, opt, [2.0, 0.0]) == ([-1.0, 1.0] if moves else [1.0, 1.0])


# ----- against a slow reference -------------------------------------------------------------


def _reference(
    values: snapset.ValueSet,
    w: np.ndarray,
    grads: list[np.ndarray],
    *,
    gamma: float,
    threshold: float,
    mode: str,
    reset: str,
    sigma: float = 0.01,
) -> np.ndarray:
    """The maths boxes of Bop's and Bop2ndOrder's docstrings, one entry at a time, in float64."""
    table, k = list(values.values), len(values)
    index = [table.index(float(x)) for x in w]
    m, v, s = [0.0] * len(w), [0.0] * len(w), 0.0
    for t, g in enumerate(grads, start=1):
        s = (1 - gamma) * s + gamma * float(np.mean(g.astype(np.float64) ** 2))
        theta = threshold if mode == "abs" else threshold * math.sqrt(s / (1 - (1 - gamma) ** t))
        for i in range(len(w)):
            m[i] = (1 - gamma) * m[i] + gamma * float(g[i])
            if mode == "second_moment":
                v[i] = (1 - sigma) * v[i] + sigma * float(g[i]) ** 2
                theta = threshold * math.sqrt(v[i] / (1 - (1 - sigma) ** t))
            new = index[i] - 1 if m[i] > theta else index[i] + 1 if m[i] < -theta else index[i]
            new = min(max(new, 0), k - 1)
            if new != index[i] and (reset == "always" or (reset == "interior" and 0 < new < k - 1)):
                m[i] = 0.0
            index[i] = new
    return np.array([table[i] for i in index])


@pytest.mark.parametrize("reset", ["interior", "never", "always"])
@pytest.mark.parametrize("mode", ["abs", "rel", "second_moment"])
@pytest.mark.parametrize(
    "values",
    [
        snapset.Binary(),
        snapset.ValueSet([1, 2, 3, 4, 5]),
        snapset.ValueSet([1, -1, 0.5, -0.5]),
        snapset.ValueSet([0, 0.1, 0.3]),
    ],
    ids=repr,
)
def test_matches_a_slow_reference(values: snapset.ValueSet, mode: str, reset: str) -> None:
    rng = np.random.default_rng(0)
    n, steps = 64, 25
    start = rng.choice(np.array(values.values), n)
    # Gradients drifting per entry, so that entries travel over several levels.
    drift = rng.normal(0, 1, n)
    grads = [(drift + rng.normal(0, 1, n)).astype(np.float32) for _ in range(steps)]
    layer = st.Multiplier(n, values, method="flip").double()
    layer.weight = torch.tensor(start)
    threshold = 0.3 if mode == "abs" else 0.4
    opt = st.Bop(
        layer.parameters(),
        threshold=threshold,
        gamma=0.3,
        threshold_mode=mode,
        momentum_reset=reset,
        sigma=0.2,
    )
    for g in grads:
        layer.parametrizations.weight.original.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _reference(
        values, start, grads, gamma=0.3, threshold=threshold, mode=mode, reset=reset, sigma=0.2
    )
    assert layer.weight.tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 1  # the case is not trivial


def test_foreach_and_single_tensor_paths_agree_bit_for_bit() -> None:
    def run(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(st.Multiplier(50, [0, 1], method="flip"), nn.Linear(50, 20))
        st.constrain(model[1], "weight", snapset.ValueSet([1, -1, 0.5, -0.5]), method="flip")
        model[1].bias.requires_grad_(False)
        opt = st.Bop(
            st.param_groups(model).flip,
            threshold=0.05,
            gamma=0.2,
            threshold_mode="rel",
            foreach=foreach,
        )
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(8, 50)).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()] + [
            s["momentum"] for s in opt.state.values()
        ]

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)


def _noisy_run(
    values: snapset.ValueSet, mode: str, reset: str, dtype: torch.dtype, foreach: bool
) -> list[torch.Tensor]:
    """Weights, how many changed, and the state after 40 steps of drifting, noisy gradients."""
    data = torch.Generator().manual_seed(0)
    n = 1000
    layer = st.Multiplier(n, values, method="flip").to(dtype)
    table = torch.tensor(values.values, dtype=dtype)
    layer.weight = start = table[torch.randint(0, len(values), (n,), generator=data)]
    threshold = 0.2 if mode != "abs" else 5e-4
    # Rates that float32 does not hold, as a schedule makes them (with this sigma, float32(1 -
    # sigma) differs from 1 - float32(sigma)): every rounding is tested.
    opt = st.Bop(layer.parameters(), threshold, 0.1234567891, sigma=0.012093454672733636,
                 threshold_mode=mode, momentum_reset=reset, foreach=foreach)  # fmt: skip
    drift = torch.randn(n, generator=data, dtype=dtype)
    for _ in range(40):
        noise = torch.randn(n, generator=data, dtype=dtype)
        layer.parametrizations.weight.original.grad = 1e-3 * (drift + 2 * noise)
        opt.step()
    (state,) = opt.state.values()
    weight = layer.weight.detach().clone()
    return [weight, weight.ne(start).sum()] + [state[key] for key in sorted(state)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reset", ["interior", "always", "never"])
@pytest.mark.parametrize("mode", ["abs", "rel", "second_moment"])
@pytest.mark.parametrize(
    "values",
    [
        snapset.Sign(),
        snapset.Ternary(),
        snapset.ValueSet([1, -1, 0.5, -0.5]),
        snapset.ValueSet(range(20)),
    ],
    ids=repr,
)
def test_the_fused_kernel_and_torch_operations_agree_bit_for_bit(
    values: snapset.ValueSet,
    mode: str,
    reset: str,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the CPU one compiled pass moves the entries; elsewhere torch's operations do."""
    fused = _noisy_run(values, mode, reset, dtype, foreach=False)
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")  # no compiled kernels: torch's operations
    for foreach in (False, True):
        for a, b in zip(fused, _noisy_run(values, mode, reset, dtype, foreach), strict=True):
            assert torch.equal(a, b)
    assert fused[1] > 50  # the case is not trivial


def test_the_fused_step_rounds_a_tie_as_torch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry met in a training run (MNIST-1D, Sign, step 682) whose ``m * m`` equals its bar
    in float32: it must not move. Letting LLVM contract freely moved it, in the vectorised
    loop (256 copies of it), not in the scalar one."""
    from snapset.torch.optim import bop

    def run() -> list[torch.Tensor]:
        w, g = torch.ones(256), torch.full((256,), 0.0001596892107045278)
        m, v = torch.full((256,), 7.145320978452219e-06), torch.full((256,), 3.686649e-08)
        rate = 0.004595238095238096
        bop([w], [g], [m], [snapset.Sign()], [torch.zeros(())], [torch.tensor(681.0)],
            second_moments=[v], sigma=rate, gamma=rate, threshold=0.04,
            threshold_mode="second_moment", momentum_reset="always")  # fmt: skip
        return [w, m, v]

    fused = run()
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    for a, b in zip(fused, run(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(fused[0], torch.ones(256))


@pytest.mark.parametrize("mode", ["abs", "second_moment"])
def test_the_fused_step_gives_the_same_bits_on_any_number_of_threads(mode: str) -> None:
    def run(threads: int) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            data = torch.manual_seed(0)
            n = (1 << 21) + 3  # shares of at least 2**20 entries: two threads
            layer = st.Multiplier(n, snapset.ValueSet([1, -1, 0.5, -0.5]), method="flip")
            opt = st.Bop(layer.parameters(), 2e-4, 0.3, threshold_mode=mode)
            for _ in range(3):
                layer.parametrizations.weight.original.grad = 1e-3 * torch.randn(n, generator=data)
                opt.step()
            (state,) = opt.state.values()
            return [layer.weight.detach().clone(), *(state[key] for key in sorted(state))]
        finally:
            torch.set_num_threads(before)

    one = run(1)
    for a, b in zip(one, run(3), strict=True):
        assert torch.equal(a, b)


def test_the_fused_kernel_runs_on_the_cpu_and_bumps_the_version() -> None:
    from snapset._kernels._flip import _KERNELS

    assert _KERNELS.module() is not None  # the dev install has numba: the fast path is tested
    layer = _vector(snapset.Ternary(), [0.0, 1.0, -1.0])
    opt = st.Bop(layer.parameters(), threshold=0.1, gamma=1.0)
    stored = layer.parametrizations.weight.original
    version = stored._version
    assert _step(layer, opt, [1.0, -1.0, -1.0]) == [-1.0, 1.0, 0.0]
    assert stored._version > version  # autograd and the constraint's trust see the write


# ----- safety nets --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradient_skips_the_whole_step(bad: float) -> None:
    first = _vector([0, 1], [0.0, 1.0, 0.0])
    second = _vector(snapset.Ternary(), [0.0, 1.0])
    opt = st.Bop([*first.parameters(), *second.parameters()], threshold=0.01, gamma=0.5)
    _step(first, opt, [0.001, 0.001, 0.001])  # builds some momentum, no move
    before = [s["momentum"].clone() for s in opt.state.values()]
    first.parametrizations.weight.original.grad = torch.tensor([-1.0, bad, -1.0])
    second.parametrizations.weight.original.grad = torch.tensor([1.0, 1.0])
    with pytest.warns(RuntimeWarning, match=r"skipped this step.*1 parameter\(s\) \(shape \(3,\)"):
        opt.step()
    assert first.weight.tolist() == [0.0, 1.0, 0.0]
    assert second.weight.tolist() == [0.0, 1.0]
    state = list(opt.state.values())
    assert all(torch.equal(s["momentum"], b) for s, b in zip(state, before, strict=False))
    assert all(bool(s["grad_sq"].isfinite()) for s in state)
    assert opt.nonfinite_steps == 1
    # The next finite step proceeds, and the count travels with the state.
    assert _step(first, opt, [-1.0, -1.0, 1.0]) == [1.0, 1.0, 0.0]
    resumed = st.Bop([*first.parameters(), *second.parameters()])
    resumed.load_state_dict(opt.state_dict())
    assert resumed.nonfinite_steps == 1


def test_refuses_parameters_that_are_not_flip_constrained() -> None:
    with pytest.raises(ValueError, match=r"not flip-constrained.*param_groups"):
        st.Bop([nn.Parameter(torch.zeros(3))])
    latent = st.constrain(nn.Linear(3, 2), "weight", snapset.Sign(), method="ste")
    with pytest.raises(ValueError, match="parameter 0 of param group 0"):
        st.Bop([latent.parametrizations.weight.original])


def test_refuses_values_outside_the_set_and_leaves_groups_unchanged() -> None:
    good = _vector([0, 1], [0.0, 1.0])
    bad = _vector([0, 1], [0.0, 1.0])
    with torch.no_grad():
        bad.parametrizations.weight.original[0] = 0.25  # e.g. trained by Adam
    opt = st.Bop(good.parameters())
    with pytest.raises(
        snapset.OutsideSetError, match=r"1 value outside ValueSet\(\[0, 1\]\) \(for example 0.25\)"
    ):
        opt.add_param_group({"params": list(bad.parameters())})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": -1.0}, "Invalid threshold: -1.0"),
        ({"threshold": float("nan")}, "Invalid threshold: nan"),
        ({"gamma": 0.0}, r"Invalid gamma: 0.0 \(must be in \(0, 1\]\)"),
        ({"gamma": 1.5}, "Invalid gamma: 1.5"),
        ({"threshold_mode": "relative"}, "Invalid threshold_mode: 'relative'"),
        ({"momentum_reset": "sometimes"}, "Invalid momentum_reset: 'sometimes'"),
    ],
)
def test_validates_hyperparameters_up_front(options: dict[str, object], message: str) -> None:
    layer = _vector([0, 1], [0.0])
    with pytest.raises(ValueError, match=message):
        st.Bop(layer.parameters(), **options)  # type: ignore[arg-type]


# ----- schedules and resuming ---------------------------------------------------------------


def test_schedule_sets_each_step_and_is_checked() -> None:
    layer = _vector([0, 1], [0.0, 1.0])
    opt = st.Bop(layer.parameters(), threshold=1e-3, gamma=0.1)
    schedule = HyperparameterSchedule(opt, "threshold", lambda step: 2.0**step)
    assert opt.param_groups[0]["threshold"] == 1e-3
    schedule.step()
    schedule.step()
    assert opt.param_groups[0]["threshold"] == 4e-3
    with pytest.raises(ValueError, match="has no hyperparameter 'lr'"):
        HyperparameterSchedule(opt, "lr", lambda step: 1.0)
    growing = HyperparameterSchedule(opt, "gamma", lambda step: 20.0 * step)
    growing.step()  # gamma = 2.0, refused at the next step
    layer.parametrizations.weight.original.grad = torch.zeros(2)
    with pytest.raises(ValueError, match=r"Invalid gamma: 2\.0"):
        opt.step()


def _planted_run(steps: int, resume_at: int | None, second: bool = False) -> list[torch.Tensor]:
    """A small flip model trained with rel thresholds (or Bop2ndOrder, ``second``) and a
    schedule, maybe resumed midway."""

    def build() -> tuple[nn.Module, st.Bop, HyperparameterSchedule]:
        torch.manual_seed(1)
        model = nn.Linear(12, 6)
        st.constrain(model, "weight", snapset.ValueSet([1, -1, 0.5, -0.5]), method="flip")
        model.bias.requires_grad_(False)
        flips = st.param_groups(model).flip
        if second:
            opt: st.Bop = st.Bop2ndOrder(flips, threshold=0.1, gamma=0.2, sigma=0.2)
            return model, opt, HyperparameterSchedule(opt, ["gamma", "sigma"], lambda t: 0.9**t)
        opt = st.Bop(flips, threshold=0.3, gamma=0.2, threshold_mode="rel")
        return model, opt, HyperparameterSchedule(opt, "gamma", lambda t: 0.9**t)

    data = torch.Generator().manual_seed(2)
    teacher = torch.randn(6, 12, generator=data)
    model, opt, schedule = build()
    for step in range(steps):
        if step == resume_at:
            buffer = io.BytesIO()
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "s": schedule.state_dict()},
                buffer,
            )
            buffer.seek(0)
            saved = torch.load(buffer)
            model, opt, schedule = build()  # a fresh process, as far as the run can tell
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            schedule.load_state_dict(saved["s"])
        x = torch.randn(32, 12, generator=data)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), x @ teacher.T).backward()
        opt.step()
        schedule.step()
    state = next(iter(opt.state.values()))
    return [model.weight.detach().clone(), *(state[key] for key in sorted(state))]


@pytest.mark.parametrize("second", [False, True])
def test_resumed_run_equals_uninterrupted_bit_for_bit(second: bool) -> None:
    straight = _planted_run(30, resume_at=None, second=second)
    resumed = _planted_run(30, resume_at=13, second=second)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(straight[0], _planted_run(13, None, second)[0])  # it kept learning


def test_relative_thresholds_do_not_depend_on_the_loss_scale() -> None:
    def run(mode: str, scale: float) -> torch.Tensor:
        torch.manual_seed(0)
        layer = st.constrain(nn.Linear(16, 8, bias=False), "weight", snapset.Sign(), "flip")
        threshold = {"rel": 0.5, "abs": 1e-3, "second_moment": 0.1}[mode]
        opt = st.Bop(layer.parameters(), threshold, 0.1, threshold_mode=mode, sigma=0.1)
        data = torch.Generator().manual_seed(1)
        teacher = torch.randn(8, 16, generator=data).sign()
        for _ in range(20):
            x = torch.randn(64, 16, generator=data)
            opt.zero_grad()
            (scale * nn.functional.mse_loss(layer(x), x @ teacher.T)).backward()
            opt.step()
        return layer.weight.detach().clone()

    for mode in ("rel", "second_moment"):
        assert torch.equal(run(mode, 1.0), run(mode, 1024.0))
        assert torch.equal(run(mode, 1.0), run(mode, 2.0**-10))
    assert not torch.equal(run("abs", 1.0), run("abs", 2.0**-10))


# ----- training -----------------------------------------------------------------------------


def test_planted_binary_matrix_is_recovered_by_bop_alone() -> None:
    data = torch.Generator().manual_seed(0)
    planted = torch.randint(0, 2, (64, 32), generator=data).float()
    x = torch.randn(2048, 32, generator=data)
    y = x @ planted.T + 0.5 * torch.randn(2048, 64, generator=data)  # noisy samples
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), "flip")
    assert int((layer.weight != planted).sum()) > 900  # starts about half wrong
    opt = st.Bop(layer.parameters(), threshold=3e-3, gamma=0.1)
    for _ in range(100):
        batch = torch.randint(0, 2048, (128,), generator=data)
        opt.zero_grad()
        nn.functional.mse_loss(layer(x[batch]), y[batch]).backward()
        opt.step()
        assert bool(((layer.weight == 0) | (layer.weight == 1)).all())
    assert int((layer.weight != planted).sum()) == 0


def test_planted_multiplier_over_four_values_is_recovered_by_bop_alone() -> None:
    values = [1, -1, 0.5, -0.5]
    data = torch.Generator().manual_seed(0)
    planted = torch.tensor(values)[torch.randint(0, 4, (64,), generator=data)]
    torch.manual_seed(0)
    layer = st.Multiplier(64, values, method="flip")
    assert int((layer.weight != planted).sum()) > 30
    opt = st.Bop(layer.parameters(), threshold=3e-3, gamma=0.1)
    for _ in range(150):
        x = torch.randn(256, 64, generator=data)
        y = x * planted + 0.3 * torch.randn(256, 64, generator=data)
        opt.zero_grad()
        nn.functional.mse_loss(layer(x), y).backward()
        opt.step()
        assert bool(torch.isin(layer.weight, torch.tensor(values)).all())
    assert torch.equal(layer.weight, planted)


def test_routing_a_mixed_model_between_bop_and_adam() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    st.constrain(model[0], "weight", snapset.Sign(), method="flip")
    st.constrain(model[2], "weight", snapset.Ternary(), method="ste")
    groups = st.param_groups(model)
    assert groups.counts() == {
        "flip": (1, 512),
        "latent": (1, 1024),
        "other": (4, 32 + 32 + 128 + 4),
    }
    everything = groups.flip + groups.latent + groups.other
    assert len({id(p) for p in everything}) == len(list(model.parameters())) == len(everything)
    with pytest.raises(ValueError, match="not flip-constrained"):
        st.Bop(model.parameters())
    flip_opt = st.Bop(groups.flip, threshold=1e-4, gamma=0.05)
    float_opt = torch.optim.Adam(groups.latent + groups.other, lr=3e-3)
    data = torch.Generator().manual_seed(1)
    teacher = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(300):
        x = torch.randn(64, 16, generator=data)
        with torch.no_grad():
            target = teacher(x)
        flip_opt.zero_grad()
        float_opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        flip_opt.step()
        float_opt.step()
        losses.append(loss.item())
        assert bool(model[0].weight.abs().eq(1).all())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    for old, new in zip(before, model.parameters(), strict=True):
        assert not torch.equal(old, new)
    assert set(model[2].weight.unique().tolist()) <= {-1.0, 0.0, 1.0}


def _step_in_child(queue: object) -> None:
    """Two shares of a compiled step, on numpy arrays (a forked child must not use torch's
    OpenMP threads after its parent did: that is torch's own limit)."""
    from snapset._kernels import flip_step

    n = (1 << 21) + 3
    values, momentum = np.ones(n, np.float32), np.zeros(n, np.float32)
    grad = np.full(n, 1.0, np.float32)
    table, midpoints = np.array([-1, 0, 1], np.float32), np.array([-0.5, 0.5], np.float32)
    moved = flip_step(values, momentum, grad, None, gamma=0.5, sigma=0.01, correction=1.0,
                      threshold=0.1, stride=1.0, table=table, midpoints=midpoints,
                      momentum_reset="always", threads=2)  # fmt: skip
    queue.put(moved)  # type: ignore[attr-defined]


def test_the_fused_step_runs_in_a_forked_child_after_the_parent_used_its_threads() -> None:
    """A forked child has none of its parent's threads: the step makes its own."""
    import multiprocessing
    import queue

    parent: queue.Queue[int] = queue.Queue()
    _step_in_child(parent)  # the parent's pool exists now
    assert parent.get() == (1 << 21) + 3
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_step_in_child, args=(results,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and results.get(timeout=1) == (1 << 21) + 3
