"""The shared contract of both fronts: names, option defaults, option checks and their messages.

``snapset.torch`` and ``snapset.keras`` spell every option the same way and refuse the same
input with the same words because both read this module; neither writes a rule of its own.
Nothing here imports torch or keras.

What each name means:

* a **method** says how a gradient step moves a parameter through the set (``ste``,
  ``stochastic``, ``gumbel``, ``flip``); ``METHODS`` lists each with its options and
  their defaults;
* an **estimator** is the surrogate derivative used by the latent methods (``inward``,
  ``clip``, ``identity``);
* an **init** says how a freshly initialised tensor becomes the starting point (``spread``,
  ``nearest``);
* **Bop's options** (``threshold``, ``gamma``, ``threshold_mode``, ``momentum_reset``);
* **BatchNorm re-estimation**'s ``batches``, what a batch's input is, and its refusals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

__all__ = [
    "BOP2_DEFAULTS",
    "BOP_DEFAULTS",
    "ESTIMATORS",
    "GUMBEL_SHARPNESS",
    "INITS",
    "LATENT_RANGE",
    "METHODS",
    "MOMENTUM_RESETS",
    "NOT_BY_FLIP_OPTIMIZER",
    "THRESHOLD_MODES",
    "BatchInputs",
    "BatchNormRefusal",
    "MethodSpec",
    "NamedMethod",
    "OutsideSetError",
    "batch_inputs",
    "batchnorm_refused",
    "check_batches",
    "check_bop_options",
    "check_dither",
    "check_init",
    "check_temperature",
    "draws_at_random",
    "flip_step_refused",
    "gumbel_logit_scale",
    "method_options",
    "nonfinite_gradient_message",
    "nonfinite_stored_message",
    "outside_set_error",
]

LATENT_RANGE = 0.1
"""Half-width of the latent's range: the set's range maps to ``[-0.1, 0.1]``, the scale of a
freshly initialised float layer's weights, so that Adam's usual learning rates (1e-3 to 1e-2)
suit every set and the float parameters beside it alike."""

ESTIMATORS = ("inward", "clip", "identity")
"""Surrogate derivatives of the rounding, for ``ste`` and ``stochastic``; the first is the
default. Inside the set's range each passes the gradient; outside it ``inward`` passes only
gradients that lead back in, ``clip`` passes none, ``identity`` passes all."""

INITS = ("spread", "nearest")
"""How the current tensor becomes the starting point; the first is the default. ``spread``:
entries keep their order and every value is used by the same share of them
([`snapset.ValueSet.spread`][]); ``nearest``: each entry takes its
nearest value."""


@dataclass(frozen=True)
class MethodSpec:
    """A method's name, what it stores, and its options with their defaults."""

    name: str
    #: What the parameter's stored tensor holds: ``"latent"``, ``"logits"`` or ``"values"``.
    stores: str
    #: Option name -> default, in the order the messages list them.
    options: Mapping[str, Any]


class NamedMethod:
    """The name and the storage of a method class, read from its ``MethodSpec``: the base
    of both fronts' method classes (``snapset.torch.Constraint``, ``snapset.keras.Method``)."""

    spec: ClassVar[MethodSpec]

    @property
    def method(self) -> str:
        """The method's name (``"ste"``, ``"stochastic"``, ``"gumbel"``, ``"flip"``, ...)."""
        return self.spec.name

    @property
    def stores(self) -> str:
        """What the stored tensor holds: ``"latent"``, ``"logits"`` or ``"values"``."""
        return self.spec.stores


METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            MethodSpec(
                "ste",
                "latent",
                {"estimator": "inward", "latent_range": LATENT_RANGE, "dither": 0.0, "seed": None},
            ),
            MethodSpec(
                "stochastic",
                "latent",
                {"estimator": "inward", "latent_range": LATENT_RANGE, "dither": 1.0, "seed": None},
            ),
            MethodSpec(
                "gumbel",
                "logits",
                {"temperature": 1.0, "latent_range": LATENT_RANGE, "seed": None},
            ),
            MethodSpec("flip", "values", {}),
        )
    }
)
"""Every method of snapset, by name. A front that lacks one or an option (``seed`` exists only
where a framework's random numbers need one: Keras, not PyTorch) says so when it calls
``method_options``.

``dither`` is the share of the gap between two neighbouring values, centred on the threshold
between them, in which a training forward of a latent method draws either value at random, the
nearer one the likelier (linearly, from 0 at one edge of the band to 1 at the other; each
front's ``stochastic_round``): ``stochastic`` is ``ste`` with
``dither=1``, stochastic rounding across the whole gap. Near a threshold the loss then sees
both values, so it holds a latent on the side it prefers, where ``ste``'s latent (``dither=0``)
drifts across at random once its gradient is only noise (oscillation)."""


def draws_at_random(method: str, options: Mapping[str, Any]) -> bool:
    """Whether ``method`` with ``options`` draws at random while training (and so needs a seed
    where a framework asks for one): ``gumbel`` always, a latent method when its ``dither`` is
    above 0 (``stochastic`` by default).

    Examples:
        >>> draws_at_random("ste", {"dither": 0.0}), draws_at_random("ste", {"dither": 0.25})
        (False, True)
    """
    return method == "gumbel" or options.get("dither", 0) > 0


def check_dither(dither: Any) -> None:
    """Refuse a ``dither`` that is not a float in [0, 1].

    Examples:
        >>> check_dither(1.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: Invalid dither: 1.5 (must be in [0, 1]: the share of the gap between ...
    """
    if isinstance(dither, bool) or not isinstance(dither, (int, float)):
        raise TypeError(f"Invalid dither: {dither!r} (must be a float in [0, 1])")
    if not 0 <= dither <= 1:
        raise ValueError(
            f"Invalid dither: {dither} (must be in [0, 1]: the share of the gap between two "
            "values, centred on their threshold, in which training draws at random)"
        )


GUMBEL_SHARPNESS = 0.5
"""``gumbel`` stores an assigned value ``w`` as the logits ``-GUMBEL_SHARPNESS * ((w - v_j) /
half_range)^2`` (times ``latent_range``), so a member of ``{-1, 1}`` starts with a logit lead of 2
(a sample agrees about 80% of the time)."""


def gumbel_logit_scale(half_range: float, latent_range: float) -> float:
    """The factor of ``(w - v_j)^2`` in the stored logits of an assigned value ``w``.

    Both fronts store ``(w - v_j)^2 * gumbel_logit_scale(...)``: one subtraction, one square
    and one product by this float64 number rounded to the tensor's dtype, which every backend
    computes alike (a division by ``half_range`` may become a product by its reciprocal).

    Examples:
        >>> gumbel_logit_scale(1.0, 0.1)  # {-1, 1}: a member leads the other value by 0.2
        -0.05
    """
    return -GUMBEL_SHARPNESS * latent_range / half_range**2


def method_options(
    method: str,
    given: Mapping[str, Any],
    *,
    front: str,
    methods: Collection[str] = tuple(METHODS),
    unsupported: Collection[str] = (),
) -> dict[str, Any]:
    """Check a method and the options given for it; return all its options, defaults filled in.

    ``given`` maps option names to values, ``None`` meaning "not given". ``methods`` are the
    methods ``front`` (``"snapset.torch"``, ``"snapset.keras"``) offers and ``unsupported`` the
    options it does not; both default to everything.

    Examples:
        >>> method_options("ste", {"estimator": "clip"}, front="snapset.torch")
        {'estimator': 'clip', 'latent_range': 0.1, 'dither': 0.0, 'seed': None}
        >>> method_options("ste", {"seed": 1}, front="snapset.keras")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: Option 'seed' does not apply to method 'ste' with dither=0: it draws ...
        >>> method_options("flip", {"estimator": "clip"}, front="snapset.torch")
        Traceback (most recent call last):
        ValueError: Option 'estimator' does not apply to method 'flip'; its options are none
    """
    if method not in methods:
        valid = ", ".join(map(repr, methods))
        if method in METHODS:
            raise ValueError(f"Method {method!r} is not available in {front}; its methods: {valid}")
        raise ValueError(f"Unknown method {method!r}; valid methods: {valid}")
    defaults = {k: v for k, v in METHODS[method].options.items() if k not in unsupported}
    options = dict(defaults)
    for name, value in given.items():
        if value is None:
            continue
        if name not in defaults:
            raise ValueError(
                f"Option {name!r} does not apply to method {method!r}; its options are "
                + (", ".join(map(repr, defaults)) or "none")
            )
        _OPTION_CHECKS[name](value)
        options[name] = value
    if given.get("seed") is not None and not draws_at_random(method, options):
        raise ValueError(
            f"Option 'seed' does not apply to method {method!r} with dither=0: it draws nothing "
            "at random (give dither > 0 for random rounding near each threshold)"
        )
    return options


