"""export_onnx: standard operators, parity with onnxruntime, the model left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st


def model_for(values: snapset.ValueSet) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 10, 9),
        nn.Tanh(),
        nn.Linear(9, 3),
    )
    keep_last_float = lambda module, name: name != "5" and isinstance(module, nn.Conv1d | nn.Linear)  # noqa: E731
    return st.constrain_(model, values, filter_fn=keep_last_float).eval()


def run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return np.asarray(y)


@pytest.mark.parametrize(
    "values", [snapset.Sign(), snapset.ValueSet([1, -1, 0.5, -0.5])], ids=["sign", "four"]
)
def test_onnxruntime_matches_the_model_on_any_batch(
    tmp_path: Path, values: snapset.ValueSet
) -> None:
    model = model_for(values)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = st.export_onnx(model, torch.randn(2, 2, 10), tmp_path / "m.onnx")
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard operators only
    codes = {init.name: init for init in graph.initializer if init.name.endswith(".codes")}
    assert set(codes) == {"0.weight.codes", "3.weight.codes"}
    assert all(init.data_type == onnx.TensorProto.UINT8 for init in codes.values())
    for batch in (1, 7):
        x = torch.randn(batch, 2, 10)
        np.testing.assert_allclose(run(path, x), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    # the model is untouched: still constrained, same state
    assert [name for name, _ in st.named_constraints(model)] == ["0.weight", "3.weight"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_codes_make_the_file_smaller(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = st.constrain_(nn.Sequential(nn.Linear(256, 256)), snapset.Ternary()).eval()
    x = torch.randn(3, 256)
    small = st.export_onnx(model, x, tmp_path / "codes.onnx")
    large = st.export_onnx(model, x, tmp_path / "float.onnx", codes=False, dynamic_batch=False)
    weights = 256 * 256
    assert large.stat().st_size > 4 * weights > 1 * weights + 4096 > small.stat().st_size
    np.testing.assert_array_equal(run(small, x), run(large, x))
