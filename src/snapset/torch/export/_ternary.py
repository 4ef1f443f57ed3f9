"""What the runtimes' exporters read from a model: its ternary linear layers, each as exact
members ``v`` in {-1, 0, 1}, one scale ``alpha`` (``w = alpha * v``), its input quantizer and
its own RMSNorm, and its float tensors beside them.

GGUF (llama.cpp), the transformers BitNet layout and ONNX's ``MatMulNBits`` all store a
ternary weight as codes and a scale; each checks here, once, that a layer is what it can hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..._sets import Ternary, ValueSet
from .._bitnet import input_norm_of
from .._constrain import hardened_scales, hardened_values, scaled_members
from .._quantize import Quantize, input_quantizer_of
from ._pack import hardened_copy

__all__ = ["TernaryLinear", "TernaryModel", "ternary_model"]

TERNARY = Ternary()


@dataclass(frozen=True)
class TernaryLinear:
    """One linear layer with ``w = scale * members``, exactly."""

    #: The layer's qualified name in the model (``"model.layers.0.self_attn.q_proj"``).
    name: str
    #: ``(out, in)`` int8 members of {-1, 0, 1}.
    members: Tensor
    #: ``alpha``, the layer's one scale, as the hardened weight holds it (float32 or wider).
    scale: float
    bias: Tensor | None
    #: The layer's input quantizer (``bitnet_``: 8-bit integers, one scale a token), or None.
    quantizer: Quantize | None
    #: The RMSNorm inside the layer (``bitnet_(..., rms_norm=True)``), or None.
    norm: nn.Module | None

    def weight(self) -> Tensor:
        """``scale * members`` in float32, as the hardened layer holds it."""
        return self.members.float() * torch.tensor(self.scale, dtype=torch.float32)

    @property
    def int8_per_token(self) -> bool:
        """Whether the input is BitNet b1.58's: 8-bit integers -128..127, one absmax scale a
        token (what llama.cpp and transformers do in their own way)."""
        q = self.quantizer
        return (
            q is not None
            and q.values == ValueSet(range(-128, 128))
            and q.scaling is not None
            and q.scaling.granularity == "token"
            and q.scaling.mode == "absmax"
        )


@dataclass(frozen=True)
class TernaryModel:
    """A hardened copy of a model, its ternary linear layers found and checked."""

    #: The hardened copy (eval mode): its other tensors are what the exports write as floats.
    hardened: nn.Module
    layers: dict[str, TernaryLinear]

    def float_tensors(self) -> dict[str, Tensor]:
        """The ``state_dict`` entries that are not a ternary layer's weight (embeddings, norms,
        biases, the head), detached, by name."""
        ternary = {f"{name}.weight" for name in self.layers}
        return {
            name: tensor.detach()
            for name, tensor in self.hardened.state_dict().items()
            if name not in ternary
        }


def ternary_model(model: nn.Module, *, runtime: str) -> TernaryModel:
    """The ternary linear layers of ``model`` (constrained or hardened), for an export to
    ``runtime`` (named in messages).

    Every constrained tensor must be an ``nn.Linear`` weight of ``Ternary()`` with one scale a
    tensor or none (``bitnet_``'s); anything else raises ``ValueError`` naming the tensor and
    the fix, before anything is written. ``model`` itself is left as it is.
    """
    hardened = hardened_copy(model)
    layers = {}
    for name, module in hardened.named_modules():
        for attr, tensor in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            values = hardened_values(tensor)
            if values is None:
                continue
            where = f"{name}.{attr}" if name else attr
            if not isinstance(module, nn.Linear) or attr != "weight":
                raise ValueError(
                    f"{runtime} holds ternary weights of linear layers only, but '{where}' "
                    f"({type(module).__name__}) is constrained. Leave it in float (bitnet_ "
                    "converts linear layers only)"
                )
            if values != TERNARY:
                raise ValueError(
                    f"{runtime} stores {{-1, 0, 1}} weights, but '{where}' holds {values!r}. "
                    "Convert the model with snapset.torch.bitnet_ (or constrain to "
                    "snapset.Ternary())"
                )
            layers[name] = _ternary_layer(name, module, tensor, runtime)
    if not layers:
        raise ValueError(
            f"{runtime} export found no ternary linear layer in the model: convert it with "
            "snapset.torch.bitnet_ first"
        )
    return TernaryModel(hardened, layers)


def _ternary_layer(name: str, layer: nn.Linear, weight: Tensor, runtime: str) -> TernaryLinear:
    scaled = hardened_scales(weight)
    if scaled is None:
        members, scale = weight.detach(), 1.0
    else:
        granularity = scaled[0].scaling.granularity
        if granularity != "tensor":
            raise ValueError(
                f"{runtime} holds one scale a ternary tensor, but '{name}.weight' has "
                f"scale={granularity!r}. Convert it with scale='tensor' (bitnet_'s absmean)"
            )
        members = scaled_members(weight, TERNARY, *scaled)
        scale = float(scaled[1].reshape(()))
    return TernaryLinear(
        name=name,
        members=members.to(torch.int8).cpu(),
        scale=scale,
        bias=None if layer.bias is None else layer.bias.detach(),
        quantizer=input_quantizer_of(layer),
        norm=input_norm_of(layer),
    )
