"""GGUF export for llama.cpp: a Llama converted by ``bitnet_``, its ternary layers as TQ1_0 or
TQ2_0 blocks built from the exact members and scale, everything else in float.

llama.cpp's ternary types hold 256 weights a block with one float16 scale ``d``: a weight is
``d * t``, ``t`` in {-1, 0, 1}. TQ2_0 stores each ``t + 1`` in two bits (66 bytes a block,
2.0625 bits a weight); TQ1_0 packs five trits a byte as base-3 fractions (54 bytes, 1.6875
bits). Both are written here byte by byte from the members (no float is rounded to find them),
as llama.cpp's ``quantize_row_tq{1,2}_0_ref`` lays them out, and checked by dequantizing every
block with the ``gguf`` package before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from torch import Tensor, nn

from ..._files import write_atomically
from ._ternary import TernaryLinear, TernaryModel, ternary_model

if TYPE_CHECKING:
    import gguf

__all__ = ["export_gguf"]

#: Weights in a TQ1_0 / TQ2_0 block (llama.cpp's ``QK_K``), each block with one float16 scale.
BLOCK = 256
TERNARY_TYPES = ("TQ1_0", "TQ2_0")
FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {"F32": np.float32, "F16": np.float16}
#: The vocabulary written: 256 tokens, token id = byte value.
BYTES = 256
#: float16's smallest normal number: below it a scale would keep fewer than 11 bits.
F16_TINY = 2.0**-14
F16_MAX = 65504.0


@dataclass(frozen=True)
class _Llama:
    """The hyperparameters llama.cpp's ``llama`` architecture reads, from a transformers
    ``LlamaConfig``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    feed_forward: int
    eps: float
    rope_theta: float
    context: int
    tied: bool


def export_gguf(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    ternary: str = "TQ2_0",
    float_type: str = "F32",
    context_length: int | None = None,
) -> Path:
    r"""Write ``model``, a transformers ``LlamaForCausalLM`` converted by ``bitnet_``, as a GGUF
    file that llama.cpp loads with its ``llama`` architecture; return the path.

    Each ternary layer (``w = alpha * v``, ``v`` in {-1, 0, 1}) becomes ``ternary`` blocks
    (``"TQ2_0"``, 2.0625 bits a weight, or ``"TQ1_0"``, 1.6875) of 256 weights, each block
    holding the layer's members exactly and ``d = alpha`` **rounded to float16**: llama.cpp
    stores a block's scale in float16, so the runtime's weight is ``f16(alpha) * v``, within a
    relative 2**-11 of snapset's (every block is checked to dequantize to exactly
    ``members * f16(alpha)``). Embeddings, the head and any linear layer left in float are
    written as ``float_type`` (``"F32"``, exact, or ``"F16"``); norms and biases always in
    F32, as llama.cpp's own converter does. Tensor names and the rotary permutation of the
    query and key rows (transformers rotates halves of a head, llama.cpp adjacent pairs)
    follow llama.cpp's ``convert_hf_to_gguf.py``; a permutation of rows keeps them exact.

    What llama.cpp computes differs from snapset's eval forward in two roundings it does on
    its own: the block scale in float16, and the 8-bit activations, which it rounds with one
    absmax scale a block of 256 inputs (its ``Q8_K``) rather than one a token. A layer
    without an input quantizer is therefore also run with 8-bit inputs. On a tiny trained
    Llama (``benchmarks/results/llama_cpp_agreement.md``) llama.cpp's logits differ from
    snapset's by 0.014 on average (top-1 agreement 97.4%), and from a torch forward with
    both of its roundings by 0.0007 (100%); the block rounding accounts for most of it.

    The vocabulary is 256 byte tokens (token id = byte value), written as GPT-2's byte-level
    BPE vocabulary (``tokenizer.ggml.model = "gpt2"``): llama.cpp then tokenizes any text to
    exactly its UTF-8 bytes and decodes tokens back to them, so prompts given as text reach
    the model as it was trained. The file holds one merge, ``"ĠĠ ĠĠ"``, that never applies
    (no merge forms its halves): llama.cpp requires the key and ``gguf`` writes no empty
    array. There is no special token; ``bos``/``eos`` name token 0 (the NUL byte) and none is
    added. ``context_length`` defaults to ``config.max_position_embeddings``.

    The file is written under a temporary name in the same folder and renamed: a failed export
    leaves nothing. Raises ``ValueError``, writing nothing, for: a model whose
    ``config.model_type`` is not ``"llama"`` (or that has no ``config``), an activation other
    than SiLU, RoPE scaling other than the default, a ``vocab_size`` other than 256, a layer
    with its own RMSNorm (``bitnet_(..., rms_norm=True)``: llama.cpp's Llama graph has no norm
    inside a linear layer), a ternary layer whose rows are not a multiple of 256 long, an
    input quantizer other than ``bitnet_``'s 8-bit one, a scale that float16 cannot hold to
    11 bits (outside 6.1e-05 .. 65504), an unknown ``ternary`` or ``float_type``, and
    everything ``ternary_model`` refuses (non-ternary sets, per-channel scales).

    Examples:
        >>> import os, tempfile, gguf, transformers, snapset.torch as st
        >>> config = transformers.LlamaConfig(vocab_size=256, hidden_size=256,
        ...     intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
        ...     num_key_value_heads=2)
        >>> model = st.bitnet_(transformers.LlamaForCausalLM(config).eval())
        >>> path = st.export_gguf(model, os.path.join(tempfile.mkdtemp(), "tiny.gguf"))
        >>> types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        >>> types["blk.0.attn_q.weight"], types["token_embd.weight"]
        ('TQ2_0', 'F32')
    """
    import gguf

    quant = _ternary_type(ternary)
    float_dtype = _float_dtype(float_type)
    llama = _llama_config(model, context_length)
    ternaries = ternary_model(model, runtime="GGUF")
    for layer in ternaries.layers.values():
        _check_layer(layer)
    tensors = list(_tensors(ternaries, llama, quant, float_dtype))
    target = Path(path)
    file_type = gguf.LlamaFileType[f"MOSTLY_{ternary}"]
    write_atomically(target, lambda temporary: _write(temporary, llama, file_type, tensors))
    return target


