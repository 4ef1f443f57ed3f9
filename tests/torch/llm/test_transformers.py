"""export_transformers: a directory that transformers loads with its own BitLinear layers,
computing what the snapset model computes.

transformers rounds each activation as ``round(x * (127 / absmax))`` (ties to even), snapset
as ``x / (absmax / 127)`` with ties up. Where both give the same integers, a layer's outputs
agree to a few float32 ulps (measured: at most 5e-7). But an ulp of difference can carry an
activation across a rounding boundary, and that integer step spreads through the later
layers: the whole model's logits differ by up to 5e-4 (bias: one layer's activations) or
1.2e-2 (RMSNorms inside the layers: one activation of layer 0's down_proj rounded the other
way, hundreds downstream). So the logits are compared twice: with snapset's rounding put in
transformers' BitLinear, to 1e-5 (everything else is transformers' own arithmetic on the
stored tensors), and with transformers' own rounding, to that measured bound.

transformers compiles BitLinear's helpers with ``torch.compile``; on a CPU that costs about
40 s a model, and eager computes the same (measured: no difference), so the tests run eager.
"""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import snapset
import snapset.torch as st
from snapset.torch.export._transformers import export_transformers

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers.integrations.bitnet import BitLinear, unpack_weights  # noqa: E402

from .conftest import build_llama  # noqa: E402

#: transformers' logits against snapset's where both round every activation alike.
ATOL = 1e-5
#: ... and with transformers' own rounding (measured: 1.2e-2 at most, see above).
ROUNDING_BOUND = 5e-2
TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
INT8 = st.Quantize(snapset.ValueSet(range(-128, 128)), scale="token")
VARIANTS = {
    "plain": dict(),
    "bias": dict(attention_bias=True, mlp_bias=True),
    "rms_norm": dict(rms_norm=True),
}


@pytest.fixture(autouse=True)
def eager() -> Iterator[None]:
    with torch._dynamo.config.patch(disable=True):
        yield


def load(directory: Path) -> nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


def trained_looking(model: nn.Module) -> nn.Module:
    """Norm weights other than 1 and biases other than 0, as training leaves them, so that
    loading them shows."""
    generator = torch.Generator().manual_seed(1)
    for name, tensor in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith(".bias"):
            tensor.data = torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75
    return model


def ternary_names(model: nn.Module) -> list[str]:
    return [name.removesuffix(".weight") for name, _ in st.named_constraints(model)]


def snapset_rounding(self: Any, input: torch.Tensor, num_bits: int = 8) -> Any:
    """BitLinear.activation_quant with snapset's integers (ties up, ``x / (absmax / 127)``)
    and transformers' scale: what the snapset model computes, in transformers' layout."""
    step = input.abs().amax(-1, keepdim=True) / 127
    return (INT8(input) / step).round().to(torch.int8), 1 / step


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, nn.Module]:
    """A tiny Llama of each variant and what transformers loads of it (once a module)."""
    options = dict(VARIANTS[request.param])
    rms_norm = bool(options.pop("rms_norm", False))
    model = trained_looking(st.bitnet_(build_llama(**options), rms_norm=rms_norm).eval())
    with torch._dynamo.config.patch(disable=True):
        loaded = load(export_transformers(model, tmp_path_factory.mktemp("hf") / "hf"))
    return model, loaded