def check_init(init: Any) -> None:
    """Refuse an init that is not one of ``INITS``.

    Examples:
        >>> check_init("zeros")
        Traceback (most recent call last):
        ValueError: Unknown init 'zeros'; valid inits: 'spread', 'nearest'
    """
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; valid inits: " + ", ".join(map(repr, INITS)))


def _check_estimator(estimator: Any) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"Unknown estimator {estimator!r}; valid estimators: "
            + ", ".join(map(repr, ESTIMATORS))
        )


def _positive(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"Invalid {name}: {value!r} (must be a float)")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"Invalid {name}: {value} (must be > 0)")

    return check


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"Invalid seed: {seed!r} (must be an int)")


check_temperature = _positive("temperature")
"""Refuse a Gumbel-softmax temperature that is not a finite number > 0."""

_OPTION_CHECKS: Mapping[str, Callable[[Any], None]] = {
    "estimator": _check_estimator,
    "latent_range": _positive("latent_range"),
    "temperature": check_temperature,
    "seed": _check_seed,
    "dither": check_dither,
}


# ----- Bop ------------------------------------------------------------------------------------

THRESHOLD_MODES = ("abs", "rel", "second_moment")
"""``"abs"``: move when ``|m| > threshold``. ``"rel"``: when ``|m| > threshold * rms(g)``, the
tensor's running RMS. ``"second_moment"``: when ``|m| > threshold * sqrt(v)``, each entry's own
running mean square ``v`` of its gradient (rate ``sigma``), the second-moment Bop."""

MOMENTUM_RESETS = ("interior", "always", "never")
"""Which moved entries restart their momentum from 0 (see ``snapset.torch.Bop``)."""

BOP_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "threshold": 1e-8,
        "gamma": 1e-4,
        "threshold_mode": "abs",
        "momentum_reset": "interior",
        "sigma": 1e-2,
    }
)
"""Bop's defaults in both fronts: larq's threshold and gamma after tuning (Helwegen et al.);
``sigma``, the rate of the second moment, is only read by ``threshold_mode="second_moment"``."""

BOP2_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        **BOP_DEFAULTS,
        "threshold_mode": "second_moment",
        "threshold": 0.04,
        "gamma": 1e-2,
        "momentum_reset": "always",
    }
)
"""The second-moment Bop's defaults in both fronts, chosen from the runs in
``benchmarks/bop_defaults.py`` (one setting for every problem there)."""


