"""llama.cpp runs snapset's GGUF export: a tiny Llama trained by ``bitnet_`` on bytes of one
stdlib file, exported as TQ2_0 and TQ1_0, agrees with snapset on the next byte of another.

What remains between the two is llama.cpp's own arithmetic, and the test shows it: a torch copy
of the model that rounds as llama.cpp does (8-bit inputs with one scale a block of 256, its
``Q8_K``; each scale ``alpha`` in float16) is much closer to llama.cpp than snapset's exact
forward (8-bit inputs with one scale a token, ``alpha`` in float32) is.
"""

import copy
import difflib
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snapset.torch as st
from snapset import demo
from snapset.torch.export._gguf import export_gguf
from snapset.torch.export._ternary import TernaryLinear, ternary_model

llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.runtimes

#: The changes to ``snapset.demo.LLAMA`` (rows of 256 inputs, a TQ block; windows of 256
#: bytes): two layers, and weights drawn 5 times wider than transformers' default (0.02):
#: after a few dozen steps the model then predicts a dozen different bytes by context instead
#: of the most frequent one everywhere, so that top-1 agreement tests something.
CONFIG = dict(
    initializer_range=0.1,
    intermediate_size=512,
    num_hidden_layers=2,
    num_key_value_heads=2,
)
WINDOW = 256
WINDOWS = 4
STEPS = 60
BLOCK = 256  # Q8_K: llama.cpp's 8-bit activations, one scale a block of 256


def train_bytes(model: nn.Module, data: bytes, steps: int, seed: int = 0) -> nn.Module:
    """A few dozen Adam steps of next-byte prediction on random windows of ``data``."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor(list(data))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - 65, (16,), generator=generator)
        batch = torch.stack([tokens[s : s + 65] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def trained_model() -> nn.Module:
    """The tiny Llama, converted by ``bitnet_`` and trained on bytes of ``difflib.py``."""
    model = st.bitnet_(demo.llama(0, **CONFIG))
    return train_bytes(model, Path(difflib.__file__).read_bytes(), STEPS)


def held_out_windows() -> list[list[int]]:
    """``WINDOWS`` windows of ``WINDOW`` bytes of ``textwrap.py`` (not trained on)."""
    data = Path(textwrap.__file__).read_bytes()
    return [list(data[i * WINDOW : (i + 1) * WINDOW]) for i in range(WINDOWS)]


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_model()


@pytest.fixture(scope="module")
def held_out() -> list[list[int]]:
    return held_out_windows()


def llama_cpp_logits(path: Path, windows: list[list[int]]) -> np.ndarray:
    """llama.cpp's logits at every position of each window, tokens fed as they are, with its
    KV cache in float32 and no flash attention (so that the difference left is the ternary
    layers' arithmetic)."""
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=WINDOW,
        n_batch=WINDOW,
        n_threads=2,
        logits_all=True,
        flash_attn=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    try:
        logits = []
        for window in windows:
            llm.reset()
            llm.eval(window)
            logits.append(np.array(llm.scores[: len(window)]))
        return np.stack(logits)
    finally:
        llm.close()


def torch_logits(model: nn.Module, windows: list[list[int]]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(windows)).logits.float().numpy()


def q8_k(x: torch.Tensor) -> torch.Tensor:
    """llama.cpp's ``quantize_row_q8_K_ref`` and back: in each block of 256, ``iscale =
    -127 / max`` (``max`` the entry of largest magnitude, with its sign), ``q =
    min(127, round(iscale * x))`` (ties to even), ``x' = q / iscale``."""
    blocks = x.reshape(*x.shape[:-1], -1, BLOCK)
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    iscale = torch.where(peak == 0, 0.0, -127.0 / torch.where(peak == 0, 1.0, peak))
    d = torch.where(iscale == 0, 0.0, 1.0 / torch.where(iscale == 0, 1.0, iscale))
    return (torch.round(iscale * blocks).clamp(max=127) * d).reshape(x.shape)


class LlamaCppTernary(nn.Module):
    """A ternary layer as llama.cpp computes it: ``Q8_K`` inputs times ``members *
    f16(alpha)`` (or, to measure each rounding alone, the layer's own per-token inputs, or
    ``alpha`` as it is)."""

    def __init__(self, layer: TernaryLinear, *, blocks: bool = True, f16: bool = True) -> None:
        super().__init__()
        alpha = float(np.float16(layer.scale)) if f16 else layer.scale
        self.register_buffer("weight", layer.members.float() * alpha)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.clone())
        self.inputs = q8_k if blocks else layer.quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.inputs(x), self.weight, self.bias)


