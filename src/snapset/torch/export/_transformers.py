"""The Hugging Face transformers BitNet layout: a directory that
``AutoModelForCausalLM.from_pretrained`` loads with transformers' own ``BitLinear`` layers.

What transformers' ``BitLinear`` (``quant_method="bitnet"``, ``linear_class="bitlinear"``,
``quantization_mode="offline"``; ``transformers/integrations/bitnet.py``) reads and computes:

```text
weight        uint8 (out / 4, in): codes v + 1 in {0, 1, 2}, 2 bits each; byte r holds rows
              r, r + out/4, r + 2 out/4, r + 3 out/4 in bits 0-1, 2-3, 4-5, 6-7
weight_scale  (1,) in the model's dtype: 1 / alpha (the output is divided by it)
bias          (out,), added last; rms_norm.weight (in,) with use_rms_norm
forward       s = 127 / max(absmax(x), 1e-5) a token;  q = clamp(round(x * s), -128, 127)
              y = (q @ v.T) / (s * weight_scale) + bias
```
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._ternary import TernaryLinear, TernaryModel, ternary_model

__all__ = ["export_transformers"]

RUNTIME = "transformers' BitNet layout"
#: Ternary values a byte in transformers' packing (2 bits each, along the output rows).
VALUES_PER_BYTE = 4
WEIGHTS_FILE = "model.safetensors"


def export_transformers(
    model: nn.Module, directory: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``model`` (converted by ``bitnet_``) as a directory that transformers loads with
    its own BitNet layers; return the directory.

    ``AutoModelForCausalLM.from_pretrained(directory)`` (offline; it needs ``accelerate``,
    in snapset's ``llm`` extra) then builds the same architecture with each ternary linear
    layer as transformers' ``BitLinear`` (``quant_method="bitnet"``,
    ``linear_class="bitlinear"``, ``quantization_mode="offline"``), holding:

    - ``weight``: the members ``v`` as 2-bit codes ``v + 1``, four output rows a byte
      (``uint8``, shape ``(out / 4, in)``): exactly the model's members;
    - ``weight_scale``: ``1 / alpha`` (``BitLinear`` divides its output by it), the value of
      the model's dtype whose reciprocal rounds back to ``alpha`` exactly;
    - ``bias`` and, with ``bitnet_(..., rms_norm=True)``, ``rms_norm.weight`` (transformers'
      ``use_rms_norm``, the same name), as they are.

    Every other tensor (embeddings, norms, the float head) is written as it is; the linear
    layers left in float are listed in ``modules_to_not_convert``. The directory holds
    ``config.json`` (the model's config and the ``quantization_config``) and
    ``model.safetensors``. It is written in a temporary directory beside ``directory`` and
    renamed into place, so that a failed export leaves nothing behind.

    transformers' activations differ from snapset's by rounding only: it scales by
    ``x * (127 / absmax)`` and rounds ties to even (``torch.round``), where snapset divides by
    ``absmax / 127`` and rounds ties up; its logits agree with the model's to float tolerance.

    Raises ``TypeError`` if ``model`` is not a transformers ``PreTrainedModel``, and
    ``ValueError`` (nothing written) when a layer is not what ``BitLinear`` computes: weights
    that are not ternary with one scale a tensor (``ternary_model``), an input quantizer that
    is not 8-bit with one absmax scale a token (or none), output features not a multiple of 4,
    RMSNorms on some layers only or with different ``eps``, a ternary layer that transformers
    would keep in float, or a non-empty ``directory`` without ``overwrite=True``.

    Examples:
        >>> import tempfile, torch, transformers, snapset.torch as st
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=32,
        ...     intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        >>> model = st.bitnet_(transformers.LlamaForCausalLM(config)).eval()
        >>> path = st.export_transformers(model, tempfile.mkdtemp() + "/tiny")
        >>> sorted(p.name for p in path.iterdir())
        ['config.json', 'model.safetensors']
    """
    transformers = _import_transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"export_transformers takes a transformers PreTrainedModel (with .config), got "
            f"{type(model).__name__}. Use export_onnx or save for other models"
        )
    target = Path(directory)
    _check_target(target, overwrite)
    ternary = ternary_model(model, runtime=RUNTIME)
    layers = ternary.layers
    for layer in layers.values():
        _check_layer(layer)
    kept = _float_linears(ternary)
    _check_conversion(model, layers, kept)
    tensors = _tensors(ternary)
    config = copy.deepcopy(model.config)
    config.quantization_config = _quantization_config(layers, kept)
    _write_atomically(target, overwrite, config, tensors)
    return target


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - the llm extra is installed in tests
        raise ImportError(
            "export_transformers needs transformers: pip install 'snapset[llm]'"
        ) from error
    return transformers


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"export_transformers writes a directory, but '{target}' is a file")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(
            f"'{target}' exists and is not empty: pass overwrite=True to replace it, or choose "
            "another directory"
        )


def _check_layer(layer: TernaryLinear) -> None:
    """Refuse what transformers' ``BitLinear`` would compute otherwise."""
    if not layer.int8_per_token:
        had = "none" if layer.quantizer is None else repr(layer.quantizer)
        raise ValueError(
            f"transformers' BitLinear quantizes its input to 8 bits with one absmax scale a "
            f"token, but '{layer.name}' has input quantizer {had}. Convert the model with "
            "snapset.torch.bitnet_ (its input quantizers are those)"
        )
    out_features = layer.members.shape[0]
    if out_features % VALUES_PER_BYTE:
        raise ValueError(
            f"transformers' BitLinear packs {VALUES_PER_BYTE} output rows a byte, but "
            f"'{layer.name}' has {out_features} output features. Keep it in float (bitnet_'s "
            "exclude) or give it a multiple of 4"
        )
    norm = layer.norm
    if norm is not None and not (isinstance(norm, nn.RMSNorm) and norm.weight is not None):
        raise ValueError(
            f"transformers' BitLinear(use_rms_norm=True) holds an RMSNorm with a weight, but "
            f"'{layer.name}' has {norm!r}. Convert it with bitnet_(..., rms_norm=True)"
        )


def _float_linears(ternary: TernaryModel) -> list[str]:
    """The qualified names of the linear layers kept in float."""
    return [
        name
        for name, module in ternary.hardened.named_modules()
        if isinstance(module, nn.Linear) and name not in ternary.layers
    ]


def _check_conversion(model: nn.Module, layers: dict[str, TernaryLinear], kept: list[str]) -> None:
    """Ask transformers' own rule which layers it converts: exactly the ternary ones."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    skipped = kept + list(getattr(model, "_keep_in_fp32_modules", None) or [])
    wrong = [name for name in layers if not should_convert_module(name, skipped)]
    wrong += [name for name in kept if should_convert_module(name, skipped)]
    if wrong:
        raise ValueError(
            f"transformers would not load {', '.join(map(repr, wrong))} as the model holds "
            "them (its modules_to_not_convert matches names by prefix and suffix, and the "
            "model class keeps some modules in float). Rename the layers or keep them in "
            "float alike"
        )


def _quantization_config(layers: dict[str, TernaryLinear], kept: list[str]) -> dict[str, Any]:
    norms = [layer.norm for layer in layers.values()]
    with_norm = [norm for norm in norms if norm is not None]
    if with_norm and len(with_norm) != len(norms):
        raise ValueError(
            "transformers' use_rms_norm gives every BitLinear an RMSNorm or none, but "
            f"{len(with_norm)} of the {len(norms)} ternary layers have one. Convert the model "
            "with bitnet_(..., rms_norm=True) or without"
        )
    eps = {getattr(norm, "eps", None) for norm in with_norm}
    if len(eps) > 1 or None in eps:
        raise ValueError(
            f"transformers' rms_norm_eps is one number for all layers, but the layers' "
            f"RMSNorms have eps {sorted(map(str, eps))}. Convert the model with one eps"
        )
    return {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "modules_to_not_convert": kept,
        "use_rms_norm": bool(with_norm),
        "rms_norm_eps": eps.pop() if with_norm else 1e-6,
    }


def _tensors(ternary: TernaryModel) -> dict[str, Tensor]:
    """Everything ``BitLinear`` and the rest of the model read, by name: float tensors as
    they are (the input quantizers have nothing to load), packed ternary weights."""
    quantizers = tuple(f"{name}.input_quantizer." for name in ternary.layers)
    tensors = {
        name: tensor.contiguous().clone()  # tied tensors share memory: safetensors wants copies
        for name, tensor in ternary.float_tensors().items()
        if not name.startswith(quantizers)
    }
    for name, layer in ternary.layers.items():
        dtype = cast(nn.Linear, ternary.hardened.get_submodule(name)).weight.dtype
        tensors[f"{name}.weight"] = pack_rows(layer.members)
        tensors[f"{name}.weight_scale"] = reciprocal_scale(layer, dtype).reshape(1)
    return tensors


def pack_rows(members: Tensor) -> Tensor:
    """transformers' packing of ``(out, in)`` members of {-1, 0, 1}: codes ``v + 1``, output
    row ``r + i * out / 4`` in bits ``2i, 2i + 1`` of byte row ``r`` (``out`` a multiple of 4).
    """
    codes = (members.to(torch.int16) + 1).to(torch.uint8)
    quarters = codes.reshape(VALUES_PER_BYTE, -1, codes.shape[1])
    packed = torch.zeros_like(quarters[0])
    for i, quarter in enumerate(quarters):
        packed |= quarter << (2 * i)
    return packed


def reciprocal_scale(layer: TernaryLinear, dtype: torch.dtype) -> Tensor:
    """``1 / alpha`` in ``dtype``, chosen among the nearest values so that its reciprocal
    rounds back to ``alpha`` exactly (``BitLinear`` divides by it); ``ValueError`` if none."""
    alpha = torch.tensor(layer.scale, dtype=dtype)
    candidate = 1 / alpha
    below = above = candidate
    for _ in range(4):
        for value in (candidate, below, above):
            if torch.equal(1 / value, alpha):
                return value
        below = torch.nextafter(below, torch.tensor(0.0, dtype=dtype))
        above = torch.nextafter(above, torch.tensor(float("inf"), dtype=dtype))
    raise ValueError(
        f"'{layer.name}' has scale {layer.scale!r}, whose reciprocal (transformers' "
        f"weight_scale) does not round back to it in {dtype}. Export in float32"
    )


def _write_atomically(
    target: Path, overwrite: bool, config: Any, tensors: dict[str, Tensor]
) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config.save_pretrained(temporary)
        save_file(tensors, temporary / WEIGHTS_FILE, metadata={"format": "pt"})
        _move_into_place(temporary, target, overwrite)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _move_into_place(temporary: Path, target: Path, overwrite: bool) -> None:
    if not (overwrite and target.is_dir() and any(target.iterdir())):
        os.replace(temporary, target)  # an empty directory is replaced as well
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(temporary, target)
    except OSError:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