def check_bop_options(
    threshold: Any,
    gamma: Any,
    threshold_mode: Any,
    momentum_reset: Any,
    sigma: Any = BOP_DEFAULTS["sigma"],
) -> None:
    """Refuse a hyperparameter of Bop that is out of range or of the wrong kind.

    Examples:
        >>> check_bop_options(1e-8, 1e-4, "abs", "interior")
        >>> check_bop_options(1e-8, 0.0, "abs", "interior")
        Traceback (most recent call last):
        ValueError: Invalid gamma: 0.0 (must be in (0, 1])
    """
    for name, value in (("threshold", threshold), ("gamma", gamma), ("sigma", sigma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"Invalid {name}: {value!r} (must be a float)")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"Invalid threshold: {threshold} (must be finite and >= 0)")
    for name, value in (("gamma", gamma), ("sigma", sigma)):
        if not 0 < value <= 1:
            raise ValueError(f"Invalid {name}: {value} (must be in (0, 1])")
    for name, value, valid in (
        ("threshold_mode", threshold_mode, THRESHOLD_MODES),
        ("momentum_reset", momentum_reset, MOMENTUM_RESETS),
    ):
        if value not in valid:
            raise ValueError(f"Invalid {name}: {value!r} (valid: {', '.join(map(repr, valid))})")


# ----- what may hold a value outside the set --------------------------------------------------


class OutsideSetError(ValueError):
    """A stored tensor that must hold members of its set holds something else: a flip
    parameter stepped by an ordinary optimizer or assigned by hand, a loaded state or file with
    values outside the set, NaN. Raised before anything computes with the values, saves them or
    makes them plain; the model is left as it was.

    Examples:
        >>> import snapset
        >>> from snapset._spec import outside_set_error
        >>> raise outside_set_error("flip parameter 'weight'", snapset.Sign(), 3, 0.97, "Fix.")
        Traceback (most recent call last):
        snapset.OutsideSetError: flip parameter 'weight' holds 3 values outside \
ValueSet([-1, 1]) (for example 0.97). Fix.
    """


OutsideSetError.__module__ = "snapset"  # where users import it from


def outside_set_error(
    where: str, values: object, count: int, example: float, fix: str
) -> OutsideSetError:
    """The error both fronts raise when ``where`` holds ``count`` entries outside ``values``.

    ``example`` is one offending entry; ``fix`` says what to do instead, in the front's names.
    """
    plural = "value" if count == 1 else "values"
    return OutsideSetError(
        f"{where} holds {count} {plural} outside {values!r} (for example {example!r}). {fix}"
    )


NOT_BY_FLIP_OPTIMIZER = (
    "Something other than a flip optimizer wrote it (another optimizer, an assignment)"
)
"""What most often puts a flip parameter off its set; the start of both fronts' ``fix``."""


def nonfinite_gradient_message(where: str, count: int) -> str:
    """The warning both fronts give when they zero non-finite gradient entries of a latent.

    A single NaN gradient entry would make an Adam-trained latent NaN forever, its value pinned
    to one member of the set while the outputs stay finite; snapset zeroes such entries instead,
    counts them, and says so.

    Examples:
        >>> nonfinite_gradient_message("'fc.weight'", 2)  # doctest: +ELLIPSIS
        "snapset zeroed 2 non-finite (NaN or inf) gradient entries of 'fc.weight' ..."
    """
    return (
        f"snapset zeroed {count} non-finite (NaN or inf) gradient entries of {where} before "
        "they reached its latent weights, which would otherwise stay NaN for good. Look for "
        "an overflow in the loss (a lower learning rate, gradient clipping, or a loss scaler)."
    )


def flip_step_refused(optimizer: str, flips: str, values: object) -> str:
    """What both fronts say (with a ``TypeError``) when an optimizer that is not a flip
    optimizer is about to step flip weights; the front adds how to route them.

    Examples:
        >>> flip_step_refused("Adam", "parameter '0.weight'", "ValueSet([-1, 1])")
        "Adam cannot step flip parameter '0.weight': a gradient step would move it off \
ValueSet([-1, 1]), and only a flip optimizer moves flip weights."
    """
    return (
        f"{optimizer} cannot step flip {flips}: a gradient step would move it off {values}, "
        "and only a flip optimizer moves flip weights."
    )


