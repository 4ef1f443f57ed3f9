"""Scaled against unscaled ternary weights, in models where no BatchNorm follows them.

A ternary layer whose output feeds a residual stream (every linear layer of a transformer)
cannot match the scale of its float twin: nothing after it rescales ``W x``. ``w = alpha * v``
gives it that scale back. Three models, each with pre-norm residual blocks and no BatchNorm:
a residual MLP with LayerNorm on digits and on MNIST-1D, and a small transformer (self-attention
and a feed-forward layer, RMSNorm) on MNIST-1D cut in patches of 4. Every linear layer inside
the blocks is ternary; the input projection and the classifier head stay float (BitNet b1.58's
choice for embeddings and head). Rows: float, Ternary unscaled, and Ternary with a scale per
tensor, per output channel and per group of 32 inputs (learned, in the log domain), and
recomputed as BitNet's ``absmean`` per tensor (BitNet b1.58) and per channel, with a
statistic's default estimator (BitNet's plain straight-through ``identity``) and with the
latent methods' default ``inward``; 3 seeds each, one recipe for all. Writes
results/scales.md (``--quick``: one seed, two epochs, only prints).

    .venv/bin/python benchmarks/scales.py [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result
from snapset import demo

RECIPE = demo.Recipe(epochs=15, batch=128)
"""One recipe for every row: Adam, one-cycle learning rate peaking at 0.01."""

ROWS: list[tuple[str, dict[str, Any] | None]] = [
    ("float32", None),
    ("Ternary, unscaled", {}),
    ('scale="tensor", learned', {"scale": "tensor"}),
    ('scale="channel", learned', {"scale": "channel"}),
    ("scale=32, learned", {"scale": 32}),
    ('scale="tensor", absmean (BitNet b1.58)', {"scale": "tensor", "scale_mode": "absmean"}),
    ('scale="channel", absmean', {"scale": "channel", "scale_mode": "absmean"}),
    (
        'scale="channel", absmean, estimator="inward"',
        {"scale": "channel", "scale_mode": "absmean", "estimator": "inward"},
    ),
]
"""Each row's label and its ``constrain_`` options (None: the float model)."""

FLOAT, UNSCALED = ROWS[0][0], ROWS[1][0]

NO_GAP = 0.005
"""A gap from float to unscaled below half a point (two digits test images) counts as none."""


