"""A binary network (sign weights and sign activations), snapset against larq.

The same networks in both libraries: on digits an MLP (64 -> 256 -> 256 -> 10), on MNIST-1D a
CNN (three Conv1d of 64 channels, kernel 5, stride 1/2/2, then a linear layer to 10 classes);
no biases, BatchNorm after every layer, and nothing else: the sign that quantizes the next
layer's input is the only non-linearity. Every weight is in {-1, 1}, first and last layers
included; every layer's input is in {-1, 1} but the first's, which takes the data as they are
(as BinaryNet and larq's examples do). snapset: ``constrain_(model, Sign())`` (``ste``, the
default estimator) and ``quantize_inputs_(model, Quantize(Sign()))`` (``ste``, the ``clip``
estimator: BinaryNet's) on every layer but the first; larq (in its own environment, from
``peers/larq_binary.py``): ``QuantDense`` / ``QuantConv1D`` with ``ste_sign`` kernel and input
quantizers and ``weight_clip``. One recipe, 3 seeds. Writes results/binary_net.md (``--quick``:
one seed, two epochs, only prints).

    .venv/bin/python benchmarks/binary_net.py [--quick] [--seeds 3] [--larq-python PATH]

larq's Python is ``--larq-python``, or the environment ``peers/larq_python.py`` creates from
PyPI on first use (larq 0.13.3 needs Keras 2 through ``tf-keras`` and numpy < 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import snapset
import snapset.torch as st
from _machine import machine_line, write_result
from accuracy import peer_python, save_splits
from snapset import demo

RUNNER = Path(__file__).resolve().parent / "peers" / "larq_binary.py"
WEIGHTS = "Sign weights, sign inputs"
"""How the rows name the network (the larq runner's label too)."""


def mlp() -> nn.Sequential:
    """The digits MLP: 64 -> 256 -> 256 -> 10, each linear layer followed by BatchNorm."""
    layers: list[nn.Module] = []
    width = 64
    for out in (256, 256, 10):
        layers += [nn.Linear(width, out, bias=False), nn.BatchNorm1d(out)]
        width = out
    return nn.Sequential(*layers)


def cnn() -> nn.Sequential:
    """The MNIST-1D CNN: three Conv1d (64 channels, kernel 5, stride 1/2/2) and a linear
    layer to 10 classes, each followed by BatchNorm."""
    layers: list[nn.Module] = []
    channels = 1
    for stride in (1, 2, 2):
        layers += [nn.Conv1d(channels, 64, 5, stride, padding=2, bias=False), nn.BatchNorm1d(64)]
        channels = 64
    layers += [nn.Flatten(), nn.Linear(64 * 10, 10, bias=False), nn.BatchNorm1d(10)]
    return nn.Sequential(*layers)


ARCHITECTURES = {"MNIST-1D": cnn, "digits": mlp}


def binary_network(dataset: str, seed: int) -> nn.Sequential:
    """``dataset``'s network with every weight in {-1, 1} and sign inputs after the first layer."""
    torch.manual_seed(seed)
    model = st.constrain_(ARCHITECTURES[dataset](), snapset.Sign())
    # module "0" is the first layer: it reads the data as they are
    return st.quantize_inputs_(
        model, st.Quantize(snapset.Sign()), filter_fn=lambda _, name: name != "0"
    )


def snapset_rows(
    data: dict[str, demo.Split], seeds: list[int], recipe: demo.Recipe
) -> list[demo.Row]:
    """snapset's binary network on each data set, once per seed."""
    rows = []
    for dataset, split in data.items():
        row = demo.Row(f"snapset {snapset.__version__}", dataset, WEIGHTS, "ste")
        for seed in seeds:
            run = demo.train(binary_network(dataset, seed), split, recipe, seed=seed)
            row.accuracies.append(run.accuracy)
            row.seconds_per_epoch.append(run.seconds_per_epoch)
            print(f"snapset {dataset} seed {seed}: {run.accuracy:.1%}", flush=True)
        rows.append(row)
    return rows


def larq_rows(
    data_file: Path, seeds: list[int], recipe: demo.Recipe, python: str | None
) -> list[demo.Row]:
    """larq's rows from ``peers/larq_binary.py``, or one row whose note says why none."""
    if python is None:
        python, why = peer_python("larq")
        if python is None:
            return [demo.Row("larq", "-", "-", "-", note=f"not run: {why}")]
    command = [python, str(RUNNER), "--data", str(data_file), "--seeds", *map(str, seeds)]
    command += ["--recipe", json.dumps(dataclasses.asdict(recipe))]
    print(f"larq: running {RUNNER} with {python}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [demo.Row("larq", "-", "-", "-", note=f"failed (exit {done.returncode}): {tail}")]
    records = [json.loads(line) for line in lines]
    return [
        demo.Row("larq", "-", "-", "-", note=f"not run: {record['unavailable']}")
        if "unavailable" in record
        else demo.Row(**record)
        for record in records
    ]


def goal_section(rows: list[demo.Row]) -> list[str]:
    """Per data set, snapset's mean accuracy against larq's; a difference smaller than the
    larger standard deviation of the two is called a tie."""
    lines = [
        "## Goal: at least larq's accuracy",
        "",
        "| data | snapset | larq | difference | result |",
        "|---|---:|---:|---:|---|",
    ]
    for dataset in ARCHITECTURES:
        pair = [r for r in rows if r.dataset == dataset]
        if len(pair) != 2:  # larq gave no row for it
            continue
        mine, theirs = sorted(pair, key=lambda r: not r.library.startswith("snapset"))
        difference = mine.mean - theirs.mean
        tie = abs(difference) <= max(mine.spread, theirs.spread)
        verdict = "met" if difference >= 0 else "MISSED"
        if tie:
            verdict += " (a tie: within the seeds' spread)"
        lines.append(
            f"| {dataset} | {mine.mean:.1%} | {theirs.mean:.1%} | {difference * 100:+.1f} pts"
            f" | {verdict} |"
        )
    return lines


def markdown(rows: list[demo.Row], seeds: list[int], recipe: demo.Recipe, seconds: float) -> str:
    """The results file: the table, larq's verdict per data set, the recipe."""
    lines = [
        "# A binary network (sign weights, sign activations): snapset against larq",
        "",
        f"{machine_line()}; {len(seeds)} seed(s) {seeds}; whole run {seconds / 60:.1f} min.",
        "",
        "Test accuracy: mean ± standard deviation over the seeds; per seed: in seed order."
        " s/epoch: median wall time of one training epoch (the libraries ran one after the"
        " other, not interleaved: a rough figure on a shared machine).",
        "",
        "| library | data | network | method | test accuracy | per seed | s/epoch |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row.cells()[:7]) + " |" for row in rows if row.accuracies]
    lines += [f"- {row.library}: {row.note}" for row in rows if not row.accuracies]
    lines += ["", *goal_section(rows)]
    lines += [
        "",
        "## Recipe and networks (the same for both libraries)",
        "",
        f"- {recipe.epochs} epochs, batch {recipe.batch}, cross-entropy; Adam with a one-cycle"
        f" learning rate peaking at {recipe.lr} (torch's `OneCycleLR`, reproduced in Keras).",
        "- digits: an MLP 64 -> 256 -> 256 -> 10; MNIST-1D: three Conv1d (64 channels, kernel"
        " 5, stride 1/2/2, padding 2 in torch, `same` in Keras) and a linear layer to 10"
        " classes. No biases; BatchNorm (momentum 0.1 in torch's terms, eps 1e-5) after every"
        " layer, the last included; no other non-linearity than the sign of the next layer's"
        " input.",
        "- Every weight in {-1, 1}, first and last layers included. Every layer's input in"
        " {-1, 1} (sign(0) = 1 in both) except the first layer's, which takes the data.",
        "- snapset: `constrain_(model, Sign())` (method `ste`, the default estimator `inward`,"
        " latents in [-0.1, 0.1]) and `quantize_inputs_(model, Quantize(Sign()),"
        " filter_fn=<all but the first layer>)` (method `ste`, estimator `clip`: gradient 1"
        ' where |x| <= 1, BinaryNet\'s). larq: `kernel_quantizer="ste_sign"`,'
        ' `kernel_constraint="weight_clip"`, `input_quantizer="ste_sign"` on all but the'
        " first layer.",
        "- Data: MNIST-1D generated offline by `mnist1d` (4000/1000, seed 42); scikit-learn's"
        " 8x8 digits, stratified 1437/360 split (random_state 0), pixels / 16. The same arrays"
        " go to larq through a `.npz` file.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--larq-python", help="the Python of an environment with larq")
    args = parser.parse_args()
    seeds, recipe = demo.accuracy_plan(args.seeds, args.quick)
    data = demo.datasets()
    with demo.one_thread():  # small models: one thread is as fast, and fair to larq (one too)
        started = time.perf_counter()
        rows = snapset_rows(data, seeds, recipe)
        with tempfile.TemporaryDirectory() as folder:
            data_file = save_splits(data, Path(folder) / "splits.npz")
            rows += larq_rows(data_file, seeds, recipe, args.larq_python)
        text = markdown(rows, seeds, recipe, time.perf_counter() - started)
    print(text)
    if args.quick:  # a smoke run is no result: the committed table stays
        print("quick run: results/binary_net.md left as it is")
    else:
        write_result("binary_net.md", text)


if __name__ == "__main__":
    main()
