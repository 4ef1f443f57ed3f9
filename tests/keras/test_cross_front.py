"""The Keras front and the PyTorch front agree on the same inputs, bit for bit.

Only the public API of :mod:`snapset.torch` is used here."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402

torch = pytest.importorskip("torch")
st = pytest.importorskip("snapset.torch")

SETS = [
    snapset.Binary(),
    snapset.Sign(),
    snapset.Ternary(),
    snapset.ValueSet([1, -1, 0.5, -0.5]),
    snapset.ValueSet([0, 0.1, 0.7, 3, 100]),  # uneven gaps
]


def latents_with_ties(values, r=0.1, n=400, seed=0):
    """Random latents around the range, plus every level and threshold exactly (the ties)."""
    t = values.tables("float32", latent_range=r)
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
        sk.STE(values, "float32", "w").hard(ops.convert_to_tensor(u))
    )
    torch_values = torch_ste(values).hard(torch.from_numpy(u)).numpy()
    np.testing.assert_array_equal(keras_values, torch_values)
    np.testing.assert_array_equal(np.unique(keras_values), np.float32(values.values))


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("estimator", snapset.keras.ESTIMATORS)
def test_straight_through_gradients_agree(values, estimator, fgrad):
    ste = sk.STE(values, "float32", "w", estimator=estimator)
    u = latents_with_ties(values)
    upstream = np.random.default_rng(1).standard_normal(u.shape).astype("float32")
    forward, grad = fgrad(lambda x: ste.value(x, True, None), u, upstream)
    constraint = torch_ste(values, estimator=estimator)
    tu = torch.tensor(u, requires_grad=True)
    out = constraint(tu)
    out.backward(torch.from_numpy(upstream))
    np.testing.assert_array_equal(forward, out.detach().numpy())
    np.testing.assert_array_equal(grad, tu.grad.numpy())


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_spread_init_agrees_bit_for_bit(values):
    weight = np.random.default_rng(2).standard_normal((7, 5)).astype("float32")  # (in, out)
    dense = sk.Dense(5, values, use_bias=False, kernel_initializer=lambda shape, dtype: weight)
    dense.build((None, 7))
    linear = torch.nn.Linear(7, 5, bias=False)  # (out, in): the same entries, transposed
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.T))
    st.constrain(linear, "weight", values, "ste")
    # Both spread in float64 and round once; then both store the same latents.
    np.testing.assert_array_equal(
        dense.get_weights()[0], linear.parametrizations.weight.original.detach().numpy().T
    )


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

    linear = st.constrain(torch.nn.Linear(40, 1, bias=False), "weight", values, "flip")
    with torch.no_grad():
        linear.weight = torch.from_numpy(start[None])  # stored as it is: members of the set
    w = linear.parametrizations.weight.original
    torch_bop = st.Bop(
        [w], threshold, gamma, threshold_mode=threshold_mode, momentum_reset=momentum_reset
    )
    moves = 0
    for _ in range(12):
        g = (rng.standard_normal(40) * 0.01 + rng.standard_normal() * 0.005).astype("float32")
        before = w.detach().clone()
        bop.apply([g], layer.trainable_variables)
        w.grad = torch.from_numpy(g[None])
        torch_bop.step()
        moves += int((w != before).sum())
        np.testing.assert_array_equal(layer.exact_weights()["kernel"], w.detach().numpy()[0])
        # torch's lerp rounds once (a fused multiply-add), keras.ops twice: an ulp or so apart.
        np.testing.assert_allclose(
            ops.convert_to_numpy(bop._momentums[0]),
            torch_bop.state[w]["momentum"].numpy()[0],
            rtol=1e-6,
            atol=1e-8,
        )
    assert moves > 20  # the rule was exercised, not only the momentum


def torch_gumbel(values, **options):
    layer = st.constrain(torch.nn.Linear(1, 1), "weight", values, "gumbel", **options)
    return layer.parametrizations.weight[0]


def logits_with_ties(values, n=300, seed=4):
    """Random stored logits, and rows where two or all logits tie for the largest."""
    k = len(values)
    rng = np.random.default_rng(seed)
    random = rng.uniform(-0.3, 0.3, (n, k)).astype("float32")
    rounded = np.round(random * 10) / 10  # many ties among few numbers, -0.0 against 0.0 too
    return np.concatenate([random, rounded, np.zeros((1, k))]).astype("float32")


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_gumbel_inference_values_and_codes_agree_bit_for_bit(values):
    u = logits_with_ties(values)
    gumbel = sk.GumbelSoftmax(values, "float32", "w")
    constraint = torch_gumbel(values).eval()
    tu = torch.from_numpy(u)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(gumbel.hard(ops.convert_to_tensor(u))), constraint(tu).numpy()
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(gumbel.codes(u)), constraint.codes(tu).numpy().astype("int32")
    )


@pytest.mark.parametrize("values", SETS, ids=repr)
def test_gumbel_stores_assigned_values_alike(values):
    x = np.linspace(values.values[0] - 1, values.values[-1] + 1, 41).astype("float32")
    ours = ops.convert_to_numpy(sk.GumbelSoftmax(values, "float32", "w").right_inverse(x))
    theirs = torch_gumbel(values).right_inverse(torch.from_numpy(x)).numpy()
    # both fronts compute the logits from snapset._spec.gumbel_logit_scale: bit for bit
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("values", SETS, ids=repr)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_gumbel_straight_through_gradients_agree(values, temperature, fgrad):
    from snapset.keras._functional import gumbel_straight_through
    from snapset.torch._functional import gumbel_expectation_grad

    noisy = logits_with_ties(values) * 10  # logits plus noise, on the logit scale
    table = values.tables("float32").values.astype("float32")
    upstream = np.random.default_rng(5).standard_normal(noisy.shape[:-1]).astype("float32")
    forward, grad = fgrad(
        lambda y: gumbel_straight_through(y, ops.convert_to_tensor(table), temperature),
        noisy,
        upstream,
    )
    constraint = torch_gumbel(values).eval()
    np.testing.assert_array_equal(forward, constraint(torch.from_numpy(noisy)).numpy())
    expected = gumbel_expectation_grad(
        torch.from_numpy(noisy), torch.from_numpy(table), temperature, torch.from_numpy(upstream)
    ).numpy()
    # The same formula; softmax may round differently per backend.
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def same_bits(actual, expected, jax_ulps):
    """Equal bit for bit; on JAX within ``jax_ulps`` (XLA sums in float32 there, and its
    ``exp`` and divisions may round otherwise)."""
    if keras.backend.backend() == "jax":
        np.testing.assert_array_max_ulp(actual, expected, maxulp=jax_ulps)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("values", [snapset.Sign(), snapset.ValueSet(range(-8, 8))], ids=repr)
def test_a_learned_scale_starts_alike_and_the_same_log_gain_gives_the_same_weights(values):
    rng = np.random.default_rng(7)
    kernel = rng.normal(scale=0.05, size=(96, 4)).astype("float32")  # Keras's (in, out)
    dense = sk.Dense(
        4, values, scale="channel", use_bias=False, kernel_initializer=lambda shape, dtype: kernel
    )
    dense.build((None, 96))
    linear = torch.nn.Linear(96, 4, bias=False)  # (out, in): the same entries, transposed
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(kernel.T))
    st.constrain(linear, "weight", values, scale="channel")
    scale = linear.parametrizations.weight[0].scale
    variables = {v.name: v for v in dense.weights}
    start = ops.convert_to_numpy(variables["kernel_scale_start"])
    # the absmean summed in float64 and rounded once: the same whatever the order of the sum
    layout = scale.scaling.layout(kernel.shape, -1, -2)
    same_bits(start, layout.statistic(kernel, "absmean", values).astype("float32"), 2)
    # the PyTorch front too
    same_bits(scale.start.numpy().T, start, 2)
    np.testing.assert_array_equal(ops.convert_to_numpy(variables["kernel_scale_log_gain"]), 0.0)
    log_gain = rng.uniform(-1.0, 1.0, size=(1, 4)).astype("float32")
    variables["kernel_scale_log_gain"].assign(log_gain)
    with torch.no_grad():
        scale.start.copy_(torch.from_numpy(start.T))
        scale.log_gain.copy_(torch.from_numpy(log_gain.T))
        latent = ops.convert_to_numpy(variables["kernel_latent"])
        linear.parametrizations.weight.original.copy_(torch.from_numpy(latent.T))
    _, alpha = dense.scaled_parts()["kernel"]
    same_bits(alpha, scale.alpha.detach().numpy().T, 1)
    weight = linear.weight.detach().numpy().T
    same_bits(dense.exact_weights()["kernel"], weight, 1)
    same_bits(ops.convert_to_numpy(dense.set_value("kernel", training=True)), weight, 1)
