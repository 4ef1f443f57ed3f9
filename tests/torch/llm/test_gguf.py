"""GGUF export (llama.cpp's TQ1_0 / TQ2_0): the file read back with the ``gguf`` package's own
reader, every ternary block against the model's members and float16 scale, every float tensor
bit for bit, and each refusal leaving no file. llama.cpp itself runs in tests/runtimes."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import snapset
import snapset.torch as st
from snapset.torch.export._gguf import byte_tokens, export_gguf, ternary_blocks
from snapset.torch.export._ternary import ternary_model

gguf = pytest.importorskip("gguf")

LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TYPES = ["TQ1_0", "TQ2_0"]


def gguf_name(hf_name):
    """The GGUF name of a transformers Llama tensor, spelled out (not gguf's own map)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, block, rest = hf_name.split(".", 3)
    stem, suffix = rest.rsplit(".", 1)
    stem = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        **LAYER_NAMES,
    }[stem]
    return f"blk.{block}.{stem}.{suffix}"


def rope_rows_reference(rows, heads):
    """llama.cpp's row order for a query or key projection, one row at a time: within each
    head of d rows, row 2i is transformers' row i and row 2i + 1 its row i + d/2."""
    d = rows.shape[0] // heads
    out = torch.empty_like(rows)
    for h in range(heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = rows[h * d + i]
            out[h * d + 2 * i + 1] = rows[h * d + d // 2 + i]
    return out


def llama_cpp_rows(name, tensor, config):
    if "q_proj" in name:
        return rope_rows_reference(tensor, config.num_attention_heads)
    if "k_proj" in name:
        return rope_rows_reference(tensor, config.num_key_value_heads)
    return tensor


def read(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def field(reader, key):
    return reader.fields[key].contents()


def dequantized(tensor):
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type)


@pytest.mark.parametrize("ternary", TYPES)
def test_blocks_hold_the_members_and_the_f16_scale(tiny_llama, tmp_path, ternary):
    model = tiny_llama()
    path = export_gguf(model, tmp_path / "m.gguf", ternary=ternary)
    _, tensors = read(path)
    layers = ternary_model(model, runtime="GGUF").layers
    assert len(layers) == 2 * len(LAYER_NAMES)
    for name, layer in layers.items():
        tensor = tensors[gguf_name(f"{name}.weight")]
        assert tensor.tensor_type.name == ternary
        assert list(tensor.shape) == list(reversed(layer.members.shape))  # GGUF lists ne0 first
        members = llama_cpp_rows(name, layer.members, model.config).numpy()
        expected = members.astype(np.float32) * np.float32(np.float16(layer.scale))
        assert np.array_equal(dequantized(tensor), expected)
        # the members themselves, not only their product with the scale
        assert np.array_equal(dequantized(tensor) / np.float32(np.float16(layer.scale)), members)


def test_float_tensors_are_bit_exact(tiny_llama, tmp_path):
    model = tiny_llama()
    path = export_gguf(model, tmp_path / "m.gguf")
    _, tensors = read(path)
    floats = ternary_model(model, runtime="GGUF").float_tensors()
    assert set(floats) == {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(
            f"model.layers.{i}.{n}.weight"
            for i in range(2)
            for n in ("input_layernorm", "post_attention_layernorm")
        ),
    }
    for name, value in floats.items():
        tensor = tensors[gguf_name(name)]
        assert tensor.tensor_type.name == "F32"
        assert np.array_equal(np.asarray(tensor.data).reshape(value.shape), value.numpy())
    assert len(tensors) == len(floats) + 2 * len(LAYER_NAMES)


def test_f16_floats_and_f32_norms(tiny_llama, tmp_path):
    model = tiny_llama()
    path = export_gguf(model, tmp_path / "m.gguf", float_type="F16")
    _, tensors = read(path)
    embed = model.model.embed_tokens.weight.detach()
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data), embed.half().numpy())
    assert tensors["output_norm.weight"].tensor_type.name == "F32"


def test_blocks_equal_gguf_quantize_of_the_weight(tiny_llama):
    layer = next(iter(ternary_model(tiny_llama(), runtime="GGUF").layers.values()))
    weight = layer.members.numpy().astype(np.float32) * np.float32(np.float16(layer.scale))
    for ternary in TYPES:
        qtype = gguf.GGMLQuantizationType[ternary]
        ours = ternary_blocks(layer.members.numpy(), layer.scale, qtype, layer.name)
        assert np.array_equal(ours, gguf.quants.quantize(weight, qtype))


