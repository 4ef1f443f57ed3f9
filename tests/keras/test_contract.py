"""The shared contract: for each bad input, the Keras front raises exactly the error that the
core (``snapset._spec`` or ``snapset.ValueSet``) produces for it, and writes none of its own."""

import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


import snapset  # noqa: E402
import snapset.keras as sk  # noqa: E402
from snapset import _spec  # noqa: E402

BOP = dict(_spec.BOP_DEFAULTS)


def keras_options(method, **given):
    """The core's check of a method and its options, for the methods the Keras front offers."""
    return _spec.method_options(
        method, given, front="snapset.keras", methods=("ste", "stochastic", "gumbel", "flip")
    )


def built_dense(values, dtype):
    sk.Dense(2, values, dtype=dtype).build((None, 3))


def constrained_dense(init):
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    sk.constrain(dense, "kernel", [0, 1], init=init)


CASES = {
    "unknown method": (
        lambda: sk.Dense(2, [0, 1], "stee"),
        lambda: keras_options("stee"),
    ),
    "temperature of a method without one": (
        lambda: sk.Dense(2, [0, 1], temperature=2.0),
        lambda: keras_options("ste", temperature=2.0),
    ),
    "negative temperature": (
        lambda: sk.Multiplier([0, 1], "gumbel", temperature=-1.0),
        lambda: keras_options("gumbel", temperature=-1.0),
    ),
    "unknown estimator": (
        lambda: sk.Dense(2, [0, 1], estimator="clipp"),
        lambda: keras_options("ste", estimator="clipp"),
    ),
    "negative latent range": (
        lambda: sk.Conv1D(2, 3, [0, 1], "stochastic", latent_range=-1.0),
        lambda: keras_options("stochastic", latent_range=-1.0),
    ),
    "latent range of the wrong type": (
        lambda: sk.Dense(2, [0, 1], latent_range="0.1"),
        lambda: keras_options("ste", latent_range="0.1"),
    ),
    "an option of another method": (
        lambda: sk.Dense(2, [0, 1], "flip", estimator="clip"),
        lambda: keras_options("flip", estimator="clip"),
    ),
    "seed of a method without randomness": (
        lambda: sk.Dense(2, [0, 1], "flip", seed=1),
        lambda: keras_options("flip", seed=1),
    ),
    "dither of a method without latents": (
        lambda: sk.Dense(2, [0, 1], "gumbel", dither=0.5),
        lambda: keras_options("gumbel", dither=0.5),
    ),
    "dither out of range": (
        lambda: sk.Dense(2, [0, 1], "ste", dither=1.5),
        lambda: keras_options("ste", dither=1.5),
    ),
    "seed of the wrong type": (
        lambda: sk.Multiplier([0, 1], "stochastic", seed="1"),
        lambda: keras_options("stochastic", seed="1"),
    ),
    "unknown init": (
        lambda: sk.Dense(2, [0, 1], init="zeros"),
        lambda: _spec.check_init("zeros"),
    ),
    "unknown init of constrain": (
        lambda: constrained_dense("zeros"),
        lambda: _spec.check_init("zeros"),
    ),
    "duplicate values": (
        lambda: sk.Dense(2, [1, 1]),
        lambda: snapset.ValueSet([1, 1]),
    ),
    "NaN value": (
        lambda: sk.Multiplier([0, float("nan")]),
        lambda: snapset.ValueSet([0, float("nan")]),
    ),
    "values that are not numbers": (
        lambda: sk.Dense(2, ["a", "b"]),
        lambda: snapset.ValueSet(["a", "b"]),
    ),
    "values a dtype merges": (
        lambda: built_dense([1, 1.0001], "float16"),
        lambda: snapset.ValueSet([1, 1.0001]).tables("float16"),
    ),
    "values a dtype cannot hold": (
        lambda: built_dense([0, 1e5], "float16"),
        lambda: snapset.ValueSet([0, 1e5]).tables("float16"),
    ),
    "a dtype that is not a float": (
        lambda: sk.Flip(snapset.Binary(), "int32", "kernel"),
        lambda: snapset.Binary().tables("int32"),
    ),
    "negative threshold": (
        lambda: sk.Bop(threshold=-1.0),
        lambda: _spec.check_bop_options(**{**BOP, "threshold": -1.0}),
    ),
    "threshold of the wrong type": (
        lambda: sk.Bop(threshold="1e-3"),
        lambda: _spec.check_bop_options(**{**BOP, "threshold": "1e-3"}),
    ),
    "gamma out of range": (
        lambda: sk.Bop(gamma=0.0),
        lambda: _spec.check_bop_options(**{**BOP, "gamma": 0.0}),
    ),
    "unknown threshold mode": (
        lambda: sk.Bop(threshold_mode="relative"),
        lambda: _spec.check_bop_options(**{**BOP, "threshold_mode": "relative"}),
    ),
    "unknown momentum reset": (
        lambda: sk.Bop(momentum_reset="sometimes"),
        lambda: _spec.check_bop_options(**{**BOP, "momentum_reset": "sometimes"}),
    ),
}


def raised(call):
    with pytest.raises((ValueError, TypeError)) as error:
        call()
    return type(error.value), str(error.value)


@pytest.mark.parametrize("case", list(CASES))
def test_the_keras_front_raises_the_cores_error(case):
    ours, core = CASES[case]
    assert raised(ours) == raised(core)
