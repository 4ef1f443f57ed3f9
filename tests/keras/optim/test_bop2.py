"""The second-moment Bop in Keras: its rule by hand, against the PyTorch front, its scale
invariance, a planted problem with its defaults alone, and saving."""

import numpy as np
import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)
ops = keras.ops


from tests.keras.conftest import flip_layer, planted_multiplier  # noqa: E402

import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402
from snapset.keras.optim import Bop2ndOrder  # noqa: E402

FOUR = snapset.ValueSet([1, -1, 0.5, -0.5])


def weights_after_each_step(optimizer, layer, grads):
    history = []
    for grad in grads:
        optimizer.apply([np.asarray(grad, "float32")], layer.trainable_variables)
        history.append(layer.get_weights()[0].tolist())
    return history


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e3])
def test_a_steady_gradient_moves_entries_at_the_step_the_formula_says(scale):
    gamma, threshold = 0.2, 0.5
    # A steady g gives |m_t| / sqrt(v_t / c_t) = 1 - (1 - gamma)^t, whatever g and sigma are.
    first = next(t for t in range(1, 100) if 1 - (1 - gamma) ** t > threshold)
    assert first == 4
    layer = flip_layer(snapset.Ternary(), [1.0, -1.0, 0.0])
    bop = Bop2ndOrder(threshold, gamma, sigma=0.05, momentum_reset="always")
    grad = [scale, -scale, 0.0]  # down, up, no evidence at all
    history = weights_after_each_step(bop, layer, [grad] * (2 * first + 2))
    expected = (
        [[1.0, -1.0, 0.0]] * (first - 1)
        + [[0.0, 0.0, 0.0]] * first  # each move restarts m: the next needs as long again
        + [[-1.0, 1.0, 0.0]] * 3
    )
    assert history == expected


def test_only_the_second_moment_mode_keeps_a_second_moment():
    layer = flip_layer(snapset.Sign(), [1.0, -1.0])
    plain, second = sk.Bop(), Bop2ndOrder()
    plain.build(layer.trainable_variables)
    second.build(layer.trainable_variables)
    assert not plain._second_moments
    assert len(second._second_moments) == 1
    assert len(second.variables) == len(plain.variables) + 1


def test_a_non_finite_gradient_leaves_the_second_moment_unchanged():
    layer = flip_layer(snapset.Sign(), [1.0, -1.0, 1.0])
    bop = Bop2ndOrder()
    bop.apply([np.array([0.1, -0.2, 0.3], "float32")], layer.trainable_variables)
    moment = ops.convert_to_numpy(bop._second_moments[0])
    assert (moment > 0).all()
    bop.apply([np.array([1.0, np.inf, 1.0], "float32")], layer.trainable_variables)
    np.testing.assert_array_equal(ops.convert_to_numpy(bop._second_moments[0]), moment)
    assert bop.nonfinite_steps == 1
    assert int(bop._finite_steps.numpy()) == 1  # the bias correction's step did not advance


def test_the_defaults_are_the_shared_ones_and_the_config_round_trips():
    config = Bop2ndOrder().get_config()
    shared = {k: v for k, v in _spec.BOP2_DEFAULTS.items() if k != "threshold_mode"}
    assert {k: config[k] for k in shared} == shared
    assert "threshold_mode" not in config and "learning_rate" not in config
    bop = Bop2ndOrder(0.1, 0.05, 0.02, momentum_reset="never")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(bop))
    assert type(restored) is Bop2ndOrder and restored.get_config() == bop.get_config()
    assert restored.threshold_mode == "second_moment"


def test_bop_takes_the_second_moment_mode_and_sigma_as_options():
    bop = sk.Bop(0.1, 0.05, threshold_mode="second_moment", sigma=0.02)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(bop))
    assert restored.threshold_mode == "second_moment" and restored.sigma == 0.02
    with pytest.raises(ValueError, match=r"Invalid sigma: 0.0 \(must be in \(0, 1\]\)"):
        sk.Bop(sigma=0.0)
    with pytest.raises(TypeError, match=r"threshold_mode is 'second_moment'.*Bop\("):
        Bop2ndOrder(threshold_mode="abs")


def holds_float64():
    return keras.backend.standardize_dtype(ops.convert_to_tensor(np.zeros(1)).dtype) == "float64"


@pytest.mark.parametrize("rate", [1.0, 0.1, 1e-2, 1e-3])
def test_the_bias_correction_is_rounded_as_the_pytorch_fronts_python_floats(rate):
    from snapset.keras.optim._bop import _bias_correction

    steps = np.arange(1, 3001, dtype="float32")
    ours = ops.convert_to_numpy(_bias_correction(rate, ops.convert_to_tensor(steps), "float32"))
    expected = np.float32([1.0 - (1.0 - rate) ** float(t) for t in steps])
    if holds_float64():
        np.testing.assert_array_equal(ours, expected)
    else:  # JAX without jax_enable_x64 computes in float32 (a power there: 200 ulps off)
        np.testing.assert_array_max_ulp(ours, expected, maxulp=8)