def test_metadata_and_byte_vocabulary(tiny_llama, tmp_path):
    model = tiny_llama()
    path = export_gguf(model, tmp_path / "m.gguf", ternary="TQ1_0", context_length=64)
    reader, _ = read(path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_TQ1_0
    expected = {
        "llama.context_length": 64,
        "llama.embedding_length": 256,
        "llama.block_count": 2,
        "llama.feed_forward_length": 512,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 64,
        "llama.vocab_size": 256,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "llama.rope.freq_base") == model.config.rope_parameters["rope_theta"]
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(tokens) == len(set(tokens)) == 256
    assert tokens[ord("a")] == "a" and tokens[ord(" ")] == "\u0120" and tokens[10] == "\u010a"
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_byte_tokens_are_gpt2_byte_level_alphabet():
    slow = pytest.importorskip("transformers.convert_slow_tokenizer")
    gpt2 = slow.bytes_to_unicode()
    assert byte_tokens() == [gpt2[b] for b in range(256)]


def test_tied_embeddings_write_no_head(tiny_llama, tmp_path):
    model = tiny_llama(tie_word_embeddings=True)
    _, tensors = read(export_gguf(model, tmp_path / "m.gguf"))
    assert "output.weight" not in tensors and "token_embd.weight" in tensors


def test_biases_are_written_and_rope_permuted(tiny_llama, tmp_path):
    model = tiny_llama(attention_bias=True, mlp_bias=True)
    _, tensors = read(export_gguf(model, tmp_path / "m.gguf"))
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
        bias = model.get_submodule(f"model.layers.1.{name}").bias.detach()
        written = np.asarray(tensors[gguf_name(f"model.layers.1.{name}.bias")].data)
        assert np.array_equal(written, llama_cpp_rows(name, bias, model.config).numpy())


def test_f16_scale_is_within_half_an_ulp(tiny_llama):
    scales = [layer.scale for layer in ternary_model(tiny_llama(), runtime="GGUF").layers.values()]
    errors = [abs(float(np.float16(s)) / s - 1) for s in scales]
    print(f"f16(alpha) / alpha - 1: max {max(errors):.2e}, mean {np.mean(errors):.2e}")
    assert max(errors) <= 2.0**-11


def test_a_failed_write_leaves_the_old_file(tiny_llama, tmp_path, monkeypatch):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")

    def fail(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_llama(), target)
    assert os.listdir(tmp_path) == ["m.gguf"] and target.read_bytes() == b"old"


def sign_inputs(model):
    st.remove_input_quantizers_(model)
    return st.quantize_inputs_(model, st.Quantize(snapset.Sign()))


def huge_scale(model):
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.parametrizations.weight.original.mul_(1e7)
    return model


def fake_model(model_type):
    model = torch.nn.Linear(256, 256)
    model.config = SimpleNamespace(model_type=model_type)
    return st.bitnet_(model, exclude=())


REFUSALS = [
    (dict(), dict(ternary="TQ3_0"), "Invalid ternary: 'TQ3_0'"),
    (dict(), dict(float_type="BF16"), "Invalid float_type: 'BF16'"),
    (dict(), dict(context_length=0), "Invalid context_length"),
    (dict(rms_norm=True), dict(), "no RMSNorm inside a linear layer.*q_proj.*rms_norm=True"),
    (dict(intermediate_size=384), dict(), "blocks of 256.*down_proj' has rows of 384"),
    (dict(vocab_size=300), dict(), "byte vocabulary.*vocab_size is 300"),
    (dict(hidden_act="gelu"), dict(), "SiLU.*'gelu'"),
    (
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
        dict(),
        "plain RoPE.*'linear'",
    ),
]


@pytest.mark.parametrize(("config", "options", "message"), REFUSALS)
def test_refusals_write_nothing(tiny_llama, tmp_path, config, options, message):
    model = tiny_llama(**config)
    with pytest.raises(ValueError, match=message):
        export_gguf(model, tmp_path / "m.gguf", **options)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (sign_inputs, "input quantizer .* cannot apply"),
        (huge_scale, "scale in float16.*up_proj"),
    ],
)
def test_refused_layers_write_nothing(tiny_llama, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        export_gguf(change(tiny_llama()), tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("model_type", ["mistral", None])
def test_other_architectures_are_refused(tmp_path, model_type):
    model = fake_model(model_type)
    if model_type is None:
        del model.config
    with pytest.raises(ValueError, match=r"'llama' architecture.*LlamaForCausalLM"):
        export_gguf(model, tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_a_float_model_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=1
    )
    with pytest.raises(ValueError, match="no ternary linear layer"):
        export_gguf(transformers.LlamaForCausalLM(config), tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []
