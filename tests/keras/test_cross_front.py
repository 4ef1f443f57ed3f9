"""The Keras front and the PyTorch front agree on the same inputs, bit for bit."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset.keras import _ops  # noqa: E402

torch = pytest.importorskip("torch")
st = pytest.importorskip("snapset.torch")
from snapset.torch.optim import bop as torch_bop  # noqa: E402

SETS = [
    snapset.Binary(),
    snapset.Sign(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.7, 3, 100]),  # uneven gaps
]


def latents_with_ties(values, r=0.1, n=400, seed=0):
    """Random latents around the range, plus every level and threshold exactly (the ties)."""
    t = _ops.tables(values, "float32", r)
    rng = np.random.default_rng(seed)
    random = rng.uniform(-1.6 * r, 1.6 * r, n).astype("float32")
    return np.concatenate([random, t.levels, t.thresholds, -t.thresholds]).astype("float32")


def torch_ste(values, **options):
    layer = torch.nn.Linear(1, 1)
    st.constrain(layer, "weight", values, "ste", **options)
    return layer.parametrizations.weight[0]


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_nearest_values_and_ties_agree(values):
    u = latents_with_ties(values)
    keras_values = ops.convert_to_numpy(
        _ops.nearest(ops.convert_to_tensor(u), _ops.tables(values, "float32"))
    )
    torch_values = torch_ste(values).hard(torch.from_numpy(u)).numpy()
    np.testing.assert_array_equal(keras_values, torch_values)
    np.testing.assert_array_equal(np.unique(keras_values), np.float32(values.values))


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("estimator", snapset.keras.ESTIMATORS)
def test_straight_through_gradients_agree(values, estimator, fgrad):
    t = _ops.tables(values, "float32")
    u = latents_with_ties(values)
    upstream = np.random.default_rng(1).standard_normal(u.shape).astype("float32")
    forward, grad = fgrad(
        lambda x: _ops.straight_through(x, _ops.nearest(x, t), t, estimator), u, upstream
    )
    constraint = torch_ste(values, estimator=estimator)
    tu = torch.tensor(u, requires_grad=True)
    out = constraint(tu)
    out.backward(torch.from_numpy(upstream))
    np.testing.assert_array_equal(forward, out.detach().numpy())
    np.testing.assert_array_equal(grad, tu.grad.numpy())


def test_spread_init_agrees():
    from snapset.torch._methods import spread as torch_spread

    weight = np.random.default_rng(2).standard_normal((7, 5)).astype("float32")
    for values in SETS:
        ours = ops.convert_to_numpy(_ops.spread(ops.convert_to_tensor(weight), values))
        theirs = torch_spread(torch.from_numpy(weight), values).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * values.half_range)
        np.testing.assert_array_equal(values.project(ours), values.project(theirs))


@pytest.mark.parametrize("method", ["ste", "stochastic"])
def test_a_dense_layer_computes_what_a_constrained_linear_computes(method, grads):
    values = snapset.ValueSet([1, -1, 0.5, -0.5])
    rng = np.random.default_rng(3)
    latent = rng.uniform(-0.12, 0.12, (6, 3)).astype("float32")
    x = rng.standard_normal((5, 6)).astype("float32")
    upstream = rng.standard_normal((5, 3)).astype("float32")

    layer = sk.Dense(3, values, method, use_bias=False)
    layer.build((None, 6))
    layer.weights[0].assign(latent)
    ours = ops.convert_to_numpy(layer(x))
    (our_grad,) = grads(layer, x, upstream)

    linear = st.constrain(torch.nn.Linear(6, 3, bias=False), "weight", values, method)
    linear.eval()  # stochastic rounding in eval: the nearest value, as Keras' inference
    with torch.no_grad():
        linear.parametrizations.weight.original.copy_(torch.from_numpy(latent.T))
    out = linear(torch.from_numpy(x))
    out.backward(torch.from_numpy(upstream))
    np.testing.assert_allclose(ours, out.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layer.exact_weights()["kernel"], linear.weight.detach().numpy().T)
    np.testing.assert_allclose(
        our_grad, linear.parametrizations.weight.original.grad.numpy().T, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize(
    ("threshold_mode", "threshold", "momentum_reset"),
    [
        ("abs", 1e-3, "interior"),
        ("abs", 0.0, "always"),
        ("abs", 2e-3, "never"),
        ("rel", 0.3, "interior"),
    ],
)
def test_bop_steps_agree(values, threshold_mode, threshold, momentum_reset):
    rng = np.random.default_rng(4)
    start = np.asarray(values.values, "float32")[rng.integers(0, len(values), 40)]
    gamma = 0.3
    layer = sk.Multiplier(values, "flip")
    layer.build((None, 40))
    layer.weights[0].assign(start)
    bop = sk.Bop(threshold, gamma, threshold_mode=threshold_mode, momentum_reset=momentum_reset)

    w, m = torch.from_numpy(start.copy()), torch.zeros(40)
    s, steps = torch.zeros(()), torch.zeros(())
    moves = 0
    for _ in range(12):
        g = (rng.standard_normal(40) * 0.01 + rng.standard_normal() * 0.005).astype("float32")
        before = w.clone()
        bop.apply([g], layer.trainable_variables)
        torch_bop(
            [w],
            [torch.from_numpy(g)],
            [m],
            [values],
            [s],
            [steps],
            gamma=gamma,
            threshold=threshold,
            threshold_mode=threshold_mode,
            momentum_reset=momentum_reset,
        )
        moves += int((w != before).sum())
        np.testing.assert_array_equal(layer.exact_weights()["kernel"], w.numpy())
        # torch's lerp rounds once (a fused multiply-add), keras.ops twice: an ulp or so apart.
        np.testing.assert_allclose(
            ops.convert_to_numpy(bop._momentums[0]), m.numpy(), rtol=1e-6, atol=1e-8
        )
    assert moves > 20  # the rule was exercised, not only the momentum


def test_bad_input_gets_the_same_messages_as_the_torch_front():
    calls = [
        (
            lambda: sk.Dense(2, [0, 1], estimator="clipp"),
            lambda m: st.constrain(m, "weight", [0, 1], estimator="clipp"),
        ),
        (
            lambda: sk.Dense(2, [0, 1], latent_range=-1.0),
            lambda m: st.constrain(m, "weight", [0, 1], latent_range=-1.0),
        ),
        (
            lambda: sk.Dense(2, [0, 1], "flip", estimator="clip"),
            lambda m: st.constrain(m, "weight", [0, 1], "flip", estimator="clip"),
        ),
        (
            lambda: sk.Dense(2, [0, 1], init="zeros"),
            lambda m: st.constrain(m, "weight", [0, 1], init="zeros"),
        ),
        (lambda: sk.Dense(2, [1, 1]), lambda m: st.constrain(m, "weight", [1, 1])),
        (
            lambda: sk.Dense(2, [0, float("nan")]),
            lambda m: st.constrain(m, "weight", [0, float("nan")]),
        ),
        (lambda: sk.Dense(2, ["a", "b"]), lambda m: st.constrain(m, "weight", ["a", "b"])),
        (lambda: sk.Bop(threshold=-1.0), lambda m: st.Bop([], threshold=-1.0)),
        (lambda: sk.Bop(gamma=0.0), lambda m: st.Bop([], gamma=0.0)),
        (
            lambda: sk.Bop(threshold_mode="relative"),
            lambda m: st.Bop([], threshold_mode="relative"),
        ),
        (
            lambda: sk.Bop(momentum_reset="sometimes"),
            lambda m: st.Bop([], momentum_reset="sometimes"),
        ),
        (lambda: sk.Bop(threshold="1e-3"), lambda m: st.Bop([], threshold="1e-3")),
    ]
    for ours, theirs in calls:
        with pytest.raises((ValueError, TypeError)) as torch_error:
            theirs(torch.nn.Linear(2, 2))
        with pytest.raises(torch_error.type) as keras_error:
            ours()
        assert str(keras_error.value) == str(torch_error.value)
