"""The shared contract: names, defaults, checks and messages that both fronts read."""

import math

import pytest

from snapset import _spec
from snapset._spec import BOP_DEFAULTS, METHODS, check_bop_options, check_init, method_options


def test_every_method_states_what_it_stores_and_its_options_with_defaults():
    assert {name: (spec.stores, dict(spec.options)) for name, spec in METHODS.items()} == {
        "ste": (
            "latent",
            {"estimator": "inward", "latent_range": 0.1, "dither": 0.0, "seed": None},
        ),
        "stochastic": (
            "latent",
            {"estimator": "inward", "latent_range": 0.1, "dither": 1.0, "seed": None},
        ),
        "gumbel": ("logits", {"temperature": 1.0, "latent_range": 0.1, "seed": None}),
        "flip": ("values", {}),
    }
    assert _spec.ESTIMATORS[0] == "inward"  # the default comes first
    assert _spec.INITS[0] == "spread"


def test_options_are_filled_with_defaults_and_given_ones_win():
    assert method_options("gumbel", {"temperature": 2.0, "latent_range": None}, front="f") == {
        "temperature": 2.0,
        "latent_range": 0.1,
        "seed": None,
    }


def test_a_front_without_an_option_neither_fills_nor_accepts_it():
    options = method_options("stochastic", {}, front="f", unsupported=("seed",))
    assert options == {"estimator": "inward", "latent_range": 0.1, "dither": 1.0}
    with pytest.raises(ValueError, match=r"its options are 'estimator', 'latent_range', 'dither'$"):
        method_options("stochastic", {"seed": 3}, front="f", unsupported=("seed",))


@pytest.mark.parametrize(
    ("method", "given", "error", "message"),
    [
        ("stee", {}, ValueError, "Unknown method 'stee'; valid methods: 'ste', 'stochastic', "),
        (
            "flip",
            {"estimator": "clip"},
            ValueError,
            "does not apply to method 'flip'; its options are none",
        ),
        ("ste", {"temperature": 1.0}, ValueError, "its options are 'estimator', 'latent_range'"),
        (
            "ste",
            {"estimator": "sigmoid"},
            ValueError,
            "Unknown estimator 'sigmoid'; valid estimators: 'inward', 'clip', 'identity'",
        ),
        ("ste", {"latent_range": -1.0}, ValueError, r"Invalid latent_range: -1.0 \(must be > 0\)"),
        ("ste", {"latent_range": math.inf}, ValueError, r"Invalid latent_range: inf"),
        ("ste", {"latent_range": math.nan}, ValueError, r"Invalid latent_range: nan"),
        ("ste", {"latent_range": "0.1"}, TypeError, r"Invalid latent_range: '0.1' \(must be a"),
        ("gumbel", {"temperature": 0}, ValueError, r"Invalid temperature: 0 \(must be > 0\)"),
        ("stochastic", {"seed": 1.5}, TypeError, r"Invalid seed: 1.5 \(must be an int\)"),
    ],
)
def test_bad_options_are_refused_with_a_message_that_names_the_fix(method, given, error, message):
    with pytest.raises(error, match=message):
        method_options(method, given, front="snapset.torch")


def test_a_method_a_front_lacks_is_named_as_missing_there_not_unknown():
    with pytest.raises(ValueError, match=r"^Method 'gumbel' is not available in snapset\.keras;"):
        method_options("gumbel", {}, front="snapset.keras", methods=("ste", "flip"))


def test_init_names():
    check_init("spread")
    check_init("nearest")
    with pytest.raises(ValueError, match=r"^Unknown init 'zeros'; valid inits: 'spread', "):
        check_init("zeros")


def test_bop_defaults_pass_their_own_checks():
    check_bop_options(**BOP_DEFAULTS)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"threshold": -1.0}, ValueError, r"Invalid threshold: -1.0 \(must be finite and >= 0\)"),
        ({"threshold": math.inf}, ValueError, r"Invalid threshold: inf"),
        ({"threshold": "1e-3"}, TypeError, r"Invalid threshold: '1e-3' \(must be a float\)"),
        ({"gamma": 0.0}, ValueError, r"Invalid gamma: 0.0 \(must be in \(0, 1\]\)"),
        ({"gamma": 1.5}, ValueError, r"Invalid gamma: 1.5"),
        ({"gamma": True}, TypeError, r"Invalid gamma: True"),
        ({"threshold_mode": "relative"}, ValueError, r"valid: 'abs', 'rel'"),
        ({"momentum_reset": "sometimes"}, ValueError, r"valid: 'interior', 'always', 'never'"),
    ],
)
def test_bad_bop_options_are_refused(change, error, message):
    with pytest.raises(error, match=message):
        check_bop_options(**{**BOP_DEFAULTS, **change})
