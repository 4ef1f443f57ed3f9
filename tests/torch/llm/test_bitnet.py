"""bitnet_ and set_blend: BitNet b1.58 as one call, the RMSNorm inside each layer, the warm-up."""

import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset.torch._bitnet import input_norm_of


class Block(nn.Module):
    """An attention-less transformer block: enough linear layers and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32, bias=False)
        self.lm_head = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x + self.down(torch.relu(self.up(x))))


def reference_bitlinear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """BitNet b1.58's BitLinear as its authors wrote it (absmean ternary, absmax int8)."""
    w = layer.parametrizations.weight.original
    scale = w.abs().mean().clamp(min=1e-5)
    w_q = (w / scale).round().clamp(-1, 1) * scale
    x_scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-5 * 127) / 127
    x_q = (x / x_scale).round().clamp(-128, 127) * x_scale
    return nn.functional.linear(x_q, w_q, layer.bias)


def test_bitnet_converts_every_linear_layer_but_the_head():
    model = st.bitnet_(Block())
    assert [n for n, _ in st.named_constraints(model)] == ["up.weight", "down.weight"]
    assert [n for n, _ in st.input_quantizers(model)] == ["up", "down"]
    constraint = model.up.parametrizations.weight[0]
    assert constraint.values == snapset.Ternary()
    assert (constraint.scale.scaling.granularity, constraint.scale.scaling.mode) == (
        "tensor",
        "absmean",
    )
    assert constraint.estimator == "identity"  # BitNet's straight-through


def test_bitnet_layer_computes_the_papers_bitlinear():
    torch.manual_seed(0)
    model = st.bitnet_(Block()).eval()
    x = torch.randn(5, 7, 32) * 3
    assert torch.allclose(model.up(x), reference_bitlinear(model.up, x), atol=1e-5)
    members = model.up.weight / model.up.weight.abs().max()
    assert set(members.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_bitnet_exclude_chooses_the_float_layers():
    model = st.bitnet_(Block(), exclude=("down",))
    assert [n for n, _ in st.named_constraints(model)] == ["up.weight", "lm_head.weight"]
    everything = st.bitnet_(Block(), exclude=())
    assert len(list(st.named_constraints(everything))) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exclude": ("lm_haed",)}, "'lm_haed', which match no linear layer"),
        ({"exclude": ("up", "down", "lm_head")}, "no linear layer to convert"),
        ({"eps": 0}, "Invalid eps"),
    ],
)
def test_bitnet_refuses_bad_options_and_leaves_the_model(kwargs, message):
    model = Block()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        st.bitnet_(model, **kwargs)
    assert not list(st.named_constraints(model)) and not list(st.input_quantizers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bitnet_refuses_a_model_converted_before():
    model = st.bitnet_(Block())
    with pytest.raises(ValueError, match="already"):
        st.bitnet_(model)


def test_rms_norm_runs_before_the_input_quantizer():
    torch.manual_seed(0)
    model = st.bitnet_(Block(), rms_norm=True, eps=1e-6).eval()
    norm = input_norm_of(model.down)
    assert isinstance(norm, nn.RMSNorm) and norm.eps == 1e-6
    assert input_norm_of(model.lm_head) is None
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
    x = torch.randn(4, 64) * 10
    assert torch.allclose(model.down(x), reference_bitlinear(model.down, norm(x)), atol=1e-5)
    assert "down.rms_norm.weight" in model.state_dict()


def test_pack_keeps_the_rms_norm_and_the_8_bit_activations():
    torch.manual_seed(0)
    model = st.bitnet_(Block(), rms_norm=True).eval()
    with torch.no_grad():
        model.up.rms_norm.weight.uniform_(0.5, 2)
    packed = st.pack(model)
    assert isinstance(packed.up, st.PackedLinear)
    assert input_norm_of(packed.up) is not None
    for rows in (1, 40):  # the table lookups, then torch._int_mm
        x = torch.randn(rows, 32)
        assert torch.allclose(packed(x), model(x), atol=1e-4)
    assert packed.up.last_kernel == "int8"


def test_set_blend_goes_from_float_to_exact():
    torch.manual_seed(0)
    model = st.bitnet_(Block())
    x = torch.randn(6, 32)
    exact = model.train()(x)
    float_up = nn.functional.linear(x, model.up.parametrizations.weight.original, model.up.bias)
    assert st.set_blend(model, 0.0) == 4  # two weights, two input quantizers
    assert torch.allclose(model.up(x), float_up, atol=1e-6)
    st.set_blend(model, 0.25)
    quarter = model.up(x)
    assert not torch.allclose(quarter, float_up) and not torch.allclose(quarter, model.eval().up(x))
    model.eval()
    assert torch.equal(model(x), exact)  # eval is exact whatever the blend
    st.set_blend(model, 1)
    assert torch.equal(model.train()(x), exact)


def test_set_blend_trains_the_float_weight_through_both_ends():
    model = st.bitnet_(Block())
    st.set_blend(model, 0.5)
    model(torch.randn(3, 32)).sum().backward()
    assert model.up.parametrizations.weight.original.grad.abs().sum() > 0


@pytest.mark.parametrize("amount", [-0.1, 1.5, True, "1"])
def test_set_blend_refuses_amounts_outside_0_1(amount):
    model = st.bitnet_(Block())
    with pytest.raises(ValueError, match="Invalid amount"):
        st.set_blend(model, amount)
    assert model.up.parametrizations.weight[0].blend == 1.0


def test_a_hardened_model_is_exact_after_a_blend():
    model = st.bitnet_(Block())
    st.set_blend(model, 0.3)
    hardened = st.harden_(model)
    weight = hardened.up.weight
    assert set((weight / weight.abs().max()).unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_tiny_llama_packs_and_generates_the_same_tokens(tiny_llama):
    model = tiny_llama()
    packed = st.pack(model)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        got = packed(ids).logits
    assert torch.allclose(got, expected, atol=1e-3)
    kept = packed.packing_report.kept
    assert list(kept) == [] and len(packed.packing_report.packed) == 14