def llama_cpp_arithmetic(model: nn.Module, *, blocks: bool = True, f16: bool = True) -> nn.Module:
    """A copy of ``model`` whose ternary layers round as llama.cpp does: inputs per block of
    256 (``blocks``) and ``alpha`` in float16 (``f16``)."""
    ternaries = ternary_model(model, runtime="GGUF")
    emulated = copy.deepcopy(ternaries.hardened)
    for name, layer in ternaries.layers.items():
        parent, _, child = name.rpartition(".")
        replacement = LlamaCppTernary(layer, blocks=blocks, f16=f16)
        setattr(emulated.get_submodule(parent), child, replacement)
    return emulated.eval()


def differences(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    gap = np.abs(a - b)
    return float(gap.max()), float(gap.mean())


@pytest.mark.parametrize("ternary", ["TQ2_0", "TQ1_0"])
def test_llama_cpp_agrees_with_snapset(trained, held_out, tmp_path, ternary):
    path = export_gguf(trained, tmp_path / f"tiny-{ternary}.gguf", ternary=ternary)
    runtime = llama_cpp_logits(path, held_out)
    exact = torch_logits(trained, held_out)
    emulated = torch_logits(llama_cpp_arithmetic(trained), held_out)

    agreement = float((runtime.argmax(-1) == exact.argmax(-1)).mean())
    emulated_agreement = float((runtime.argmax(-1) == emulated.argmax(-1)).mean())
    exact_gap = differences(runtime, exact)
    emulated_gap = differences(runtime, emulated)
    targets = torch.tensor([w[1:] for w in held_out])
    loss = F.cross_entropy(torch.from_numpy(exact[:, :-1]).flatten(0, 1), targets.flatten())
    predicted = len(np.unique(exact.argmax(-1)))
    print(
        f"\n{ternary}: {path.stat().st_size} bytes; held-out loss {loss:.3f} nats (uniform "
        f"5.545), {predicted} distinct top-1 bytes; top-1 agreement {agreement:.2%} of "
        f"{runtime.shape[0] * runtime.shape[1]}; |llama.cpp - snapset| max "
        f"{exact_gap[0]:.4f} mean {exact_gap[1]:.5f}; |llama.cpp - emulation (Q8_K, f16 "
        f"alpha)| max {emulated_gap[0]:.4f} mean {emulated_gap[1]:.5f}, top-1 agreement "
        f"{emulated_agreement:.2%}"
    )
    assert loss < 4.0 and predicted >= 5  # trained: the logits are neither flat nor constant
    # The goal was 99%; this model reaches 97.4%, and every choice that differs is
    # llama.cpp's arithmetic: a torch forward that rounds as llama.cpp does agrees at 100%.
    assert agreement >= 0.95
    assert emulated_agreement >= 0.99
    assert emulated_gap[1] < exact_gap[1] / 2
    assert emulated_gap[0] < exact_gap[0]


def test_llama_cpp_tokenizes_text_to_its_bytes(trained, tmp_path):
    path = export_gguf(trained, tmp_path / "tiny.gguf")
    text = "def f(x):\n\treturn x  # ternary, café — 三\r\n".encode()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        tokens = llm.tokenize(text, add_bos=False, special=False)
        assert tokens == list(text)
        assert llm.detokenize(tokens) == text
    finally:
        llm.close()
