"""Discrete activations: ``Quantize``, its functional form ``quantize``, and input quantizers
that ``quantize_inputs_`` puts before the layers of a model.

An activation quantizer maps a float tensor ``x`` to ``alpha * v``, with ``v`` exact members
of a set and ``alpha`` a scale, by the methods and estimators that train weights: it reads
``x / alpha`` on the method's latent scale and calls the method's parametrization there (see
[`STE`][snapset.torch.STE] and [`StochasticRounding`][snapset.torch.StochasticRounding]).
The rules of the scales (their names, layouts, statistics and messages) are the core's
(``snapset._scales.ActivationScaling``); this module only reshapes, reduces and multiplies.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .._files import INPUT_QUANTIZER
from .._scales import STATISTIC_FLOOR, ActivationScaling, ScaleLayout, bad_scale_message, scale_unit
from .._sets import ValueSet
from .._spec import method_options
from ._constrain import FilterFn, constrained_tensors
from ._functional import blend
from ._methods import METHODS, STE, StochasticRounding, _key

__all__ = [
    "Quantize",
    "input_quantizers",
    "quantize",
    "quantize_inputs_",
    "remove_input_quantizers_",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: The methods an activation quantizer offers, by name: those that round a float latent.
ROUNDINGS: dict[str, type[STE] | type[StochasticRounding]] = {
    cls.spec.name: cls for cls in (STE, StochasticRounding)
}


class Quantize(nn.Module):
    r"""A discrete activation: ``y = alpha * v`` with ``v`` exact members of ``values``.

    Forward, for an input ``x`` (any shape, a float dtype):

    ```text
    alpha = the scale (see below; 1 when scale=None)
    u     = (x / alpha - centre) * r / half_range      the method's latent, r = LATENT_RANGE
    v     = the method's forward on u                  exact members of the set
    y     = alpha * v                                  one product an entry
    ```

    ``method``: ``"ste"`` (the nearest value) or ``"stochastic"`` (a random neighbour while
    training, unbiased; the nearest in eval). The gradient reaching ``x`` is the
    ``estimator``'s surrogate (see [`estimator_grad`][snapset.torch.estimator_grad]); the
    default ``"clip"`` passes it unchanged where ``x / alpha`` lies inside the set's range and
    nowhere else: for ``Sign()`` without a scale that is BinaryNet's ``1`` where ``|x| <= 1``,
    else ``0`` (the hard tanh's derivative; Courbariaux et al., 2016, "Binarized Neural
    Networks"; larq's ``ste_sign``).

    ``scale``: ``None`` (the set's own values), a positive number (a static ``alpha``),
    ``"tensor"`` (one ``alpha``), ``"token"`` (one per position: every axis but
    ``feature_axis``) or ``"channel"`` (one per feature along ``feature_axis``; PyTorch puts
    a linear layer's features last, -1, and a convolution's at 1). ``scale_mode``:

    * ``"absmax"`` (the default): ``alpha = max|x| / unit`` over each group, floored at
      1e-5, recomputed from each input without a gradient; ``unit`` is 127 for the int8 set
      ``ValueSet(range(-128, 128))``, so ``scale="token"`` is BitNet b1.58's per-token 8-bit
      activation (Ma et al., 2024); it is 1 for signs and ternary;
    * ``"learned"`` (``"tensor"`` or ``"channel"``; the latter needs ``num_features``): a
      learned step, as LSQ's (Esser et al., 2020), held as weight scales are,
      ``alpha = start * exp(log_gain)``: the buffer ``start`` is the absmax statistic of the
      first batch the quantizer sees in training (the persistent buffer ``initialized``
      records that it did; before, it holds 1), and the parameter ``log_gain`` (0 at first)
      is trained, so that a step moves ``alpha`` by a factor and never past zero. Autograd
      gives ``alpha`` LSQ's gradient, ``v - x / alpha`` inside the range and ``v`` outside,
      and ``log_gain`` that times ``alpha``. A learned ``alpha`` that is nevertheless not
      finite and > 0 (an exponential out of range) is refused with a ``ValueError`` before
      anything computes with it (in eager mode: a graph that ``torch.compile`` made does not
      look).

    It computes in its own dtype (``float32``, or where ``.to()`` / ``.double()`` moved it):
    an input of another float dtype is cast to it first, as autocast does for its float32
    operations, and ``y`` holds exactly ``alpha * v`` in that dtype. Integer inputs are
    refused (``TypeError``): cast them to float first.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> sign = st.Quantize(snapset.Sign())
        >>> x = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], requires_grad=True)
        >>> y = sign(x); y.tolist()
        [-1.0, -1.0, 1.0, 1.0, 1.0]
        >>> y.sum().backward(); x.grad.tolist()  # BinaryNet's gradient: 1 where |x| <= 1
        [0.0, 1.0, 1.0, 1.0, 0.0]
        >>> int8 = st.Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
        >>> int8(torch.tensor([[0.5, -1.27], [2.54, 1.0]])).mul(100).round().tolist()
        [[50.0, -127.0], [254.0, 100.0]]
        >>> st.Quantize(snapset.Ternary(), scale="channel", scale_mode="learned", num_features=8)
        Quantize(
          method='ste', scale='channel', scale_mode='learned', feature_axis=-1, num_features=8
          (rounding): STE(ValueSet([-1, 0, 1]), estimator='clip', latent_range=0.1)
        )
    """

    start: Tensor | None
    log_gain: nn.Parameter | None
    initialized: Tensor
    #: The share of the quantized input in the training forward (the rest is the float
    #: input): 1 unless ``set_blend`` warms a float model up.
    blend: float = 1.0

    def __init__(
        self,
        values: ValueSet | list[float] | tuple[float, ...],
        method: str = "ste",
        *,
        estimator: str = "clip",
        scale: str | float | None = None,
        scale_mode: str | None = None,
        feature_axis: int = -1,
        num_features: int | None = None,
    ) -> None:
        super().__init__()
        options = method_options(
            method,
            {"estimator": estimator},
            front="snapset.torch",
            methods=tuple(ROUNDINGS),
            unsupported=("seed",),
        )
        scaling = ActivationScaling.of(scale, scale_mode)
        if isinstance(feature_axis, bool) or not isinstance(feature_axis, int):
            raise TypeError(f"Invalid feature_axis: {feature_axis!r} (must be an int)")
        learned = scaling is not None and scaling.mode == "learned"
        per_channel = learned and scaling is not None and scaling.granularity == "channel"
        _check_num_features(num_features, per_channel)
        self.values = ValueSet(values)
        self.scaling = scaling
        self.feature_axis = feature_axis
        self.num_features = num_features
        self.rounding = ROUNDINGS[method](self.values, torch.empty(0), **options)
        if learned:
            shape = (num_features,) if num_features is not None else ()
            self.register_buffer("start", torch.ones(shape))
            self.log_gain = nn.Parameter(torch.zeros(shape))
            self.register_buffer("initialized", torch.tensor(False))
            # the flag as a Python bool too: torch.compile guards on it rather than breaking
            # the graph to read the buffer at every call
            self._started = False
            self.register_load_state_dict_post_hook(_note_loaded_start)
        else:
            self.start = self.log_gain = None
        self.unit = scale_unit(self.values)
        self._trusted: tuple[tuple[torch.dtype, int, int], ...] | None = None

    @property
    def alpha(self) -> Tensor | None:
        """A learned scale, ``start * exp(log_gain)`` (with the gradient to ``log_gain``);
        None for any other."""
        if self.start is None or self.log_gain is None:
            return None
        return self.start * self.log_gain.exp()

    @property
    def method(self) -> str:
        """The method's name: ``"ste"`` or ``"stochastic"``."""
        return self.rounding.method

    @property
    def estimator(self) -> str:
        """The estimator's name (see [`ESTIMATORS`][snapset.torch.ESTIMATORS])."""
        return self.rounding.estimator

    def forward(self, x: Tensor) -> Tensor:
        """``alpha * v``, with ``v`` the method's exact members for ``x / alpha``."""
        members, alpha = self.members_and_scale(x)
        y = members if alpha is None else members * alpha
        if self.training and self.blend < 1:  # set_blend's warm-up from the float input
            return blend(x.to(y.dtype), y, self.blend)
        return y

    def members_and_scale(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The two factors of ``forward``: ``v``, exact members of the set in this quantizer's
        dtype, and ``alpha``, shaped to broadcast against ``x`` (None without a scale), so
        that ``forward(x)`` is ``v * alpha``. A packed layer on integer matrix units takes
        them apart (see [`pack`][snapset.torch.pack]'s ``activations``).

        Examples:
            >>> import torch, snapset, snapset.torch as st
            >>> int8 = st.Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
            >>> x = torch.tensor([[0.5, -1.27], [2.54, 1.0]])
            >>> v, alpha = int8.members_and_scale(x)
            >>> v.tolist(), alpha.shape
            ([[50.0, -127.0], [127.0, 50.0]], torch.Size([2, 1]))
            >>> torch.equal(v * alpha, int8(x))
            True
        """
        latent, alpha = self.latents_and_scale(x)
        members: Tensor = self.rounding(latent)
        return members, alpha

    def latents_and_scale(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """What ``members_and_scale`` rounds: the method's latent of ``x / alpha`` (whose
        nearest members the rounding picks, as it picks a weight's), and ``alpha``."""
        x = self._checked(x)
        alpha = self._scales(x)
        on_set = x if alpha is None else x / alpha
        return self.rounding.right_inverse(on_set), alpha

    def _checked(self, x: Tensor) -> Tensor:
        """``x`` in this quantizer's dtype, after refusing what it cannot quantize."""
        if not x.is_floating_point():
            raise TypeError(
                f"Quantize takes floating-point inputs, got {x.dtype}; cast the input to float "
                "first (x.float())"
            )
        scaling = self.scaling
        if scaling is not None and scaling.granularity != "tensor":
            if not -x.dim() <= self.feature_axis < x.dim():
                raise ValueError(
                    f"feature_axis={self.feature_axis} is not an axis of the input, shape "
                    f"{tuple(x.shape)}; pass the axis its features run along (-1 for a linear "
                    "layer's input, 1 for a convolution's)"
                )
            if self.num_features is not None and x.shape[self.feature_axis] != self.num_features:
                raise ValueError(
                    f"Quantize learns a scale for each of num_features={self.num_features} "
                    f"features along axis {self.feature_axis}, and the input, shape "
                    f"{tuple(x.shape)}, has {x.shape[self.feature_axis]}; pass the input's "
                    "number of features, or its axis as feature_axis"
                )
        dtype = self.rounding.table.dtype
        return x if x.dtype == dtype else x.to(dtype)

    def _scales(self, x: Tensor) -> Tensor | None:
        """The scales for ``x``, shaped to broadcast against it (None: no scale)."""
        scaling = self.scaling
        if scaling is None:
            return None
        if scaling.value is not None:  # static
            return torch.full((), scaling.value, dtype=x.dtype, device=x.device)
        layout = scaling.layout(tuple(x.shape), self.feature_axis)
        if self.start is None or self.log_gain is None:
            return self._statistic(x, layout)
        if self.training and not self._started:
            with torch.no_grad():
                self.start.copy_(self._statistic(x, layout).reshape(self.start.shape))
                self.initialized.fill_(True)
            self._started = True
        alpha = self.start * self.log_gain.exp()
        if not torch.compiler.is_compiling():
            self._check_alpha(alpha, (self.start, self.log_gain))
        return alpha.reshape(layout.grouped_scale)

    def _statistic(self, x: Tensor, layout: ScaleLayout) -> Tensor:
        """``max|x| / unit`` per group, floored, without gradient (shape ``grouped_scale``)."""
        peak = x.detach().abs().amax(layout.reduce_axes, keepdim=True)
        return peak.div_(self.unit).clamp_min_(STATISTIC_FLOOR)

    def _check_alpha(self, alpha: Tensor, parts: tuple[Tensor, Tensor]) -> None:
        """Refuse a learned scale with an entry that is not finite and > 0 (O(1) while nothing
        wrote its ``parts``, ``start`` and ``log_gain``, since the last check)."""
        key = tuple(_key(part) for part in parts)
        if key == self._trusted:
            return
        with torch.no_grad():
            bad = ~(alpha.isfinite() & (alpha > 0))
            if bool(bad.any()):
                where = "the learned scales of Quantize"
                raise ValueError(
                    f"{bad_scale_message(where, int(bad.sum()), float(alpha[bad][0]))} Load or "
                    "assign positive scales, or lower the learning rate of log_gain."
                )
        self._trusted = key

    def extra_repr(self) -> str:
        # the set and the estimator show in the line of the rounding, the child module
        text = f"method={self.method!r}"
        scaling = self.scaling
        if scaling is None:
            return text
        if scaling.value is not None:
            return f"{text}, scale={scaling.value!r}"
        text += f", scale={scaling.granularity!r}, scale_mode={scaling.mode!r}"
        if scaling.granularity != "tensor":
            text += f", feature_axis={self.feature_axis}"
        if self.num_features is not None:
            text += f", num_features={self.num_features}"
        return text


def _note_loaded_start(module: Quantize, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: a loaded learned scale has started if its state says so."""
    module._started = bool(module.initialized)


def _check_num_features(num_features: Any, per_channel: bool) -> None:
    """``num_features`` is needed by a learned per-channel scale, and by nothing else."""
    if not per_channel:
        if num_features is not None:
            raise ValueError(
                f"num_features={num_features!r} sizes a learned per-channel scale; it applies "
                "only with scale='channel', scale_mode='learned'"
            )
        return
    if num_features is None:
        raise ValueError(
            "scale='channel' with scale_mode='learned' holds one scale per feature: pass "
            "num_features (the input's size along feature_axis)"
        )
    if isinstance(num_features, bool) or not isinstance(num_features, int):
        raise TypeError(f"Invalid num_features: {num_features!r} (must be an int)")
    if num_features < 1:
        raise ValueError(f"Invalid num_features: {num_features} (must be >= 1)")


def quantize(
    x: Tensor,
    values: ValueSet | list[float] | tuple[float, ...],
    method: str = "ste",
    *,
    estimator: str = "clip",
    scale: str | float | None = None,
    scale_mode: str | None = None,
    feature_axis: int = -1,
    training: bool = True,
) -> Tensor:
    """The functional form of [`Quantize`][snapset.torch.Quantize]: ``alpha * v`` for ``x``.

    Same options and meaning; ``training`` says whether ``"stochastic"`` rounds at random
    (True, the default, as ``torch.nn.functional.dropout``) or to the nearest value. A learned
    scale needs a parameter to live in: use the module. Each call builds the set's tables
    again; a ``Quantize`` holds them once. The output is in ``x``'s dtype.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> st.quantize(torch.tensor([0.2, -3.0, 0.6]), snapset.Ternary(), scale="tensor").tolist()
        [0.0, -3.0, 0.0]
    """
    if scale_mode == "learned":
        raise ValueError(
            "quantize() holds no parameter to learn a scale in; use the module "
            "snapset.torch.Quantize(values, scale=..., scale_mode='learned'), which does, or "
            "scale_mode='absmax'"
        )
    quantizer = Quantize(
        values,
        method,
        estimator=estimator,
        scale=scale,
        scale_mode=scale_mode,
        feature_axis=feature_axis,
    )
    if x.is_floating_point():
        quantizer.to(device=x.device, dtype=x.dtype)
    output: Tensor = quantizer.train(training)(x)
    return output


# ----- input quantizers on the layers of a model ---------------------------------------------


def quantize_inputs_(
    model: ModuleT,
    quantizer: Quantize,
    *,
    modules: tuple[type[nn.Module], ...] | None = None,
    filter_fn: FilterFn | None = None,
) -> ModuleT:
    """Put a copy of ``quantizer`` before the input of each chosen layer of ``model``, in
    place; return ``model``.

    By default it chooses every module that holds a snapset constraint of
    [`constrain`][snapset.torch.constrain]'s methods (the layers that
    [`constrain_`][snapset.torch.constrain_] chose: call it first); ``modules`` chooses every
    instance of those classes instead (such as ``snapset.torch.LINEAR_AND_CONV``), and
    ``filter_fn(module, qualified_name)``, if given, narrows either choice. Each chosen layer
    gets its own copy (``copy.deepcopy``: its own learned scale), moved to the device and
    float dtype of the layer's parameters, as the submodule ``input_quantizer`` (so it shows
    in the model's repr, follows ``.to()``, and its learned scale is in ``state_dict``), and a
    forward pre-hook that quantizes the layer's first positional argument. BitNet b1.58's
    8-bit activations before every ternary linear layer are
    ``quantize_inputs_(model, Quantize(ValueSet(range(-128, 128)), scale="token"))``; a binary
    network's sign activations ``quantize_inputs_(model, Quantize(Sign()))``.

    [`harden_`][snapset.torch.harden_] keeps the input quantizers (they are activations, not
    weights); [`remove_input_quantizers_`][snapset.torch.remove_input_quantizers_] removes
    them. Raises ``ValueError`` if nothing is chosen or a chosen layer already has an input
    quantizer, and ``TypeError`` if ``quantizer`` is not a ``Quantize``; the model is then
    unchanged.

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> model = st.constrain_(model, snapset.Sign(), filter_fn=lambda m, name: name == "1")
        >>> model = st.quantize_inputs_(model, st.Quantize(snapset.Sign()))
        >>> [name for name, _ in st.input_quantizers(model)]
        ['1']
    """
    if not isinstance(quantizer, Quantize):
        raise TypeError(
            f"quantize_inputs_ takes a snapset.torch.Quantize, got {type(quantizer).__name__}"
        )
    chosen = list(_chosen(model, modules, filter_fn))
    if not chosen:
        how = "the classes in modules" if modules is not None else "snapset constraints"
        raise ValueError(
            f"quantize_inputs_ chose no layer: no module of the model holds {how}"
            + (" that filter_fn accepts" if filter_fn is not None else "")
            + ". Constrain the layers first (snapset.torch.constrain_), or choose them by class "
            "(modules=snapset.torch.LINEAR_AND_CONV)"
        )
    taken = [name or "the model itself" for name, module in chosen if _holds_attribute(module)]
    if taken:
        raise ValueError(
            f"quantize_inputs_ chose {', '.join(map(repr, taken))}, which already "
            f"{'has' if len(taken) == 1 else 'have'} an attribute '{INPUT_QUANTIZER}'. Remove "
            "the input quantizers first (snapset.torch.remove_input_quantizers_(model)), or "
            "leave these layers out (filter_fn)"
        )
    copies = [_copy_for(quantizer, module) for _, module in chosen]
    for (_, module), copied in zip(chosen, copies, strict=True):
        module.add_module(INPUT_QUANTIZER, copied)
        module.register_forward_pre_hook(_quantize_input)
    return model


def remove_input_quantizers_(model: ModuleT) -> ModuleT:
    """Remove every input quantizer that ``quantize_inputs_`` put in ``model``; return
    ``model`` (as ``torch.nn.utils.parametrize.remove_parametrizations`` does; count them first
    with ``len(list(input_quantizers(model)))`` if you need to).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> layer = st.constrain_(torch.nn.Linear(4, 2), snapset.Sign())
        >>> layer = st.quantize_inputs_(layer, st.Quantize(snapset.Sign()))
        >>> layer = st.remove_input_quantizers_(layer)
        >>> list(st.input_quantizers(layer)), hasattr(layer, "input_quantizer")
        ([], False)
    """
    for _, module in list(_quantized_layers(model)):
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is _quantize_input]:
            del hooks[key]
        del module._modules[INPUT_QUANTIZER]
    return model


def input_quantizers(model: nn.Module) -> Iterator[tuple[str, Quantize]]:
    """Yield ``(qualified name of the layer, its input quantizer)`` for each layer of
    ``model`` that ``quantize_inputs_`` gave one, in module order (the quantizer itself is
    the submodule ``f"{name}.input_quantizer"``).

    Examples:
        >>> import torch, snapset, snapset.torch as st
        >>> model = st.constrain_(torch.nn.Sequential(torch.nn.Linear(4, 2)), snapset.Sign())
        >>> model = st.quantize_inputs_(model, st.Quantize(snapset.Sign()))
        >>> [(name, q.values) for name, q in st.input_quantizers(model)]
        [('0', ValueSet([-1, 1]))]
    """
    for name, module in model.named_modules():
        quantizer = input_quantizer_of(module)
        if quantizer is not None:
            yield name, quantizer


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The forward pre-hook of a quantized layer: its first argument through its quantizer
    (a module-level function that reads the submodule, so that ``copy.deepcopy`` works)."""
    if not args:
        raise TypeError(
            f"{type(module).__name__} has an input quantizer, which quantizes the first "
            "positional argument of its forward; pass the input positionally"
        )
    if getattr(module, "quantizes_own_input", False):
        return None  # the layer calls its quantizer itself (packed layers, on integer units)
    quantizer: Quantize = module.input_quantizer  # type: ignore[assignment]
    return (quantizer(args[0]), *args[1:])


def input_quantizer_of(module: nn.Module) -> Quantize | None:
    """The input quantizer that ``quantize_inputs_`` gave ``module`` itself, or None.

    A layer whose class sets ``quantizes_own_input = True`` receives its input unquantized
    and calls this quantizer in its own ``forward`` (packed layers do, to take the members
    and the scale apart); for any other, the forward pre-hook calls it.
    """
    quantizer = module._modules.get(INPUT_QUANTIZER)
    if isinstance(quantizer, Quantize) and any(
        hook is _quantize_input for hook in module._forward_pre_hooks.values()
    ):
        return quantizer
    return None


def _chosen(
    model: nn.Module,
    modules: tuple[type[nn.Module], ...] | None,
    filter_fn: FilterFn | None,
) -> Iterator[tuple[str, nn.Module]]:
    """The layers ``quantize_inputs_`` chooses, in module order, each once."""
    constrained = {
        id(record.module)
        for record in constrained_tensors(model)
        if record.constraint.method in METHODS
    }
    for name, module in model.named_modules():
        picked = isinstance(module, modules) if modules is not None else id(module) in constrained
        if picked and (filter_fn is None or filter_fn(module, name)):
            yield name, module


def _quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if input_quantizer_of(module) is not None:
            yield name, module


def _holds_attribute(module: nn.Module) -> bool:
    try:
        getattr(module, INPUT_QUANTIZER)
    except AttributeError:
        return False
    return True


def _copy_for(quantizer: Quantize, layer: nn.Module) -> Quantize:
    """A copy of ``quantizer`` on the device and in the float dtype of ``layer``'s parameters."""
    copied = copy.deepcopy(quantizer)
    like = next((p for p in layer.parameters() if p.is_floating_point()), None)
    if like is not None:
        copied.to(device=like.device, dtype=like.dtype)
    return copied
