"""A ternary (BitNet b1.58) language model trained on the Python standard library's source,
then packed for fast generation and written for llama.cpp and transformers.

python examples/ternary_lm.py [--steps 150] [--out ternary-lm]

A Llama (RMSNorm, SwiGLU, rotary positions) of transformers over byte tokens, converted by one
call, ``bitnet_``: every linear layer but the head ternary, 8-bit activations per token. The
text is the ``.py`` files of the standard library found on this machine; other files are held
out. A few minutes on two cores at the default size.
"""

import argparse
import time
from pathlib import Path

import torch

import snapset.torch as st
from snapset import demo

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--train-bytes", type=int, default=4_000_000)
parser.add_argument("--out", type=Path, default=Path("ternary-lm"))
args = parser.parse_args()

corpus = demo.stdlib_corpus(train_bytes=args.train_bytes, held_out_bytes=50_000)
model = st.bitnet_(demo.llama(seed=0))  # ternary weights, 8-bit activations; head in float
run = demo.train_lm(model, corpus, demo.LMRecipe(steps=args.steps, lr=3e-3))
print(f"trained {run.tokens:,} tokens in {run.seconds:.0f} s; last loss {run.losses[-1]:.3f}")
print(f"held-out bits per byte: {demo.bits_per_byte(model, corpus.held_out):.3f}")

# Inference: exact ternary codes, packed 1.6 bits a weight, 8-bit activations on integer units.
packed = st.pack(model)
prompt = b"def "
start = time.perf_counter()
text = demo.generate(packed, prompt, 64, temperature=0)
seconds = time.perf_counter() - start
print(f"packed, greedy: {(prompt + text).decode('utf-8', 'replace')!r}")
print(f"packed generation: {64 / seconds:.0f} tokens/s")
unpacked = demo.generate(model, prompt, 64, temperature=0)
same = sum(a == b for a, b in zip(text, unpacked, strict=True))
print(f"packed model writes what the trained model writes: {same} of 64 bytes")

# The runtimes: a GGUF file for llama.cpp, a directory for transformers' from_pretrained.
args.out.mkdir(parents=True, exist_ok=True)
gguf = st.export_gguf(model, args.out / "model-tq2_0.gguf", ternary="TQ2_0")
hf = st.export_transformers(model, args.out / "transformers", overwrite=True)
print(f"wrote {gguf} ({gguf.stat().st_size:,} bytes) and {hf}")
with torch.no_grad():
    ids = torch.tensor([corpus.held_out[:256].tolist()])
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(hf)
    theirs, ours = loaded(ids).logits, model(ids).logits
# transformers rounds activations its own way (ties to even, x * (127 / absmax)): an input
# exactly between two integers may round the other way, and the difference carries on.
agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
print(
    f"transformers' BitNet model: same next byte at {agree:.1%} of 256 positions, "
    f"mean logit difference {(theirs - ours).abs().mean().item():.1e}"
)