class FeedForward(nn.Module):
    """``x + down(gelu(up(norm(x))))``: a pre-norm residual feed-forward block."""

    def __init__(self, width: int, hidden: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm = norm(width)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class SelfAttention(nn.Module):
    """``x + out(attention(qkv(norm(x))))``: pre-norm residual multi-head self-attention."""

    def __init__(self, width: int, heads: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.out(mixed.transpose(1, 2).reshape(batch, tokens, width))


class Classifier(nn.Module):
    """Input cut into ``tokens`` patches, a float projection plus a learned position, the
    ``blocks``, a final norm, the mean over tokens and a float head to 10 classes."""

    def __init__(
        self,
        tokens: int,
        patch: int,
        width: int,
        blocks: list[nn.Module],
        norm: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Linear(patch, width)
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.reshape(len(x), self.tokens, -1)) + self.position
        return self.head(self.norm(self.blocks(h)).mean(dim=1))


def residual_mlp(features: int) -> Classifier:
    """Two feed-forward blocks (width 128, hidden 256) with LayerNorm, on the flat input."""
    blocks: list[nn.Module] = [FeedForward(128, 256, nn.LayerNorm) for _ in range(2)]
    return Classifier(1, features, 128, blocks, nn.LayerNorm)


def transformer() -> Classifier:
    """MNIST-1D's 40 samples as 10 tokens of 4; two blocks of attention (4 heads) and a
    feed-forward layer (width 64, hidden 128) with RMSNorm."""
    blocks: list[nn.Module] = []
    for _ in range(2):
        blocks += [SelfAttention(64, 4, nn.RMSNorm), FeedForward(64, 128, nn.RMSNorm)]
    return Classifier(10, 4, 64, blocks, nn.RMSNorm)


MODELS: list[tuple[str, str, Callable[[], Classifier]]] = [
    ("residual MLP, LayerNorm", "digits", lambda: residual_mlp(64)),
    ("residual MLP, LayerNorm", "MNIST-1D", lambda: residual_mlp(40)),
    ("transformer, RMSNorm", "MNIST-1D", transformer),
]
"""(model, data set, builder) of each table section."""


@dataclass
class Result:
    """One row's test accuracies over the seeds, and how many learned scales' steps the
    optimizer guard undid (a step that would have made one zero or negative)."""

    model: str
    dataset: str
    weights: str
    accuracies: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    undone: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def run(
    model: str,
    split: demo.Split,
    build: Callable[[], Classifier],
    seeds: list[int],
    recipe: demo.Recipe,
) -> list[Result]:
    """Every row of ``ROWS`` on one model and data set, once per seed."""
    results = []
    for weights, options in ROWS:
        result = Result(model, split.name, weights)
        for seed in seeds:
            torch.manual_seed(seed)
            network = build()
            if options is not None:
                st.constrain_(network, snapset.Ternary(), filter_fn=in_blocks, **options)
            trained = demo.train(network, split, recipe, seed=seed)
            result.accuracies.append(trained.accuracy)
            result.seconds_per_epoch.append(trained.seconds_per_epoch)
            result.undone += sum(
                constraint.scale.clamped
                for _, constraint in st.named_constraints(network)
                if constraint.scale is not None
            )
            print(
                f"{model}, {split.name}, {weights}, seed {seed}: {trained.accuracy:.1%}", flush=True
            )
        results.append(result)
    return results


def in_blocks(module: nn.Module, name: str) -> bool:
    """``constrain_``'s choice: the linear layers inside the residual blocks."""
    return name.startswith("blocks.")


def gap(section: list[Result]) -> tuple[float, bool]:
    """A model's gap from float to unscaled (of the means), and whether it is larger than the
    noise (two standard deviations of either row)."""
    float_row, unscaled = section[0], section[1]
    width = float_row.mean - unscaled.mean
    return width, width > 2 * max(float_row.spread, unscaled.spread)


def gap_closed(result: Result, section: list[Result]) -> str:
    """Share of its model's gap that a scaled row closes; in parentheses within the noise."""
    if result.weights in (FLOAT, UNSCALED):
        return "-"
    width, real = gap(section)
    if width < NO_GAP:
        return "no gap"
    closed = f"{(result.mean - section[1].mean) / width:.0%}"
    return closed if real else f"({closed})"


def goal_section(sections: list[list[Result]]) -> list[str]:
    """Per model, how much of the gap the best scaled row closes (the goal: most of it, at
    least half, where the gap is larger than the noise)."""
    lines = [
        "## Goal: a scale closes most of the gap to float",
        "",
        "| model | data | float - unscaled | best scaled row | gap closed | result |",
        "|---|---|---:|---|---:|---|",
    ]
    for section in sections:
        unscaled = section[1]
        best = max(section[2:], key=lambda result: result.mean)
        width, real = gap(section)
        if width < NO_GAP or not real:
            verdict = "no gap beyond the noise to close"
        else:
            verdict = "met" if best.mean - unscaled.mean >= width / 2 else "MISSED"
        lines.append(
            f"| {best.model} | {best.dataset} | {width:+.1%} | {best.weights}: {best.mean:.1%}"
            f" | {gap_closed(best, section)} | {verdict} |"
        )
    return lines


def markdown(
    sections: list[list[Result]], seeds: list[int], recipe: demo.Recipe, seconds: float
) -> str:
    """The results file: one table for all models, the goal, the recipe and the models."""
    lines = [
        "# Scaled against unscaled ternary weights, no BatchNorm after them",
        "",
        f"{machine_line()}; {len(seeds)} seed(s) {seeds}; whole run {seconds / 60:.1f} min.",
        "",
        "Test accuracy: mean ± standard deviation over the seeds; per seed: in seed order."
        " gap closed: (row - unscaled) / (float - unscaled), of the means; in parentheses"
        " where that gap lies within two standard deviations (noise); 'no gap' where it is"
        " under half a point. undone: entries of learned scales whose optimizer step the"
        " guard undid because it would have made them zero or negative (`Scale.clamped`,"
        " summed over the seeds). s/epoch: median wall time of an epoch.",
        "",
        "| model | data | weights | test accuracy | per seed | gap closed | undone | s/epoch |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for section in sections:
        for result in section:
            undone = "-" if result.weights in (FLOAT, UNSCALED) else str(result.undone)
            lines.append(
                f"| {result.model} | {result.dataset} | {result.weights}"
                f" | {result.mean:.1%} ± {result.spread:.1%}"
                f" | {' / '.join(f'{a:.1%}' for a in result.accuracies)}"
                f" | {gap_closed(result, section)} | {undone}"
                f" | {statistics.median(result.seconds_per_epoch):.2f} |"
            )
    lines += ["", *goal_section(sections)]
    lines += [
        "",
        "## Recipe and models (the same for every row)",
        "",
        f"- {recipe.epochs} epochs, batch {recipe.batch}, cross-entropy; Adam with a one-cycle"
        f" learning rate peaking at {recipe.lr} for every float parameter, latent weight and"
        " learned scale (`snapset.demo.train`). Ternary rows: `snapset.torch.constrain_(model,"
        " Ternary(), filter_fn=<inside the blocks>, scale=..., scale_mode=...)`, method `ste`,"
        " the default estimator unless the row names one (`inward`; `identity` for a"
        " statistic scale); a learned scale is `start * exp(log_gain)`, `start` the absmean"
        " of the weights it was made from.",
        "- Residual MLP: a float linear projection of the flat input to width 128, two"
        " pre-norm residual blocks `x + down(gelu(up(LayerNorm(x))))` (hidden 256, no biases),"
        " a final LayerNorm and a float linear head.",
        "- Transformer: MNIST-1D's 40 samples as 10 tokens of 4, a float linear projection to"
        " width 64 plus a learned position, two blocks of `x + out(attention(qkv(RMSNorm(x))))`"
        " (4 heads) and `x + down(gelu(up(RMSNorm(x))))` (hidden 128), a final RMSNorm, the"
        " mean over tokens and a float linear head.",
        "- Ternary: every linear layer inside the blocks (`up`, `down`, `qkv`, `out`); the"
        " input projection, the position, the norms and the head stay float, as BitNet b1.58"
        " keeps its embeddings and head.",
        "- Data: MNIST-1D generated offline by `mnist1d` (4000/1000, seed 42); scikit-learn's"
        " 8x8 digits, stratified 1437/360 split (random_state 0), pixels / 16.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    args = parser.parse_args()
    seeds = [0] if args.quick else list(range(args.seeds))
    recipe = demo.Recipe(epochs=2, batch=RECIPE.batch) if args.quick else RECIPE
    data = demo.datasets()
    # the guard warns at every step it undoes; the table counts them instead
    warnings.filterwarnings("ignore", "After a step of", RuntimeWarning)
    with demo.one_thread():  # small models: one thread is as fast, and steadier when shared
        started = time.perf_counter()
        sections = [
            run(model, data[dataset], build, seeds, recipe) for model, dataset, build in MODELS
        ]
        text = markdown(sections, seeds, recipe, time.perf_counter() - started)
    print(text)
    if args.quick:  # a smoke run is no result: the committed table stays
        print("quick run: results/scales.md left as it is")
    else:
        write_result("scales.md", text)


if __name__ == "__main__":
    main()
