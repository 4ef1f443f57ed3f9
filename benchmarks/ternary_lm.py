"""A ternary language model trained on real text: float against BitNet b1.58, and three ways
from a pretrained float model to ternary.

The text is the ``.py`` files of the Python standard library on this machine, as bytes
(``snapset.demo.stdlib_corpus``: 4 MB to train on, 250 kB of other files held out). The
model is a Llama of transformers built from a config (``snapset.demo.LLAMA``: 4 layers of
width 256, RMSNorm, SwiGLU, rotary positions, 3.4 M parameters in linear layers), trained
with AdamW and a cosine schedule on windows of 128 bytes. Rows, per seed:

- float: ``steps`` steps;
- ternary from scratch: ``bitnet_`` on the fresh model, the same steps (the same tokens);
- ternary from scratch with ``rms_norm=True`` (an RMSNorm inside each converted layer);
- post-training: ``bitnet_`` on the trained float model, no training;
- fine-tuned with the warm-up: ``bitnet_`` on the trained float model, then ``tune`` steps
  with ``set_blend(model, min(step / (tune / 2), 1))`` (HF1BitLLM's lambda);
- fine-tuned without it: the same ``tune`` steps, exact ternary from the first.

Bits per byte on the held-out files (lower is better). Writes
``results/ternary_lm.md`` and the loss plot ``docs/guides/ternary-lm-loss.png``
(``--quick``: a few steps, prints only).

    .venv/bin/python benchmarks/ternary_lm.py [--quick] [--seeds 2] [--steps 150] [--tune 76]
        [--threads N] [--float-only-at LR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

import snapset.torch as st
from _machine import machine_line, write_result
from snapset import demo

EVAL_BYTES = 100_000
"""Held-out bytes each row is scored on (the first of the held-out files)."""
PLOT = Path(__file__).parent.parent / "docs" / "guides" / "ternary-lm-loss.png"
FLOAT_LR, TERNARY_LR, TUNE_LR = 2e-3, 3e-3, 1e-3
"""Learning rates: BitNet b1.58 trains ternary at a larger rate than float (Ma et al.,
2024); the fine-tuning starts from a trained model, at a smaller one."""

ROWS = (
    "float32",
    "ternary from scratch",
    "ternary from scratch, rms_norm=True",
    "float -> ternary, no training (post-training)",
    "float -> ternary, fine-tuned with the warm-up",
    "float -> ternary, fine-tuned without warm-up",
)


def study(seed: int, steps: int, tune: int, corpus: demo.TextCorpus) -> dict[str, object]:
    """Every row's bits per byte for one seed, the loss curves and a sample of each."""
    bpb: dict[str, float] = {}
    curves: dict[str, demo.LMRun] = {}
    samples: dict[str, bytes] = {}
    recipe = demo.LMRecipe(steps=steps, lr=FLOAT_LR, seed=seed)

    def finish(row: str, model: torch.nn.Module, run: demo.LMRun | None) -> None:
        bpb[row] = demo.bits_per_byte(model, corpus.held_out, most=EVAL_BYTES)
        samples[row] = demo.generate(model, b"def ", 160, seed=seed)
        if run is not None:
            curves[row] = run
        print(f"seed {seed}  {row:48s} {bpb[row]:.3f} bits/byte", flush=True)

    float_model = demo.llama(seed)
    finish(ROWS[0], float_model, demo.train_lm(float_model, corpus, recipe))
    for row, norm in ((ROWS[1], False), (ROWS[2], True)):
        model = st.bitnet_(demo.llama(seed), rms_norm=norm)
        finish(row, model, demo.train_lm(model, corpus, _with(recipe, lr=TERNARY_LR)))
    finish(ROWS[3], st.bitnet_(copy.deepcopy(float_model)), None)
    tuned = _with(recipe, steps=tune, lr=TUNE_LR, lr_warmup=min(10, tune // 4), seed=seed + 100)
    for row, blend in ((ROWS[4], max(1, tune // 2)), (ROWS[5], 0)):
        model = st.bitnet_(copy.deepcopy(float_model))
        finish(row, model, demo.train_lm(model, corpus, _with(tuned, blend_steps=blend)))
    return {"bpb": bpb, "curves": curves, "samples": samples}


def _with(recipe: demo.LMRecipe, **changes: object) -> demo.LMRecipe:
    import dataclasses

    return dataclasses.replace(recipe, **changes)  # type: ignore[arg-type]


def table(results: list[dict[str, object]], steps: int, tune: int) -> str:
    recipe = demo.LMRecipe(steps=steps)
    tokens = steps * recipe.batch * recipe.seq
    tune_tokens = tune * recipe.batch * recipe.seq
    trained = {
        ROWS[0]: f"{tokens:,}",
        ROWS[1]: f"{tokens:,}",
        ROWS[2]: f"{tokens:,}",
        ROWS[3]: f"{tokens:,} (float)",
        ROWS[4]: f"{tokens:,} (float) + {tune_tokens:,}",
        ROWS[5]: f"{tokens:,} (float) + {tune_tokens:,}",
    }
    lines = [
        "| model | tokens trained | bits per byte, held out (mean ± spread) | each seed |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        values = [r["bpb"][row] for r in results]  # type: ignore[index]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        each = ", ".join(f"{v:.3f}" for v in values)
        lines.append(
            f"| {row} | {trained[row]} | {statistics.mean(values):.3f} ± {spread:.3f} | {each} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, demo.LMRun] = result["curves"]  # type: ignore[assignment]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for row in ROWS[:3]:
        run = curves[row]
        axes[0].plot(run.steps, [loss / 0.6931 for loss in run.losses], label=row)
    axes[0].set_title("from scratch, same tokens")
    for row in ROWS[4:]:
        run = curves[row]
        axes[1].plot(run.steps, [loss / 0.6931 for loss in run.losses], label=row[16:])
    axes[1].set_title("from the trained float model")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss, bits per byte")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def float_control(args: argparse.Namespace) -> None:
    """The float row alone at another learning rate, every seed."""
    corpus = demo.stdlib_corpus()
    recipe = demo.LMRecipe(steps=args.steps, lr=args.float_only_at)
    values = []
    for seed in range(args.seeds):
        model = demo.llama(seed)
        demo.train_lm(model, corpus, _with(recipe, seed=seed))
        values.append(demo.bits_per_byte(model, corpus.held_out, most=EVAL_BYTES))
        print(f"seed {seed}  float32 at lr {args.float_only_at}: {values[-1]:.3f}", flush=True)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    write_result(
        "ternary_lm_float_lr.md",
        f"# The float row of `ternary_lm.md` at another learning rate\n\n{machine_line()}\n\n"
        f"| model | learning rate | steps | bits per byte, held out (mean ± spread) | each "
        f"seed |\n|---|---|---|---|---|\n| float32 | {args.float_only_at} | {args.steps} | "
        f"{statistics.mean(values):.3f} ± {spread:.3f} | "
        + ", ".join(f"{v:.3f}" for v in values)
        + " |\n",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tune", type=int, default=76)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--float-only-at",
        type=float,
        metavar="LR",
        help="train only the float model, at this learning rate (the control that separates "
        "the learning rate from the weights); writes results/ternary_lm_float_lr.md",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.float_only_at is not None:
        float_control(args)
        return
    if args.quick:
        args.seeds, args.steps, args.tune = 1, 4, 4
        corpus = demo.stdlib_corpus(train_bytes=200_000, held_out_bytes=20_000)
    else:
        corpus = demo.stdlib_corpus()
    started = time.perf_counter()
    results = [study(seed, args.steps, args.tune, corpus) for seed in range(args.seeds)]
    minutes = (time.perf_counter() - started) / 60
    body = table(results, args.steps, args.tune)
    print(body)
    if args.quick:
        return
    samples = results[0]["samples"]
    sample_text = "\n\n".join(
        f"**{row}**\n\n```text\ndef {samples[row].decode('utf-8', 'replace')}\n```"  # type: ignore[index]
        for row in (ROWS[0], ROWS[1], ROWS[4])
    )
    write_result(
        "ternary_lm.md",
        f"# A ternary language model on the standard library's source\n\n{machine_line()}\n\n"
        f"Python {sys.version.split()[0]} standard library at `{corpus.root}`: "
        f"{len(corpus.train):,} bytes from {corpus.train_files} files to train on, "
        f"{len(corpus.held_out):,} bytes from {corpus.held_out_files} other files held out "
        f"(the first {EVAL_BYTES:,} scored). "
        f"{args.seeds} seeds, {minutes:.0f} minutes in all, torch threads: "
        f"{torch.get_num_threads()}. Learning rates: float {FLOAT_LR}, ternary {TERNARY_LR}, "
        f"fine-tuning {TUNE_LR}.\n\n{body}\n\n"
        "## Samples (seed 0, after `def `, temperature 0.7)\n\n"
        f"{sample_text}\n",
    )
    plot(results[0], PLOT)


if __name__ == "__main__":
    main()