def _ternary_type(ternary: object) -> gguf.GGMLQuantizationType:
    import gguf

    if ternary not in TERNARY_TYPES:
        raise ValueError(
            f"Invalid ternary: {ternary!r} (llama.cpp's ternary types are "
            f"{', '.join(map(repr, TERNARY_TYPES))}: 'TQ2_0' holds 2.0625 bits a weight and "
            "runs fastest, 'TQ1_0' 1.6875)"
        )
    return gguf.GGMLQuantizationType[str(ternary)]


def _float_dtype(float_type: object) -> type[np.floating[Any]]:
    if float_type not in FLOAT_TYPES:
        raise ValueError(
            f"Invalid float_type: {float_type!r} (the embeddings and the head are written as "
            f"one of {', '.join(map(repr, FLOAT_TYPES))}; 'F32' keeps them exact)"
        )
    return FLOAT_TYPES[str(float_type)]


def _llama_config(model: nn.Module, context_length: int | None) -> _Llama:
    """Read and check what llama.cpp's ``llama`` architecture needs from ``model.config``."""
    config: Any = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        got = f"config.model_type {model_type!r}" if config is not None else "no .config"
        raise ValueError(
            f"export_gguf writes llama.cpp's 'llama' architecture from a transformers "
            f"LlamaForCausalLM (config.model_type 'llama'), but {type(model).__name__} has "
            f"{got}"
        )
    if config.hidden_act != "silu":
        raise ValueError(
            f"llama.cpp's llama graph gates its MLP with SiLU, but config.hidden_act is "
            f"{config.hidden_act!r}"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(
            f"export_gguf writes plain RoPE, but the model's rope_type is {rope_type!r}: "
            "train the model with the default rope parameters"
        )
    if config.vocab_size != BYTES:
        raise ValueError(
            f"export_gguf writes a byte vocabulary (256 tokens, token id = byte value), but "
            f"config.vocab_size is {config.vocab_size}: train the model on bytes"
        )
    heads = config.num_attention_heads
    context = config.max_position_embeddings if context_length is None else context_length
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"Invalid context_length: {context!r} (must be a positive int)")
    return _Llama(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=config.num_key_value_heads or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        feed_forward=config.intermediate_size,
        eps=float(config.rms_norm_eps),
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        context=context,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


def _check_layer(layer: TernaryLinear) -> None:
    """Refuse a ternary layer that llama.cpp's TQ blocks and Llama graph cannot run as is."""
    if layer.norm is not None:
        raise ValueError(
            f"llama.cpp's llama graph has no RMSNorm inside a linear layer, but "
            f"'{layer.name}' has one (bitnet_(..., rms_norm=True)). Convert the model with "
            "bitnet_(model) (rms_norm=False) to export it to GGUF"
        )
    columns = layer.members.shape[1]
    if columns % BLOCK:
        raise ValueError(
            f"TQ1_0 and TQ2_0 hold rows in blocks of {BLOCK} weights, but '{layer.name}' has "
            f"rows of {columns}. Choose layer widths that are multiples of {BLOCK}, or keep the "
            f"layer in float (bitnet_(model, exclude=('lm_head', '{layer.name}')))"
        )
    if layer.quantizer is not None and not layer.int8_per_token:
        raise ValueError(
            f"llama.cpp rounds a ternary layer's input to 8 bits itself, but '{layer.name}' "
            f"has an input quantizer to {layer.quantizer.values!r}, which it cannot apply. "
            "Use bitnet_'s 8-bit per-token inputs or none"
        )


def _tensors(
    ternaries: TernaryModel,
    llama: _Llama,
    quant: gguf.GGMLQuantizationType,
    float_dtype: type[np.floating[Any]],
) -> Iterator[tuple[str, npt.NDArray[Any], gguf.GGMLQuantizationType | None]]:
    """Each tensor of the file: its GGUF name, its data and its type when quantized."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, llama.layers)
    floats = ternaries.float_tensors()
    if llama.tied:
        floats.pop("lm_head.weight", None)  # llama.cpp reuses token_embd as the head
    elif "lm_head.weight" not in floats and "lm_head" not in ternaries.layers:
        raise ValueError(
            "export_gguf needs the output head 'lm_head.weight' (a LlamaForCausalLM), or "
            "config.tie_word_embeddings=True"
        )
    for name in ternaries.hardened.state_dict():  # the model's order
        layer = ternaries.layers.get(name.removesuffix(".weight"))
        if layer is not None:
            members = _rope_rows(name, layer.members, llama).numpy()
            blocks = ternary_blocks(members, layer.scale, quant, layer.name)
            yield _gguf_name(names, name), blocks, quant
        elif name in floats:
            data = _rope_rows(name, floats[name], llama).float().cpu().numpy()
            dtype = float_dtype if data.ndim > 1 else np.float32
            yield _gguf_name(names, name), _as_float(data, dtype, name), None


def _gguf_name(names: gguf.TensorNameMap, name: str) -> str:
    mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ValueError(
            f"llama.cpp's llama architecture has no tensor for '{name}': export_gguf writes "
            "the tensors of a transformers LlamaForCausalLM only"
        )
    return mapped


def _rope_rows(name: str, tensor: Tensor, llama: _Llama) -> Tensor:
    """Reorder the rows of a query or key projection (weight or bias) from transformers'
    rotary layout (a head's first half rotates with its second) to llama.cpp's (adjacent
    pairs rotate): row ``2i`` of a head takes row ``i``, row ``2i + 1`` row ``i + d/2``."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        heads = llama.heads
    elif name.endswith(("k_proj.weight", "k_proj.bias")):
        heads = llama.kv_heads
    else:
        return tensor
    rows = tensor.shape[0]
    split = tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:])
    return split.transpose(1, 2).reshape(tensor.shape)


