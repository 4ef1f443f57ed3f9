"""The plain network a user writes: snapset's defaults against float, larq and brevitas.

The MNIST-1D CNN of ``benchmarks/accuracy.py`` without its two tricks (no ``[x, -x]`` input, no
centring over channels): Conv1d-BatchNorm-ReLU three times, a linear head and BatchNorm, every
conv and linear weight constrained with the defaults (``constrain_(model, values, method)``),
Adam at 0.01 with a cosine schedule, 3 seeds. Rows: float; Sign, Binary, Ternary and
[1, -1, 0.5, -0.5] with ``ste`` and ``stochastic``; ``ste`` with ``dither=0.25``; each latent row
again with BatchNorm's statistics re-estimated after training
(``snapset.torch.reestimate_batchnorm``); larq's ``ste_sign`` and brevitas' binary and ternary
weights on the same network and loop (``peers/``, ``--plain``). A last section trains at
Adam's rate without a schedule: float, Sign and Ternary ``ste``, then with BatchNorm
re-estimated and with an average of the weights (``--constant`` runs it alone and replaces
only that section). Writes results/plain_network.md (``--quick``: one seed, two epochs,
printed only).

    .venv/bin/python benchmarks/plain_network.py [--quick] [--seeds 3] [--constant]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from _machine import machine_line, replace_section, write_result
from accuracy import not_run, peer_rows, save_splits
from snapset import demo

GOALS = [("Sign {-1, 1}", 0.955), ("Ternary {-1, 0, 1}", 0.97)]
"""Issue 18's goals with default options: (weights, least mean test accuracy)."""


def rows(data: demo.Split, seeds: list[int], recipe: demo.Recipe, folder: Path) -> list[demo.Row]:
    """snapset's rows, with and without BatchNorm re-estimation, then the peers'."""
    mnist = {"MNIST-1D": data}
    found = demo.snapset_rows(mnist, seeds, recipe, print, demo.PLAIN_CONFIGS, plain=True)
    reestimated = dataclasses.replace(recipe, reestimate_batchnorm=True)
    latent = [config for config in demo.PLAIN_CONFIGS if config[1] != "-"]
    found += demo.snapset_rows(mnist, seeds, reestimated, print, latent, plain=True)
    data_file = save_splits(mnist, folder / "plain.npz")
    return found + peer_rows(data_file, seeds, recipe, plain=True)


CONSTANT = "## At a constant rate"


def constant_rate(data: demo.Split, seeds: list[int], recipe: demo.Recipe) -> str:
    """The section of the rows trained at Adam's rate to the end (no schedule): the latents
    near a threshold then keep crossing it (the oscillation page), and BatchNorm's statistics
    follow the flips; re-estimating BatchNorm, and averaging the weights, are the remedies."""
    constant = dataclasses.replace(recipe, schedule="constant")
    mnist = {"MNIST-1D": data}
    latent: list[demo.Config] = [("sign", "ste"), ("ternary", "ste")]
    found = demo.snapset_rows(mnist, seeds, constant, print, [("float", "-"), *latent], True)
    for remedy in ({"reestimate_batchnorm": True}, {"average": 0.99}):
        then = dataclasses.replace(constant, **remedy)  # type: ignore[arg-type]
        found += demo.snapset_rows(mnist, seeds, then, print, latent, plain=True)
    text = CONSTANT_TEXT.format(r=recipe)
    return "\n".join([CONSTANT, "", machine_line(), "", text, "", *demo.table(found)])


CONSTANT_TEXT = """The same network, data and seeds, with Adam at {r.lr} held constant for
{r.epochs} epochs (`Recipe(schedule="constant")`). "+ average 0.99": an exponential moving
average of the float and latent tensors, decay 0.99 a step (torch's `AveragedModel` with
`get_ema_multi_avg_fn(0.99)`), whose BatchNorm statistics are then re-estimated
(`Recipe(average=0.99)`)."""


def goals(found: list[demo.Row]) -> str:
    """Each goal against snapset's best row with default options (no dither, no
    re-estimation: what a user gets without knowing more)."""
    lines = ["## Goals (default options)", "", "| goal | snapset row | result |", "|---|---|---|"]
    for weights, least in GOALS:
        mine = [r for r in found if r.library == "snapset" and r.weights == weights
                and r.method in ("ste", "stochastic") and r.accuracies]  # fmt: skip
        if mine:
            best = max(mine, key=lambda r: r.mean)
            verdict = "met" if best.mean >= least else "MISSED"
            lines.append(
                f"| {weights} >= {least:.1%} | {best.method}: {best.mean:.1%} ± "
                f"{best.spread:.1%} | {verdict} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--constant", action="store_true", help="the constant-rate section only")
    args = parser.parse_args()
    seeds = [0] if args.quick else list(range(args.seeds))
    recipe = dataclasses.replace(demo.PLAIN_RECIPE, epochs=2) if args.quick else demo.PLAIN_RECIPE
    with demo.one_thread():  # small models: one thread is as fast, and fair to every peer
        if args.constant:
            section = constant_rate(demo.mnist1d(), seeds, recipe)
            print(section)
            if not args.quick:
                replace_section("plain_network.md", CONSTANT, section)
            return
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            found = rows(demo.mnist1d(), seeds, recipe, Path(folder))
        constant = constant_rate(demo.mnist1d(), seeds, recipe)
        sections = [section for section in (not_run(found), goals(found), constant) if section]
        text = demo.markdown(
            found,
            seeds,
            recipe,
            time.perf_counter() - started,
            title="# The plain network: snapset's defaults against float, larq and brevitas",
            sections=sections,
            recipe_section=PLAIN_RECIPE_TEXT.format(r=recipe),
        )
    print(text)
    if args.quick:  # a smoke run is no result: the committed table stays
        print("quick run: results/plain_network.md left as it is")
    else:
        write_result("plain_network.md", text)


PLAIN_RECIPE_TEXT = """## Recipe

- Network: Conv1d (64 channels, kernel 5, stride 1/2/2, no bias), BatchNorm and ReLU three
  times, then a linear layer to 10 classes and BatchNorm (`snapset.demo.cnn(tricks=False)`); no
  `[x, -x]` input, no centring. Every conv and linear weight is in the set, with the method's
  default options unless the method cell names one; BatchNorm stays float.
- Training: {r.epochs} epochs, batch {r.batch}, cross-entropy; Adam at {r.lr} with a
  {r.schedule} schedule for every float and latent tensor. "+ BN re-estimation": after the last
  epoch, `reestimate_batchnorm` on the training data. larq: `ste_sign` with `weight_clip`;
  brevitas: `SignedBinaryWeightPerTensorConst` / `SignedTernaryWeightPerTensorConst`; both on
  the same network and loop.
- Data: MNIST-1D generated offline by `mnist1d` (4000/1000, seed 42).
"""


if __name__ == "__main__":
    main()