def drifting_gradients(rng, size, steps):
    """Noisy gradients around a mean that drifts, changing sign now and then."""
    mean = rng.standard_normal(size)
    for _ in range(steps):
        mean += 0.3 * rng.standard_normal(size)
        yield (0.01 * (mean + 2.0 * rng.standard_normal(size))).astype("float32")


@pytest.mark.parametrize("values", [snapset.Ternary(), FOUR], ids=repr)
@pytest.mark.parametrize("momentum_reset", _spec.MOMENTUM_RESETS)
@pytest.mark.parametrize(
    "options", [{}, {"threshold": 0.3, "gamma": 0.1, "sigma": 0.05}], ids=["defaults", "fast"]
)
def test_steps_agree_with_the_pytorch_front_bit_for_bit(values, momentum_reset, options):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("snapset.torch")
    rng = np.random.default_rng(7)
    size = 300
    start = np.asarray(values.values, "float32")[rng.integers(0, len(values), size)]
    layer = flip_layer(values, start)
    bop = Bop2ndOrder(momentum_reset=momentum_reset, **options)
    linear = st.constrain(torch.nn.Linear(size, 1, bias=False), "weight", values, "flip")
    with torch.no_grad():
        linear.weight = torch.from_numpy(start[None])  # stored as it is: members of the set
    w = linear.parametrizations.weight.original
    torch_bop = st.Bop2ndOrder([w], momentum_reset=momentum_reset, **options)
    moves = 0
    for g in drifting_gradients(rng, size, 30):
        before = w.detach().clone()
        bop.apply([g], layer.trainable_variables)
        w.grad = torch.from_numpy(g[None])
        torch_bop.step()
        moves += int((w != before).sum())
        np.testing.assert_array_equal(layer.get_weights()[0], w.detach().numpy()[0])
        # torch's CPU lerp and addcmul round once (fused multiply-adds), keras.ops twice:
        # the averages are an ulp or so of their scale apart, the moves the same.
        state = torch_bop.state[w]
        for ours, theirs in [(bop._momentums, "momentum"), (bop._second_moments, "second_moment")]:
            expected = state[theirs].numpy()[0]
            np.testing.assert_allclose(
                ops.convert_to_numpy(ours[0]), expected, rtol=0, atol=1e-6 * abs(expected).max()
            )
    assert moves > 30  # the rule was exercised, not only the averages


class WeightsEachEpoch(keras.callbacks.Callback):
    """The flip weights at the start of training and after each epoch."""

    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_begin(self, logs=None):
        self.on_epoch_end(-1)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(self.model.layers[0].get_weights()[0].copy())


def fit_multiplier(values, x, y, epochs, optimizer, loss="mse"):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((x.shape[1],)), sk.Multiplier(values, "flip")])
    model.compile(optimizer=optimizer, loss=loss)
    record = WeightsEachEpoch()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[record])
    return model, record.history


@pytest.mark.parametrize("values", [snapset.Sign(), FOUR], ids=repr)
def test_the_forum_multiplier_is_recovered_with_the_defaults_alone(values):
    planted, x, y = planted_multiplier(values)
    _, history = fit_multiplier(values, x, y, 4, Bop2ndOrder())
    assert (history[0] != planted).mean() > 0.3  # the start is far from the answer
    np.testing.assert_array_equal(history[-1], planted)
    np.testing.assert_array_equal(history[-2], planted)  # and it stays there


def test_scaling_the_loss_by_a_power_of_two_leaves_the_run_bit_identical():
    _, x, y = planted_multiplier(FOUR, features=16, samples=512)

    def scaled_mse(scale):
        return lambda target, output: scale * ops.mean(ops.square(target - output), axis=-1)

    runs = [
        fit_multiplier(FOUR, x, y, 3, Bop2ndOrder(), loss=scaled_mse(scale))[1]
        for scale in (1.0, 1024.0, 2.0**-10)
    ]
    assert not np.array_equal(runs[0][0], runs[0][-1])  # entries moved during the run
    for run in runs[1:]:
        np.testing.assert_array_equal(np.stack(run), np.stack(runs[0]))


def test_a_saved_model_keeps_its_second_moment_optimizer(tmp_path):
    _, x, y = planted_multiplier(snapset.Sign(), features=8, samples=256)
    y = y @ np.random.default_rng(0).standard_normal((8, 2)).astype("float32")
    model = keras.Sequential(
        [keras.Input((8,)), sk.Multiplier(snapset.Sign(), "flip"), keras.layers.Dense(2)]
    )
    flip = Bop2ndOrder(0.05, 0.02, 0.03, momentum_reset="interior")
    model.compile(optimizer=sk.Router(flip=flip, default="adam"), loss="mse")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    restored = loaded.optimizer.flip
    assert type(restored) is Bop2ndOrder and restored.get_config() == flip.get_config()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(restored._second_moments[0]),
        ops.convert_to_numpy(flip._second_moments[0]),
    )
