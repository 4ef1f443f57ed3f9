"""Scaled sets in the Keras front: w = alpha * v, v exact members, alpha learned or a statistic."""

from functools import partial

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

from keras import ops  # noqa: E402
from keras.optimizers.schedules import CosineDecay  # noqa: E402

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset._scales import STATISTIC_FLOOR, Scaling  # noqa: E402

from .conftest import variable_grads  # noqa: E402

TERNARY = snapset.Ternary()
# (method, scale, scale_mode): every method with a learned scale, the statistics with theirs
CASES = [
    ("ste", "channel", None),
    ("stochastic", 2, "learned"),
    ("gumbel", "tensor", None),
    ("flip", "channel", None),
    ("ste", "tensor", "absmean"),
    ("ste", 2, "absmax"),
    ("stochastic", "channel", "absmean"),
]


def _dense(method, scale, mode, **options):
    init = keras.initializers.RandomNormal(stddev=0.7, seed=5)
    layer = sk.Dense(
        3,
        TERNARY,
        method,
        scale=scale,
        scale_mode=mode,
        use_bias=False,
        kernel_initializer=init,
        **options,
    )
    layer.build((None, 4))
    return layer


def _expand(members, scales, scaling, shape):
    """The reference expand, in numpy: each scale times the entries of its group."""
    layout = scaling.layout(shape, -1, -2 if len(shape) >= 2 else None)
    grouped = members.reshape(layout.grouped) * scales.reshape(layout.grouped_scale)
    return grouped.reshape(shape)


