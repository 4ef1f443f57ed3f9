"""A small language model on real text, offline: the source files of the Python standard
library found on this machine, as bytes; a Llama of transformers built from a config; one
training loop for float, ternary and warmed-up runs; bits per byte on held-out files.

Needs ``transformers`` (the ``llm`` extra) besides PyTorch.
"""

from __future__ import annotations

import math
import random
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LLAMA",
    "LMRecipe",
    "LMRun",
    "TextCorpus",
    "bits_per_byte",
    "generate",
    "llama",
    "stdlib_corpus",
    "train_lm",
]

#: The model of the guide: a Llama (RMSNorm, SwiGLU, rotary positions) over 256 byte tokens,
#: 3.4 M parameters in its linear layers. Rows of 256 and 768 inputs fill GGUF's ternary blocks
#: of 256 weights.
LLAMA: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class TextCorpus:
    """Bytes of text split by file: ``train`` and ``held_out`` share no file."""

    train: np.ndarray
    held_out: np.ndarray
    #: Where the files came from, and how many each part took.
    root: str
    train_files: int
    held_out_files: int


def stdlib_corpus(
    train_bytes: int = 4_000_000, held_out_bytes: int = 250_000, seed: int = 0
) -> TextCorpus:
    """The ``.py`` files of this Python's standard library, shuffled by ``seed``, as bytes:
    every tenth file (in that order) goes to ``held_out`` until it holds ``held_out_bytes``,
    the others to ``train`` until it holds ``train_bytes``. Files are joined by a blank line.
    Nothing is downloaded: the library is the one this interpreter runs on (its version and
    size say which; the guide's tables record them).

    Examples:
        >>> from snapset.demo import stdlib_corpus
        >>> corpus = stdlib_corpus(train_bytes=50_000, held_out_bytes=10_000)
        >>> len(corpus.train) >= 50_000, corpus.held_out_files > 0
        (True, True)
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files under {root}: is the standard library installed?")
    random.Random(seed).shuffle(files)
    parts: dict[str, list[bytes]] = {"train": [], "held_out": []}
    sizes = {"train": 0, "held_out": 0}
    wanted = {"train": train_bytes, "held_out": held_out_bytes}
    for index, path in enumerate(files):
        part = "held_out" if index % 10 == 0 else "train"
        if sizes[part] >= wanted[part]:
            if all(sizes[p] >= wanted[p] for p in sizes):
                break
            continue
        text = path.read_bytes() + b"\n\n"
        parts[part].append(text)
        sizes[part] += len(text)
    return TextCorpus(
        train=np.frombuffer(b"".join(parts["train"]), dtype=np.uint8),
        held_out=np.frombuffer(b"".join(parts["held_out"]), dtype=np.uint8),
        root=str(root),
        train_files=len(parts["train"]),
        held_out_files=len(parts["held_out"]),
    )


def llama(seed: int = 0, **overrides: Any) -> nn.Module:
    """A float ``transformers.LlamaForCausalLM`` of ``LLAMA`` (``overrides`` change it), its
    weights drawn from ``seed``."""
    import transformers

    torch.manual_seed(seed)
    model: nn.Module = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**{**LLAMA, **overrides})
    )
    return model


@dataclass(frozen=True)
class LMRecipe:
    """One training run: AdamW, a linear warm-up of the learning rate then a cosine to a tenth
    of it, random windows of the training bytes."""

    steps: int = 300
    batch: int = 16
    seq: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    lr_warmup: int = 30
    #: Steps of ``set_blend``'s warm-up from float to ternary (0: none); the blend is
    #: ``min(step / blend_steps, 1)``, HF1BitLLM's.
    blend_steps: int = 0
    seed: int = 0

    def lr_at(self, step: int) -> float:
        if step < self.lr_warmup:
            return self.lr * (step + 1) / self.lr_warmup
        progress = (step - self.lr_warmup) / max(1, self.steps - self.lr_warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class LMRun:
    """What ``train_lm`` measured: the training loss every ``log_every`` steps."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def windows(data: np.ndarray, batch: int, seq: int, generator: torch.Generator) -> Tensor:
    """``batch`` random windows of ``seq + 1`` bytes of ``data``, as int64 token ids."""
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
    rows = [torch.from_numpy(data[s : s + seq + 1].astype(np.int64)) for s in starts.tolist()]
    return torch.stack(rows)


def next_byte_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean cross entropy, in nats, of each next byte of ``tokens`` given the ones before."""
    logits = model(tokens[:, :-1]).logits
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )


def train_lm(
    model: nn.Module, corpus: TextCorpus, recipe: LMRecipe, *, log_every: int = 10
) -> LMRun:
    """Train ``model`` on ``corpus.train`` as ``recipe`` says; return the losses it logged.

    With ``recipe.blend_steps``, each step first sets ``snapset.torch.set_blend(model,
    min(step / blend_steps, 1))``: a converted pretrained model starts as its float self and
    is exactly ternary from then on.
    """
    import snapset.torch as st

    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": rest, "weight_decay": 0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    run = LMRun()
    model.train()
    start = time.perf_counter()
    for step in range(recipe.steps):
        if recipe.blend_steps:
            st.set_blend(model, min(step / recipe.blend_steps, 1.0))
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(step)
        loss = next_byte_loss(model, windows(corpus.train, recipe.batch, recipe.seq, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == recipe.steps - 1:
            run.steps.append(step)
            run.losses.append(loss.item())
    if recipe.blend_steps:
        st.set_blend(model, 1.0)
    run.seconds = time.perf_counter() - start
    run.tokens = recipe.steps * recipe.batch * recipe.seq
    model.eval()
    return run


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: np.ndarray, seq: int = 128, most: int = 200_000) -> float:
    """Bits per byte of ``model`` on ``data`` (its first ``most`` bytes), in eval mode: the mean
    cross entropy of each byte given up to ``seq`` bytes before it (in windows of
    ``seq + 1`` bytes that overlap by one), over ln 2."""
    was_training = model.training
    model.eval()
    usable = min(len(data), most)
    count = (usable - 1) // seq
    tokens = torch.from_numpy(data[: count * seq + 1].astype(np.int64))
    total = 0.0
    for first in range(0, count, 32):
        rows = torch.stack(
            [tokens[i * seq : i * seq + seq + 1] for i in range(first, min(first + 32, count))]
        )
        total += float(next_byte_loss(model, rows)) * rows.shape[0]
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def generate(
    model: nn.Module, prompt: bytes, length: int = 200, *, temperature: float = 0.7, seed: int = 0
) -> bytes:
    """``length`` bytes that ``model`` writes after ``prompt`` (transformers' ``generate``,
    with its key-value cache), sampled at ``temperature`` from ``seed`` (0: the likeliest
    byte each time)."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    ids = torch.tensor([list(prompt)], dtype=torch.int64)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(  # type: ignore[operator]
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=length,
        min_new_tokens=length,
        pad_token_id=0,
        **sampling,
    )
    model.train(was_training)
    return bytes(out[0, ids.shape[1] :].tolist())
