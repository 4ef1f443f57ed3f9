"""export_onnx of scaled weights and input quantizers: what onnxruntime computes is what
PyTorch computes, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import snapset
import snapset.torch as st


def run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return np.asarray(y)


@pytest.mark.parametrize(
    ("values", "scale"),
    [(snapset.Ternary(), "channel"), (snapset.Ternary(), 3), (snapset.Sign(), "tensor")],
    ids=["ternary-channel", "ternary-groups-of-3", "sign-tensor"],
)
def test_scaled_weights_are_codes_times_scales_bit_for_bit(
    tmp_path: Path, values: snapset.ValueSet, scale: str | int
) -> None:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(6, 4, bias=False), "weight", values, scale=scale)
    scale = layer.parametrizations.weight[0].scale
    with torch.no_grad():  # scales away from their start, as training leaves them
        scale.log_gain.add_(torch.rand(scale.log_gain.shape) - 0.5)
    alpha = scale.alpha
    model = nn.Sequential(layer).eval()
    path = st.export_onnx(model, torch.randn(2, 6), tmp_path / "m.onnx")
    onnx.checker.check_model(str(path))
    initializers = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
    }
    assert initializers["0.weight.codes"].dtype == np.uint8
    assert initializers["0.weight.scales"].size == alpha.numel()
    assert "0.weight" not in initializers  # rebuilt from the codes and the scales
    # rows of the identity read the weight out of the runtime: I @ W.T = W.T, no sum rounds
    weight = st.harden_(model)[0].weight.detach()
    np.testing.assert_array_equal(run(path, torch.eye(6)), weight.T.numpy())


IDENTITY = torch.eye(5)
# Inputs on the ties of each quantizer, where ONNX's Round (ties to even) would differ.
QUANTIZERS = {
    "ternary, ties at 0.5": (
        st.Quantize(snapset.Ternary()),
        torch.tensor([[-0.5, 0.5, -1.5, 0.25, 2.0], [0.0, -0.49, 0.51, 1.0, -1.0]]),
    ),
    "4-bit, static 0.5, ties": (
        st.Quantize(snapset.ValueSet(range(-8, 8)), scale=0.5),
        torch.tensor([[0.25, 0.75, -0.25, -0.75, 1.25], [3.75, -4.25, 9.0, -9.0, 0.0]]),
    ),
    "4-bit per token, absmax": (
        st.Quantize(snapset.ValueSet(range(-8, 8)), scale="token"),
        torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
    ),
    "signs, learned per channel": (
        st.Quantize(snapset.Sign(), scale="channel", scale_mode="learned", num_features=5),
        torch.randn(3, 5, generator=torch.Generator().manual_seed(1)),
    ),
}


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_input_quantizers_round_as_pytorch_does(tmp_path: Path, kind: str) -> None:
    quantizer, x = QUANTIZERS[kind]
    layer = nn.Linear(5, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(IDENTITY)  # the layer passes the quantized input through exactly
    model = st.quantize_inputs_(nn.Sequential(layer), quantizer, modules=(nn.Linear,))
    model.train()(x * 3)  # a learned scale starts from a training batch
    model.eval()
    path = st.export_onnx(model, x, tmp_path / "q.onnx")
    assert "Round" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    expected = model(x).detach().numpy()
    np.testing.assert_array_equal(run(path, x), expected)
    if kind.startswith("ternary"):
        assert expected[0, :2].tolist() == [0.0, 1.0]  # ties go up
