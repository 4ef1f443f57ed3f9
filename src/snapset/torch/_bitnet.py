"""BitNet b1.58 as one call: ``bitnet_`` converts the linear layers of any PyTorch model, and
``set_blend`` warms a pretrained float model into it.

The recipe is snapset's own parts, chosen as the paper chose them (Ma et al., 2024, "The Era of
1-bit LLMs"): ternary weights with one ``absmean`` scale a tensor, 8-bit activations with one
``absmax`` scale a token, straight-through gradients on both. What it adds is the optional
RMSNorm inside each converted layer (BitNet's ``SubLN``; transformers' ``use_rms_norm``) and
the warm-up that HF1BitLLM used to fine-tune Llama 3 to 1.58 bits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from torch import nn

from .._sets import Ternary, ValueSet
from ._constrain import constrain_, named_constraints
from ._quantize import Quantize, input_quantizers

__all__ = ["bitnet_", "input_norm_of", "set_blend"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: The submodule that holds a converted layer's own RMSNorm (transformers' ``BitLinear`` names
#: it alike, so its weight keeps its name in their layout).
INPUT_NORM = "rms_norm"


def bitnet_(
    model: ModuleT,
    *,
    exclude: Iterable[str] = ("lm_head",),
    rms_norm: bool = False,
    eps: float = 1e-6,
) -> ModuleT:
    r"""Convert every ``nn.Linear`` of ``model`` to a BitNet b1.58 layer, in place; return it.

    Each converted layer computes, in training and eval alike:

    ```text
    x  = rms_norm(x)                                   only with rms_norm=True
    x' = (absmax(x) / 127) * round(x * 127 / absmax(x)) one scale a token, 8-bit integers
    W' = mean|W| * nearest(W / mean|W|) in {-1, 0, 1}   one scale a tensor
    y  = x' @ W'.T + b
    ```

    with straight-through (``identity``) gradients to ``W`` and ``x``: the weight stays a float
    latent that the optimizer trains, and ``harden_``, ``save``, ``pack`` and the runtime
    exports take its exact ternary codes and its scale. It is
    ``constrain_(model, Ternary(), scale="tensor", scale_mode="absmean",
    inputs=Quantize(ValueSet(range(-128, 128)), scale="token"))`` on the chosen layers.

    ``exclude``: names of layers left in float. A name matches a layer whose qualified name is
    it or ends with ``"." + name`` (``"lm_head"``, ``"model.layers.0.mlp.down_proj"``).
    Embeddings are not linear layers and stay float; so does the output head by default, as in
    the paper (``exclude=()`` converts it too). A name that matches no linear layer is refused
    (a typo would otherwise convert the layer it meant to keep).

    ``rms_norm``: give each converted layer its own RMSNorm (``nn.RMSNorm(in_features, eps)``,
    weight 1 at first, trained), applied to its input before the 8-bit rounding, as the
    original BitNet's ``BitLinear`` does and transformers' ``BitLinear(use_rms_norm=True)``
    loads. It keeps the activations that reach the rounding at one scale where no norm
    precedes the layer (an attention output projection, an MLP's down projection); a model
    that already has those norms (the BitNet architecture's ``attn_sub_norm`` and
    ``ffn_sub_norm``) does not need it. It is the submodule ``rms_norm`` of the layer, with a
    forward pre-hook that runs before the input quantizer's; ``pack`` keeps it. llama.cpp's
    Llama graph has no norm inside a linear layer, so ``export_gguf`` refuses such a model.

    Raises ``ValueError`` (the model unchanged) when no linear layer is left to convert, when
    a name in ``exclude`` matches none, or when a chosen layer was constrained or given an
    input quantizer before.

    Examples:
        >>> import torch, snapset.torch as st
        >>> model = torch.nn.ModuleDict({"mlp": torch.nn.Linear(64, 64),
        ...                              "lm_head": torch.nn.Linear(64, 256)})
        >>> model = st.bitnet_(model)
        >>> [name for name, _ in st.named_constraints(model)]  # the head stays float
        ['mlp.weight']
        >>> w = model["mlp"].weight
        >>> sorted(set((w / w.abs().max()).flatten().tolist()))
        [-1.0, 0.0, 1.0]
        >>> v, alpha = model["mlp"].input_quantizer.members_and_scale(torch.randn(3, 64))
        >>> bool(torch.equal(v, v.round())), int(v.abs().max()), tuple(alpha.shape)  # a token
        (True, 127, (3, 1))
    """
    names = {name for name in exclude} if not isinstance(exclude, str) else {exclude}
    if not isinstance(eps, float | int) or isinstance(eps, bool) or not (eps > 0):
        raise ValueError(f"Invalid eps: {eps!r} (must be a number > 0)")
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = sorted(n for n in names if not any(_matches(q, n) for q, _ in linears))
    if unmatched:
        raise ValueError(
            f"bitnet_: exclude names {', '.join(map(repr, unmatched))}, which match no linear "
            f"layer of the model (its linear layers: {_some(q for q, _ in linears)})"
        )
    chosen = {id(m) for q, m in linears if not any(_matches(q, n) for n in names)}
    if not chosen:
        raise ValueError(
            "bitnet_ found no linear layer to convert"
            + (" outside exclude" if linears else ": the model has no nn.Linear")
        )
    constrain_(
        model,
        Ternary(),
        modules=(nn.Linear,),
        filter_fn=lambda module, _: id(module) in chosen,
        scale="tensor",
        scale_mode="absmean",
        inputs=_int8_per_token(),
    )
    if rms_norm:
        for _, module in model.named_modules():
            if id(module) in chosen:
                _add_input_norm(module, nn.RMSNorm(module.in_features, eps=float(eps)))
    return model


def set_blend(model: nn.Module, amount: float) -> int:
    r"""Blend float into the ternary layers of ``model`` while it trains; return how many
    weights and activations it set.

    In training mode, each weight whose scale is a statistic (``bitnet_``'s ``absmean``) and
    each input quantizer then computes

    ```text
    w = W + amount * (alpha * v - W)          x' = x + amount * (quantized(x) - x)
    ```

    so that ``amount = 0`` is the float model and ``1`` (the default of every layer) the
    exact one; gradients reach ``W`` and ``x`` as from either end. HF1BitLLM fine-tuned
    Llama 3 8B to 1.58 bits with ``amount = min(step / warmup_steps, 1)`` over the first
    steps: a pretrained float model does not then lose what it knew at the first step.

    Eval mode, ``harden_``, ``save``, ``pack`` and the exports always use the exact values,
    whatever the blend: a blend is a training schedule, and no value outside the set reaches
    inference. ``amount`` must lie in [0, 1]; a ``ValueError`` says so otherwise, with
    nothing changed.

    Examples:
        >>> import torch, snapset.torch as st
        >>> model = st.bitnet_(torch.nn.Sequential(torch.nn.Linear(8, 8)), exclude=())
        >>> st.set_blend(model, 0.0)
        2
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(model.train()(x), torch.nn.functional.linear(
        ...     x, model[0].parametrizations.weight.original, model[0].bias))
        True
        >>> model.eval()(x).equal(st.harden_(model)(x))   # eval: exact
        True
    """
    if isinstance(amount, bool) or not isinstance(amount, float | int) or not 0 <= amount <= 1:
        raise ValueError(
            f"Invalid amount: {amount!r} (must be a number in [0, 1]: 0 is float, 1 exact; "
            "HF1BitLLM's warm-up is min(step / warmup_steps, 1))"
        )
    targets = list(_blendable(model))
    for target in targets:
        target.blend = float(amount)
    return len(targets)


def input_norm_of(module: nn.Module) -> nn.Module | None:
    """The RMSNorm that ``bitnet_(..., rms_norm=True)`` put inside ``module``, or None."""
    norm = module._modules.get(INPUT_NORM)
    if norm is not None and any(h is _normalize_input for h in module._forward_pre_hooks.values()):
        return norm
    return None


def carry_input_norm(replacement: nn.Module, layer: nn.Module) -> None:
    """Give ``replacement`` (a packed layer) a copy of the RMSNorm inside ``layer``, if any:
    before any input quantizer, as in ``layer``."""
    norm = input_norm_of(layer)
    if norm is not None:
        _add_input_norm(replacement, copy.deepcopy(norm))


def _add_input_norm(module: nn.Module, norm: nn.Module) -> None:
    like = next((p for p in module.parameters() if p.is_floating_point()), None)
    if like is not None:
        norm.to(device=like.device, dtype=like.dtype)
    module.add_module(INPUT_NORM, norm)
    # prepended: it runs before the input quantizer's hook, whenever that was registered
    module.register_forward_pre_hook(_normalize_input, prepend=True)


def _normalize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    norm = module._modules[INPUT_NORM]
    assert norm is not None
    return (norm(args[0]), *args[1:])


def _int8_per_token() -> Quantize:
    """BitNet b1.58's activations: 8-bit integers, one ``absmax`` scale a token."""
    return Quantize(ValueSet(range(-128, 128)), scale="token")


def _blendable(model: nn.Module) -> Iterator[Any]:
    for _, constraint in named_constraints(model):
        if constraint.scale is not None and not constraint.scale.learned:
            yield constraint
    for _, quantizer in input_quantizers(model):
        yield quantizer


def _matches(qualified: str, name: str) -> bool:
    return qualified == name or qualified.endswith("." + name)


def _some(names: Iterator[str], most: int = 6) -> str:
    listed = list(names)
    shown = ", ".join(map(repr, listed[:most]))
    return (shown + f", ... ({len(listed)} in all)") if len(listed) > most else shown or "none"