def nonfinite_stored_message(where: str, count: int, stores: str) -> str:
    """What both fronts say when a latent or logits tensor to be used or loaded holds NaN or
    infinity, which training would never leave; the front adds the fix.

    Examples:
        >>> nonfinite_stored_message("'fc.weight'", 2, "latent")
        "'fc.weight' holds 2 non-finite (NaN or inf) latent entries, which would stay so for good."
    """
    return (
        f"{where} holds {count} non-finite (NaN or inf) {stores} entries, which would stay so "
        "for good."
    )


# ----- BatchNorm re-estimation ----------------------------------------------------------------


def check_batches(batches: Any) -> None:
    """Refuse a number of batches for ``reestimate_batchnorm`` that is not None or an int > 0.

    Examples:
        >>> check_batches(0)
        Traceback (most recent call last):
        ValueError: Invalid batches: 0 (must be an int > 0, or None for every batch of data)
    """
    if batches is None:
        return
    if isinstance(batches, bool) or not isinstance(batches, int):
        raise TypeError(f"Invalid batches: {batches!r} (must be an int, or None)")
    if batches <= 0:
        raise ValueError(
            f"Invalid batches: {batches} (must be an int > 0, or None for every batch of data)"
        )


@dataclass(frozen=True)
class BatchInputs:
    """What a model is called with for one batch of ``reestimate_batchnorm``'s data: the input,
    and whether it is a mapping (keyword arguments in PyTorch, named inputs in Keras)."""

    inputs: Any
    named: bool


def batch_inputs(batch: Any) -> BatchInputs:
    """The input of one batch: a tuple or list is ``(inputs, targets, ...)`` as data loaders
    yield it, and its first element is the input; anything else is the input itself.

    Examples:
        >>> batch_inputs(("x", "y"))
        BatchInputs(inputs='x', named=False)
        >>> batch_inputs({"input_ids": "x"}).named
        True
        >>> batch_inputs(())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: reestimate_batchnorm got an empty tuple as a batch: a tuple or list batch ...
    """
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError(
                f"reestimate_batchnorm got an empty {type(batch).__name__} as a batch: a tuple "
                "or list batch is (inputs, targets, ...), and its first element is the "
                "model's input; nothing was changed."
            )
        batch = batch[0]
    return BatchInputs(batch, isinstance(batch, Mapping))


BatchNormRefusal = Literal["none", "untracked", "unbuilt", "renorm", "masked", "empty"]


def batchnorm_refused(why: BatchNormRefusal, where: str = "") -> ValueError:
    """The error both fronts raise when ``reestimate_batchnorm`` refuses, the model unchanged.

    ``why``: ``"none"`` (no BatchNorm layer in the model), ``"untracked"`` (a layer keeps no
    running statistics), ``"unbuilt"`` (a layer has no statistics yet), ``"renorm"`` (Keras's
    batch renormalization), ``"masked"`` (a Keras layer called with a mask), ``"empty"`` (the
    data gave no batch); ``where`` names the model or the layer.

    Examples:
        >>> raise batchnorm_refused("none", "model 'Sequential'")
        Traceback (most recent call last):
        ValueError: reestimate_batchnorm found no BatchNorm layer in model 'Sequential': it \
has no running statistics to re-estimate; nothing was changed.
    """
    reasons = {
        "none": f"found no BatchNorm layer in {where}: it has no running statistics to re-estimate",
        "untracked": f"cannot re-estimate {where}: it keeps no running statistics "
        "(track_running_stats=False), so it normalizes with each batch's own statistics in "
        "eval too; give it running statistics or leave BatchNorm re-estimation out",
        "unbuilt": f"cannot re-estimate {where}: it is not built yet and has no running "
        "statistics; run the model on one batch first",
        "renorm": f"cannot re-estimate {where}: batch renormalization (renorm=True) keeps "
        "statistics of its own, which this call does not re-estimate",
        "masked": f"cannot re-estimate {where} from a masked input: it averages every entry "
        "of a batch",
        "empty": "got no batch from data: pass an iterable of input batches (a DataLoader, a "
        "list of tensors or arrays) with at least one batch",
    }
    return ValueError(f"reestimate_batchnorm {reasons[why]}; nothing was changed.")