def _as_float(data: npt.NDArray[Any], dtype: type[np.floating[Any]], name: str) -> npt.NDArray[Any]:
    if dtype is np.float16 and np.abs(data).max(initial=0.0) > F16_MAX:
        raise ValueError(
            f"'{name}' holds values beyond float16's range (65504): export it with float_type='F32'"
        )
    return np.ascontiguousarray(data.astype(dtype))


def ternary_blocks(
    members: npt.NDArray[np.int8], scale: float, quant: gguf.GGMLQuantizationType, name: str
) -> npt.NDArray[np.uint8]:
    """The TQ1_0 or TQ2_0 bytes of a ``(rows, columns)`` matrix ``scale * members``: one block
    of 256 members a row segment, each with ``d = f16(scale)``; checked by dequantizing.

    ``ValueError`` when ``scale`` lies outside what float16 holds to 11 bits."""
    import gguf

    d = _f16_scale(scale, name)
    trits = (members.astype(np.int16) + 1).astype(np.uint8).reshape(-1, BLOCK)  # -1,0,1 -> 0,1,2
    packed = _pack_tq1(trits) if quant == gguf.GGMLQuantizationType.TQ1_0 else _pack_tq2(trits)
    scales = np.full((len(trits), 1), d, dtype=np.float16).view(np.uint8)
    blocks = np.concatenate([packed, scales], axis=1).reshape(members.shape[0], -1)
    expected = members.astype(np.float32) * np.float32(d)
    if not np.array_equal(gguf.quants.dequantize(blocks, quant), expected):
        raise RuntimeError(f"GGUF {quant.name} blocks of '{name}' do not dequantize exactly")
    return blocks