def _numpy(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def _variable(layer, name):
    (variable,) = (v for v in layer.weights if v.name == name)
    return variable


@pytest.mark.parametrize(("method", "scale", "mode"), CASES)
def test_the_forward_is_alpha_times_exact_members_bit_for_bit(method, scale, mode):
    layer = _dense(method, scale, mode)
    members, scales = layer.scaled_parts()["kernel"]
    assert set(np.unique(members).tolist()) <= {-1.0, 0.0, 1.0}
    expected = _expand(members, scales, Scaling.of(scale, mode, method=method), (4, 3))
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(_numpy(layer.set_value("kernel", training=False)), expected)
    # what a call computes with: the identity's rows pick the kernel's rows exactly
    np.testing.assert_array_equal(_numpy(layer(np.eye(4, dtype="float32"))), expected)
    np.testing.assert_array_equal(layer.exact_weights()["kernel"], expected)
    np.testing.assert_array_equal(_numpy(layer.kernel), expected)


@pytest.mark.parametrize(("method", "scale", "mode"), CASES)
def test_the_scales_are_the_core_statistic(method, scale, mode):
    layer = _dense(method, scale, mode)
    scaling = Scaling.of(scale, mode, method=method)
    layout = scaling.layout((4, 3), -1, -2)
    if scaling.learned:  # the absmean of the drawn kernel (a seeded initializer draws again)
        weight = _numpy(layer.kernel_initializer((4, 3), dtype="float32"))
        statistic = layout.statistic(weight, "absmean", TERNARY)
    else:
        statistic = layout.statistic(layer.get_weights()[0], mode, TERNARY)
    _, scales = layer.scaled_parts()["kernel"]
    assert scales.shape == layout.scale_shape
    np.testing.assert_allclose(scales, statistic, rtol=1e-6)


def test_an_all_zero_group_gets_the_floor():
    layer = sk.Dense(2, TERNARY, scale="channel", scale_mode="absmax", kernel_initializer="zeros")
    layer.build((None, 3))
    members, scales = layer.scaled_parts()["kernel"]
    np.testing.assert_array_equal(scales, np.float32(STATISTIC_FLOOR) * np.ones((1, 2)))
    assert not members.any()


def test_a_learned_scale_gets_the_sum_of_g_times_v_times_alpha_and_the_codes_alpha_times_g():
    layer = _dense("ste", "channel", None, estimator="identity")
    _variable(layer, "kernel_scale_log_gain").assign([[0.5, -0.25, 0.0]])
    rng = np.random.default_rng(0)
    x, upstream = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    members, scales = layer.scaled_parts()["kernel"]
    names = [v.name for v in layer.trainable_variables]
    grads = dict(zip(names, variable_grads(layer, x, upstream, training=True), strict=True))
    g = x.T @ upstream  # dL/dw
    # d alpha / d log_gain = alpha
    expected = (g * members).sum(0, keepdims=True) * scales
    np.testing.assert_allclose(grads["kernel_scale_log_gain"], expected, 1e-4)
    # dv/du = half_range / latent_range = 10 for ternary, then times alpha
    np.testing.assert_allclose(grads["kernel_latent"], g * scales * 10, rtol=1e-4)


@pytest.mark.parametrize(
    ("mode", "given", "estimator"),
    [("absmean", None, "identity"), ("absmax", "clip", "clip"), (None, None, "inward")],
)
def test_a_statistic_scale_defaults_to_bitnets_identity_estimator(mode, given, estimator):
    layer = sk.Dense(2, TERNARY, "stochastic", scale="tensor", scale_mode=mode, estimator=given)
    assert layer.options["estimator"] == layer.get_config()["estimator"] == estimator


def test_a_statistic_scale_passes_the_gradient_straight_through_to_the_float_kernel():
    layer = _dense("ste", "tensor", "absmean")  # the identity estimator by default
    rng = np.random.default_rng(1)
    x, upstream = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    (grad,) = variable_grads(layer, x, upstream, training=True)
    np.testing.assert_allclose(grad, x.T @ upstream, rtol=1e-4, atol=1e-6)  # BitNet's STE


def _regression(seed=0):
    """Targets made by a ternary kernel times 3: only a scale can match them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 8)).astype("float32")
    kernel = rng.integers(-1, 2, size=(8, 2)).astype("float32")
    return x, x @ (3.0 * kernel)


@pytest.mark.slow
def test_a_learned_scale_trains_with_adam_and_closes_the_gap():
    x, y = _regression()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), sk.Dense(2, TERNARY, scale="channel", use_bias=False)]
    )
    # 40 epochs of 8 steps, the rate annealed so that the codes settle
    model.compile(optimizer=keras.optimizers.Adam(CosineDecay(0.05, 320)), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 1e-3 * before
    _, scales = sk.scaled_parts(model)[f"{model.layers[0].name}/kernel"]
    np.testing.assert_allclose(scales, 3.0, rtol=0.03)


@pytest.mark.slow
def test_flip_codes_go_to_bop_and_the_learned_scale_to_adam():
    x, y = _regression(1)
    keras.utils.set_random_seed(0)
    layer = sk.Dense(2, TERNARY, "flip", scale="tensor", use_bias=False)
    model = keras.Sequential([keras.Input((8,)), layer])
    router = sk.Router(flip=sk.Bop(threshold=0.1, gamma=0.05), default=keras.optimizers.Adam(0.05))
    model.compile(optimizer=router, loss="mse")
    router.build(model.trainable_variables)
    assert [v.name for v in router.flip_variables] == ["kernel"]
    assert [v.name for v in router.default_variables] == ["kernel_scale_log_gain"]
    start = layer.scaled_parts()["kernel"]
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    members, scales = layer.scaled_parts()["kernel"]
    assert set(np.unique(members).tolist()) <= {-1.0, 0.0, 1.0}
    assert not np.array_equal(members, start[0]) and not np.array_equal(scales, start[1])
    assert model.evaluate(x, y, verbose=0) < 1e-3 * before
    np.testing.assert_allclose(scales, 3.0, rtol=0.01)  # the codes found the ternary kernel


def _scaled_model():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((6, 2)),
            sk.Conv1D(4, 3, TERNARY, scale="channel", scale_mode="absmean", name="conv"),
            keras.layers.Flatten(),
            sk.Dense(4, TERNARY, "flip", scale=4, name="flip"),
            sk.Multiplier(TERNARY, "gumbel", scale="tensor", name="mul"),
            sk.Dense(2, [-1, 1], scale="channel", input_quantizer=keras.layers.Activation("tanh")),
        ]
    )


@pytest.mark.slow
def test_a_keras_file_round_trips_scales_bit_for_bit(tmp_path):
    model = _scaled_model()
    x = np.random.default_rng(3).normal(size=(16, 6, 2)).astype("float32")
    model.compile(optimizer=sk.Router(flip=sk.Bop(1e-3, 1e-2), default="adam"), loss="mse")
    model.fit(x, np.ones((16, 2), "float32"), epochs=2, verbose=0)
    model.save(tmp_path / "scaled.keras")
    loaded = keras.saving.load_model(tmp_path / "scaled.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    parts, loaded_parts = sk.scaled_parts(model), sk.scaled_parts(loaded)
    assert sorted(parts) == sorted(loaded_parts) and len(parts) == 4
    for key, (members, scales) in parts.items():
        np.testing.assert_array_equal(loaded_parts[key][0], members)
        np.testing.assert_array_equal(loaded_parts[key][1], scales)
    config = loaded.get_layer("flip").get_config()
    assert (config["scale"], config["scale_mode"]) == (4, "learned")
    loaded.fit(x, np.ones((16, 2), "float32"), epochs=1, verbose=0)  # training goes on


def test_harden_leaves_alpha_times_v_bit_for_bit_and_no_scale_variables(tmp_path):
    model = _scaled_model()
    x = np.random.default_rng(4).normal(size=(8, 6, 2)).astype("float32")
    before = model.predict(x, verbose=0)
    exact = sk.exact_weights(model)
    sk.harden_(model)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    flip = model.get_layer("flip")
    assert [v.name for v in flip.weights] == ["kernel", "bias"]
    np.testing.assert_array_equal(flip.get_weights()[0], exact["flip/kernel"])
    assert flip.get_config()["scale"] is None and sk.scaled_parts(model) == {}
    model.save(tmp_path / "hard.keras")
    loaded = keras.saving.load_model(tmp_path / "hard.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)


@pytest.mark.parametrize(
    ("scale", "mode", "method", "message"),
    [
        ("row", None, "ste", "Unknown scale 'row'"),
        (0, None, "ste", "Invalid scale 0"),
        (True, None, "ste", "Invalid scale True"),
        ("tensor", "absmean", "flip", "method 'flip' stores none"),
        ("tensor", "absmax", "gumbel", "method 'gumbel' stores none"),
        ("tensor", "median", "ste", "Unknown scale_mode 'median'"),
        (None, "absmean", "ste", "scale_mode='absmean' needs a scale"),
        ("tensor", None, None, "Option 'scale' needs a method"),
    ],
)
def test_bad_scales_are_refused_when_the_layer_is_made(scale, mode, method, message):
    with pytest.raises(ValueError, match=message):
        sk.Dense(2, TERNARY, method, scale=scale, scale_mode=mode)


def test_a_group_size_that_does_not_divide_the_inputs_is_refused_before_any_variable():
    layer = sk.Dense(2, TERNARY, scale=4)
    with pytest.raises(ValueError, match="does not divide them; choose a group size that does"):
        layer.build((None, 6))
    assert layer.weights == []
    vector = sk.Multiplier(TERNARY, scale=2)
    with pytest.raises(ValueError, match="groups the input axis, and a tensor of shape"):
        vector.build((None, 4))
    assert vector.weights == []


@pytest.mark.parametrize(
    "edit", [{"scale": "tensor"}, {"scale_mode": "absmean"}, {"scale": None, "scale_mode": None}]
)
def test_a_config_edited_after_saving_is_refused(edit, tmp_path):
    layer = sk.Dense(2, TERNARY, scale="channel", name="d")
    model = keras.Sequential([keras.Input((4,)), layer])
    model.save_weights(tmp_path / "w.weights.h5")
    config = {**layer.get_config(), **edit}
    edited = keras.Sequential([keras.Input((4,)), sk.Dense.from_config(config)])
    held = [w.copy() for w in edited.get_weights()]
    with pytest.raises(ValueError, match="the config was edited after saving"):
        edited.load_weights(tmp_path / "w.weights.h5")
    for now, then in zip(edited.get_weights(), held, strict=True):
        np.testing.assert_array_equal(now, then)


def _scale_index(layer, part):
    return [v.name for v in layer.weights].index(f"kernel_scale_{part}")


@pytest.mark.parametrize(
    ("part", "bad", "where"),
    [
        ("start", 0.0, "start' as loaded"),
        ("start", -1.0, "start' as loaded"),
        ("start", np.nan, "start' as loaded"),
        ("start", np.inf, "start' as loaded"),
        ("log_gain", 200.0, r"start' \* exp\(log_gain\) as loaded"),  # exp() overflows
        ("log_gain", -200.0, r"start' \* exp\(log_gain\) as loaded"),  # exp() vanishes
        ("log_gain", np.nan, r"start' \* exp\(log_gain\) as loaded"),
    ],
)
def test_loading_scales_that_are_not_finite_and_positive_is_refused(part, bad, where):
    layer = _dense("ste", "channel", None)
    held = layer.get_weights()
    weights = [w.copy() for w in held]
    weights[_scale_index(layer, part)][0, 1] = bad
    with pytest.raises(ValueError, match=rf"the scales '.*kernel_scale_{where} hold 1 entry"):
        layer.set_weights(weights)
    with pytest.raises(ValueError, match="a scale must be a positive float"):
        layer.load_own_variables({str(i): w for i, w in enumerate(weights)})
    for now, then in zip(layer.get_weights(), held, strict=True):
        np.testing.assert_array_equal(now, then)


@pytest.mark.parametrize(("part", "bad"), [("start", -2.0), ("log_gain", 100.0)])
def test_an_assigned_bad_scale_is_refused_by_every_eager_reader(part, bad):
    layer = _dense("flip", "tensor", None)
    _variable(layer, f"kernel_scale_{part}").assign([[bad]])
    for read in (layer.exact_weights, layer.scaled_parts, layer.harden):
        with pytest.raises(ValueError, match=r"hold 1 entry that is not finite and > 0 \(for ex"):
            read()
    assert layer.method == "flip"  # harden changed nothing


def test_a_step_on_the_log_gain_keeps_alpha_positive_and_small_steps_move_it_by_a_factor():
    layer = _dense("ste", "channel", None)
    start = _numpy(_variable(layer, "kernel_scale_start"))
    keras.optimizers.SGD(1.0).apply(
        [ops.convert_to_tensor([[5.0, -5.0, 0.0]])], [_variable(layer, "kernel_scale_log_gain")]
    )
    _, scales = layer.scaled_parts()["kernel"]
    # a step of -5 on alpha directly would have made these scales (about 0.56) negative
    np.testing.assert_allclose(scales, start * np.exp([[-5.0, 5.0, 0.0]]), rtol=1e-6)
    assert layer.scale_clamps == {"kernel": 0}


def test_a_step_that_makes_a_log_gain_non_finite_or_too_large_is_reset_counted_and_said():
    layer = _dense("ste", "channel", None)
    start = _numpy(_variable(layer, "kernel_scale_start"))
    log_gain = _variable(layer, "kernel_scale_log_gain")
    sgd = keras.optimizers.SGD(1.0)
    sgd.apply([ops.convert_to_tensor([[-90.0, 0.5, np.nan]])], [log_gain])  # exp(90): inf
    np.testing.assert_array_equal(_numpy(log_gain), [[0.0, -0.5, 0.0]])
    _, scales = layer.scaled_parts()["kernel"]
    assert scales[0, 0] == start[0, 0] and scales[0, 2] == start[0, 2]
    if keras.backend.backend() == "jax":  # reset, not counted (see LogGainGuard)
        assert layer.scale_clamps == {"kernel": 0}
        return
    assert layer.scale_clamps == {"kernel": 2}
    with pytest.warns(RuntimeWarning, match="made 2 entries of the log gains of the learned"):
        layer.exact_weights()
    layer.exact_weights()  # said once: warnings are errors here


def test_every_layer_and_a_layer_of_ones_own_take_a_scale():
    conv = sk.Conv2D(3, 2, TERNARY, scale="channel", use_bias=False)
    conv.build((None, 5, 5, 2))
    members, scales = conv.scaled_parts()["kernel"]
    assert members.shape == (2, 2, 2, 3) and scales.shape == (1, 1, 1, 3)
    mul = sk.Multiplier(TERNARY, scale="channel")
    x = np.ones((1, 4), "float32")
    y = _numpy(mul(x))
    members, scales = mul.scaled_parts()["kernel"]
    np.testing.assert_array_equal(y[0], members * scales)

    class Gain(sk.SetLayer):
        def build(self, input_shape):
            self.add_set_weight("gain", (input_shape[-1], 2), "ones")

        def call(self, inputs, training=None):
            return ops.matmul(inputs, self.set_value("gain", training))

    gain = Gain([-1, 1], init="nearest", scale="tensor")
    np.testing.assert_array_equal(_numpy(gain(x)), [[4.0, 4.0]])  # absmean of ones: 1
    names = [v.name for v in gain.weights]
    assert names == ["gain_latent", "gain_scale_log_gain", "gain_scale_start", "gain_scale_clamps"]


def test_an_input_quantizer_runs_before_the_layer_and_round_trips(tmp_path):
    x = np.random.default_rng(5).normal(size=(4, 3)).astype("float32")
    layer = sk.Dense(2, TERNARY, input_quantizer=keras.layers.Activation("tanh"))
    y = _numpy(layer(x))
    expected = np.tanh(x) @ layer.exact_weights()["kernel"] + layer.bias.numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    clone = sk.Dense.from_config(layer.get_config())
    assert isinstance(clone.input_quantizer, keras.layers.Activation)
    assert clone.get_config() == layer.get_config()
    with pytest.raises(TypeError, match=r"input_quantizer must be a keras\.Layer"):
        sk.Dense(2, TERNARY, input_quantizer=np.tanh)


@pytest.mark.parametrize(
    ("scale", "mode"), [("channel", "absmean"), (2, "absmax"), ("tensor", None), (2, None)]
)
def test_the_pytorch_front_computes_the_same_weight_from_the_same_variables(scale, mode):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("snapset.torch")
    rng = np.random.default_rng(6)
    linear = st.constrain(
        torch.nn.Linear(4, 3, bias=False), "weight", TERNARY, scale=scale, scale_mode=mode
    )
    constraint = linear.parametrizations.weight[0]
    stored = rng.normal(scale=0.1, size=(3, 4)).astype("float32")  # PyTorch's (out, in)
    with torch.no_grad():
        linear.parametrizations.weight.original.copy_(torch.from_numpy(stored))
        if constraint.scale.learned:
            log_gain = rng.uniform(-0.7, 0.7, size=constraint.scale.log_gain.shape)
            constraint.scale.log_gain.copy_(torch.from_numpy(log_gain))
    layer = _dense("ste", scale, mode)
    # Keras kernels are (in, out): the same variables, transposed, in the order of
    # layer.weights (the trainable ones first)
    weights = [stored.T]
    if constraint.scale.learned:
        start, log_gain = constraint.scale.start, constraint.scale.log_gain
        weights += [log_gain.detach().numpy().T, start.numpy().T, np.int32(0)]
    layer.set_weights(weights)
    original = linear.parametrizations.weight.original
    members, scales = layer.scaled_parts()["kernel"]
    np.testing.assert_array_equal(members, constraint.hard(original).numpy().T)
    # exp() of XLA (JAX) and of torch may round a learned scale apart by an ulp
    same = np.testing.assert_array_equal
    if keras.backend.backend() == "jax" and constraint.scale.learned:
        same = partial(np.testing.assert_array_max_ulp, maxulp=1)
    same(scales, constraint.scales(original).numpy().T)
    same(layer.exact_weights()["kernel"], linear.weight.detach().numpy().T)


@pytest.mark.parametrize("mode", [None, "absmean"])
def test_mixed_precision_reads_kernels_and_scales_in_their_own_dtype(mode):
    # Keras autocasts a layer's variables to float16 inside a mixed call even with
    # autocast=False; a float16 statistic would differ from the float32 one harden stores.
    x = np.random.default_rng(7).normal(size=(8, 16)).astype("float32")
    for seed in range(4):
        init = keras.initializers.RandomNormal(stddev=0.7, seed=seed)
        layer = sk.Dense(
            8,
            TERNARY,
            scale="channel",
            scale_mode=mode,
            dtype="mixed_float16",
            kernel_initializer=init,
        )
        before = _numpy(layer(x))
        exact = layer.exact_weights()["kernel"]
        layer.harden()
        np.testing.assert_array_equal(_numpy(layer(x)), before)
        np.testing.assert_array_equal(layer.get_weights()[0], exact)


def test_mixed_precision_reads_an_unscaled_latent_in_float32():
    # 0.04999 rounds to float16's 0.05, the ternary threshold, which would go up to 1
    layer = sk.Dense(1, TERNARY, dtype="mixed_float16", use_bias=False)
    layer.build((None, 1))
    layer.set_weights([np.float32([[0.04999]])])
    assert layer.exact_weights()["kernel"].tolist() == [[0.0]]
    assert _numpy(layer(np.ones((1, 1), "float32"))).tolist() == [[0.0]]
