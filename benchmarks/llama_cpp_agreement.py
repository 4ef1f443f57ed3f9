"""llama.cpp against snapset on a tiny ternary Llama: file sizes, next-byte agreement and logit
differences, with and without a torch emulation of llama.cpp's own roundings.

The model, its training, the held-out windows, llama.cpp's call and the emulation are those of
the runtime test (``tests/runtimes/test_llama_cpp.py``, loaded here by path), so the table
and the test measure the same thing. Rows: the GGUF file of each ternary type, and the
float32 size of the same model for scale. Columns: top-1 agreement with snapset's eval
forward, and max / mean |logit difference| against snapset's forward ("exact") and against
the emulation (8-bit inputs with one scale a block of 256, llama.cpp's ``Q8_K``; ``alpha`` in
float16). Needs llama-cpp-python (``make test-runtimes`` builds it). Writes
``results/llama_cpp_agreement.md``.

    .venv/bin/python benchmarks/llama_cpp_agreement.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _machine import machine_line, write_result
from snapset.torch.export._gguf import export_gguf

TEST = Path(__file__).parent.parent / "tests" / "runtimes" / "test_llama_cpp.py"


def runtime_test() -> Any:
    """The runtime test module, loaded by path (tests are not a package)."""
    spec = importlib.util.spec_from_file_location("test_llama_cpp", TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import llama_cpp

    t = runtime_test()
    model = t.trained_model()
    windows = t.held_out_windows()
    exact = t.torch_logits(model, windows)
    params = sum(p.numel() for p in model.state_dict().values())
    files = [
        "| file | size (bytes) | bits a ternary weight | top-1 agreement with snapset |",
        "| --- | ---: | ---: | ---: |",
        f"| float32 (4 bytes x {params} parameters) | {4 * params} | 32 | |",
    ]
    runtimes = {}
    with tempfile.TemporaryDirectory() as folder:
        for ternary, bits in (("TQ2_0", 2.0625), ("TQ1_0", 1.6875)):
            path = export_gguf(model, Path(folder) / f"tiny-{ternary}.gguf", ternary=ternary)
            runtimes[ternary] = runtime = t.llama_cpp_logits(path, windows)
            agreement = float((runtime.argmax(-1) == exact.argmax(-1)).mean())
            files.append(f"| {ternary} | {path.stat().st_size} | {bits} | {agreement:.2%} |")
    same = np.array_equal(runtimes["TQ1_0"], runtimes["TQ2_0"])
    runtime = runtimes["TQ2_0"]
    arithmetic = [
        "| torch forward | max | mean | top-1 agreement |",
        "| --- | ---: | ---: | ---: |",
    ]
    variants = {
        "snapset eval (8-bit inputs a token, alpha float32)": None,
        "alpha in float16 only": dict(blocks=False, f16=True),
        "8-bit inputs a block of 256 (Q8_K) only": dict(blocks=True, f16=False),
        "both: llama.cpp's roundings": dict(blocks=True, f16=True),
    }
    for label, options in variants.items():
        logits = (
            exact
            if options is None
            else t.torch_logits(t.llama_cpp_arithmetic(model, **options), windows)
        )
        gap = t.differences(runtime, logits)
        agreement = float((runtime.argmax(-1) == logits.argmax(-1)).mean())
        arithmetic.append(f"| {label} | {gap[0]:.4f} | {gap[1]:.6f} | {agreement:.2%} |")
    text = "\n".join(
        [
            "# llama.cpp agreement",
            "",
            f"{machine_line()}, llama-cpp-python {llama_cpp.__version__}. Model: "
            f"`snapset.demo.LLAMA` with {t.CONFIG}, converted by bitnet_ and trained "
            f"{t.STEPS} steps on difflib.py; {np.prod(exact.shape[:2])} next-byte predictions "
            "on textwrap.py. llama.cpp: KV cache in float32, no flash attention, 2 threads.",
            "",
            *files,
            "",
            f"TQ1_0 and TQ2_0 give the same logits bit for bit: {same}.",
            "",
            "|logit difference| between llama.cpp (TQ2_0) and a torch forward:",
            "",
            *arithmetic,
            "",
        ]
    )
    print(text)
    write_result("llama_cpp_agreement.md", text)


if __name__ == "__main__":
    sys.exit(main())