def layer_inputs(loaded: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """What each ternary layer of ``loaded`` receives in its own forward of ``TOKENS``."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        loaded.get_submodule(name).register_forward_pre_hook(
            lambda _, args, name=name: inputs.__setitem__(name, args[0])
        )
        for name in names
    ]
    with torch.no_grad():
        loaded(TOKENS)
    for handle in handles:
        handle.remove()
    return inputs


def test_each_layer_equals_snapset_where_activations_round_alike(
    exported: tuple[nn.Module, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, loaded = exported
    names = ternary_names(model)
    inputs = layer_inputs(loaded, names)
    monkeypatch.setattr(BitLinear, "activation_quant", snapset_rounding)
    with torch.no_grad():
        for name in names:
            ours, theirs = model.get_submodule(name), loaded.get_submodule(name)
            x = inputs[name]
            torch.testing.assert_close(theirs(x), ours(x), atol=ATOL, rtol=0, msg=name)


def test_each_layer_with_transformers_rounding_differs_at_ties_only(
    exported: tuple[nn.Module, nn.Module],
) -> None:
    """Tokens whose integers agree give the same outputs; the others have activations within
    a few ulps of a half-integer, where ``x * (127 / m)`` and ``x / (m / 127)`` may round apart.
    """
    model, loaded = exported
    names = ternary_names(model)
    inputs = layer_inputs(loaded, names)
    flipped = 0
    with torch.no_grad():
        for name in names:
            ours, theirs = model.get_submodule(name), loaded.get_submodule(name)
            x = inputs[name]
            norm = getattr(theirs, "rms_norm", None)
            normed = x if norm is None else norm(x)
            ints, _ = theirs.activation_quant(normed)
            ours_ints, _ = snapset_rounding(None, normed)
            apart = ints != ours_ints
            units = normed.double() / normed.double().abs().amax(-1, keepdim=True) * 127
            assert ((units[apart] - units[apart].floor() - 0.5).abs() < 1e-4).all(), name
            same = ~apart.any(-1)
            torch.testing.assert_close(theirs(x)[same], ours(x)[same], atol=ATOL, rtol=0)
            flipped += int(apart.sum())
    assert flipped <= 5


def test_logits_are_close(exported: tuple[nn.Module, nn.Module]) -> None:
    model, loaded = exported
    with torch.no_grad():
        got, expected = loaded(TOKENS).logits, model(TOKENS).logits
    assert (got - expected).abs().max() <= ROUNDING_BOUND
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95


def test_loaded_layers_are_transformers_bitlinear(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    model = trained_looking(tiny_llama(rms_norm=True))
    directory = export_transformers(model, tmp_path / "hf")
    loaded = load(directory)
    names = ternary_names(model)
    assert len(names) == 14
    for name in names:
        layer = loaded.get_submodule(name)
        assert type(layer) is BitLinear
        assert torch.equal(layer.rms_norm.weight, model.get_submodule(name).rms_norm.weight)
    assert type(loaded.lm_head) is nn.Linear
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    config = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert config == {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "modules_to_not_convert": ["lm_head"],
        "use_rms_norm": True,
        "rms_norm_eps": 1e-6,
    }


def test_stored_weights_are_packed_members_and_reciprocal_scales(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    model = tiny_llama()
    directory = export_transformers(model, tmp_path / "hf")
    tensors = load_file(directory / "model.safetensors")
    hardened = st.harden_(tiny_llama())
    ternary_bytes = 0
    for name in ternary_names(model):
        weight = hardened.get_submodule(name).weight
        packed = tensors[f"{name}.weight"]
        assert packed.dtype == torch.uint8
        assert packed.shape == (weight.shape[0] // 4, weight.shape[1])
        alpha = weight.abs().max()
        members = unpack_weights(packed, dtype=torch.float32)
        assert torch.equal(members * alpha, weight)  # bit for bit
        assert torch.equal(1 / tensors[f"{name}.weight_scale"], alpha.reshape(1))
        ternary_bytes += packed.numel()
    floats = sum(p.numel() * 4 for n, p in hardened.named_parameters() if "proj" not in n)
    file_size = os.path.getsize(directory / "model.safetensors")
    # 2 bits a ternary weight, the embeddings and head in float, and a small header
    assert ternary_bytes + floats < file_size < ternary_bytes + floats + 8192


def test_refuses_a_model_that_is_not_pretrained(tmp_path: Path) -> None:
    model = st.bitnet_(nn.Sequential(nn.Linear(8, 8)), exclude=())
    with pytest.raises(TypeError, match="PreTrainedModel"):
        export_transformers(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_refuses_inputs_that_are_not_int8_per_token(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    model = st.remove_input_quantizers_(tiny_llama())
    with pytest.raises(ValueError, match=r"8 bits with one absmax scale a token.*q_proj"):
        export_transformers(model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_refuses_weights_that_are_not_ternary(tmp_path: Path) -> None:
    model = st.constrain_(build_llama(), snapset.Sign(), filter_fn=lambda _, n: "proj" in n)
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        export_transformers(model, tmp_path / "hf")


def test_refuses_rows_that_do_not_pack_by_four(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="gate_proj' has 510 output features"):
        export_transformers(tiny_llama(intermediate_size=510), tmp_path / "hf")


def test_refuses_norms_on_some_layers_only(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    model = tiny_llama(rms_norm=True)
    layer = model.model.layers[0].mlp.down_proj
    for key, hook in list(layer._forward_pre_hooks.items()):
        if hook.__name__ == "_normalize_input":
            del layer._forward_pre_hooks[key]
    with pytest.raises(ValueError, match="13 of the 14 ternary layers"):
        export_transformers(model, tmp_path / "hf")


def test_a_non_empty_directory_is_replaced_only_with_overwrite(
    tiny_llama: Callable[..., nn.Module], tmp_path: Path
) -> None:
    target = tmp_path / "hf"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="overwrite=True"):
        export_transformers(tiny_llama(), target)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    export_transformers(tiny_llama(), target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary left beside it