def _f16_scale(scale: float, name: str) -> float:
    if not F16_TINY <= abs(scale) <= F16_MAX:
        raise ValueError(
            f"llama.cpp stores a ternary block's scale in float16, which holds '{name}'s scale "
            f"{scale!r} to 11 bits only between 6.1e-05 and 65504: rescale the layer (its "
            "input or output) into that range, or keep it in float"
        )
    return float(np.float16(scale))


def _pack_tq2(trits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Four trits a byte, two bits each: byte ``m`` of each 32-byte group of a block holds
    entries ``m, m + 32, m + 64, m + 96`` of its 128 in bits 0-1, 2-3, 4-5, 6-7."""
    groups = trits.reshape(len(trits), -1, 4, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    packed: npt.NDArray[np.uint8] = np.bitwise_or.reduce(groups << shifts, axis=2)
    return packed.reshape(len(trits), -1)


def _pack_tq1(trits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Five trits a byte as a base-3 fraction of 256 (rounded up, so that ``q * 3 >> 8`` reads
    the first trit back and each further ``* 3`` the next): 32 bytes for entries 0-159 (byte
    ``m`` holds ``m, m + 32, ..., m + 128``, the first most significant), 16 for 160-239, and
    4 bytes of four trits (shifted by one place) for the last 16."""
    n = len(trits)
    powers = np.array([81, 27, 9, 3, 1], dtype=np.uint16).reshape(1, 1, 5, 1)
    head = (trits[:, :160].reshape(n, -1, 5, 32) * powers).sum(axis=2).reshape(n, -1)
    middle = (trits[:, 160:240].reshape(n, -1, 5, 16) * powers).sum(axis=2).reshape(n, -1)
    tail = (trits[:, 240:].reshape(n, -1, 4, 4) * powers[:, :, :4]).sum(axis=2).reshape(n, -1)
    digits = np.concatenate([head, middle, tail], axis=1).astype(np.uint16)
    return ((digits * 256 + 242) // 243).astype(np.uint8)


def byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: the text of the token for each byte, in byte order (a
    printable byte stands for itself, the others for code points from 256 up)."""
    from gguf.vocab import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return [alphabet[b] for b in range(BYTES)]


def _write(
    path: Path,
    llama: _Llama,
    file_type: gguf.LlamaFileType,
    tensors: list[tuple[str, npt.NDArray[Any], gguf.GGMLQuantizationType | None]],
) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name("snapset ternary Llama")
    writer.add_file_type(int(file_type))
    writer.add_context_length(llama.context)
    writer.add_embedding_length(llama.hidden)
    writer.add_block_count(llama.layers)
    writer.add_feed_forward_length(llama.feed_forward)
    writer.add_head_count(llama.heads)
    writer.add_head_count_kv(llama.kv_heads)
    if llama.head_dim * llama.heads != llama.hidden:
        writer.add_key_length(llama.head_dim)
        writer.add_value_length(llama.head_dim)
    writer.add_rope_dimension_count(llama.head_dim)
    writer.add_rope_freq_base(llama.rope_theta)
    writer.add_layer_norm_rms_eps(llama.eps)
    writer.add_vocab_size(BYTES)
    _add_byte_vocabulary(writer)
    for name, data, quant in tensors:
        writer.add_tensor(name, data, raw_dtype=quant)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_byte_vocabulary(writer: gguf.GGUFWriter) -> None:
    import gguf

    tokens = byte_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * BYTES)
    space = tokens[ord(" ")]
    writer.add_token_merges([f"{space * 2} {space * 2}"])  # never applies: see export_gguf
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
