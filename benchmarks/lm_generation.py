"""Generation speed of one ternary language model in each runtime, and the bytes of each file.

One Llama of transformers (``--size``: ``small`` is ``snapset.demo.LLAMA``, 3.4 M parameters
in its linear layers; ``large`` is 8 layers of width 1024 and 2816, 101 M) converted by
``bitnet_`` (its weights drawn at random: speed does not depend on what they learned), then
run greedily from the same 16-byte prompt for ``--tokens`` new tokens, one token a step with
the key-value cache, by:

- float32 torch: the hardened model, dense float32 weights, with and without its 8-bit
  activation rounding (the second is a plain float LM of the same size);
- snapset packed: ``st.pack`` (codes at 1.6 bits a weight, table lookups at batch 1);
- llama.cpp (``llama-cpp-python``, when installed): the model written by ``export_gguf`` as
  TQ1_0 and as TQ2_0.

Each contender runs at torch's default thread count and at one thread (llama.cpp with
``n_threads`` set alike), interleaved round by round; each figure is the median of
``--rounds`` rounds, tokens per second. The torch contenders go through transformers'
``generate`` (its per-token Python overhead included); llama.cpp through ``Llama.eval``.
Writes ``results/lm_generation.md``.

    .venv/bin/python benchmarks/lm_generation.py [--size large] [--rounds 5] [--tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import snapset.torch as st
from _machine import machine_line, write_result
from snapset import demo

SIZES = {
    "small": {},
    "large": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
    ),
}
PROMPT = b"import os\nimport "  # 16 bytes


def torch_generator(model: torch.nn.Module, tokens: int) -> Callable[[], None]:
    return lambda: demo.generate(model, PROMPT, tokens, temperature=0)


def llama_cpp_generator(path: Path, tokens: int, threads: int) -> Callable[[], None] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def run() -> None:
        llm.reset()
        llm.eval(list(PROMPT))
        for _ in range(tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    return run


def directory_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else (path.stat().st_size)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    model = st.bitnet_(demo.llama(0, **SIZES[args.size])).eval()
    hardened = st.harden_(copy.deepcopy(model))
    plain = st.remove_input_quantizers_(copy.deepcopy(hardened))
    packed = st.pack(model)
    work = Path(tempfile.mkdtemp(prefix="snapset-lm-"))
    files = {
        "float32 safetensors (transformers, before bitnet_)": _float_file(args.size, work),
        "snapset file (st.save)": st.save(model, work / "model.safetensors"),
        "transformers BitNet layout (export_transformers)": st.export_transformers(
            model, work / "transformers"
        ),
        "GGUF TQ1_0": st.export_gguf(model, work / "tq1_0.gguf", ternary="TQ1_0"),
        "GGUF TQ2_0": st.export_gguf(model, work / "tq2_0.gguf", ternary="TQ2_0"),
    }
    sizes = {name: directory_bytes(Path(path)) for name, path in files.items()}
    timings: dict[tuple[str, int], list[float]] = {}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        contenders: dict[str, Callable[[], None] | None] = {
            "float32 torch, 8-bit activations (the same model)": torch_generator(
                hardened, args.tokens
            ),
            "float32 torch, float activations": torch_generator(plain, args.tokens),
            "snapset packed": torch_generator(packed, args.tokens),
            "llama.cpp TQ1_0": llama_cpp_generator(files["GGUF TQ1_0"], args.tokens, threads),
            "llama.cpp TQ2_0": llama_cpp_generator(files["GGUF TQ2_0"], args.tokens, threads),
        }
        for run in contenders.values():
            if run is not None:
                run()  # warm: compile kernels, allocate caches
        for _ in range(args.rounds):
            for name, run in contenders.items():
                if run is None:
                    continue
                start = time.perf_counter()
                run()
                timings.setdefault((name, threads), []).append(
                    args.tokens / (time.perf_counter() - start)
                )
        print(f"{threads} threads done", flush=True)
    torch.set_num_threads(default_threads)
    write_result(f"lm_generation_{args.size}.md", report(args, timings, sizes, default_threads))


def _float_file(size: str, work: Path) -> Path:
    float_model = demo.llama(0, **SIZES[size])
    float_model.save_pretrained(work / "float")
    return work / "float"


def report(
    args: argparse.Namespace,
    timings: dict[tuple[str, int], list[float]],
    sizes: dict[str, int],
    default_threads: int,
) -> str:
    names = list(dict.fromkeys(name for name, _ in timings))
    thread_counts = sorted({threads for _, threads in timings}, reverse=True)
    base = "float32 torch, 8-bit activations (the same model)"
    head = " | ".join(
        f"{t} thread{'s' if t > 1 else ''}: tokens/s (x same model)" for t in thread_counts
    )
    lines = [f"| runtime | {head} |", "|---|" + "---|" * len(thread_counts)]
    for name in names:
        cells = []
        for threads in thread_counts:
            rate = statistics.median(timings[(name, threads)])
            ratio = rate / statistics.median(timings[(base, threads)])
            cells.append(f"{rate:.1f} ({ratio:.2f}x)")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    missing = (
        ""
        if any("llama.cpp" in n for n in names)
        else (
            "\n\nllama.cpp rows missing: `llama_cpp` is not installed "
            "(`make test-runtimes` builds it)."
        )
    )
    file_lines = ["| file | bytes |", "|---|---|"] + [
        f"| {name} | {size:,} |" for name, size in sizes.items()
    ]
    return (
        f"# Generation speed of a ternary LM, by runtime ({args.size})\n\n"
        f"{machine_line('transformers', 'llama_cpp')}\n\n"
        f"Greedy generation of {args.tokens} tokens after a 16-byte prompt, median of "
        f"{args.rounds} interleaved rounds; torch's default is {default_threads} threads."
        f"{missing}\n\n"
        + "\n".join(lines)
        + "\n\n## Bytes of each file\n\n"
        + "\n".join(file_lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
