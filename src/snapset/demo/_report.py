"""``snapset demo``: the forum problems, a binary CNN on MNIST-1D, plots and a printed report."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

import snapset
import snapset.torch as st

from . import _forum as forum
from ._data import mnist1d
from ._models import FOUR_VALUES, SET_LABELS, build
from ._plots import plot_demo
from ._requirements import refusal
from ._train import Recipe, fit_bop, one_thread, size_text, train

Echo = Callable[[str], Any]
MultiplierTrainer = Callable[[snapset.ValueSet, Any, Any, int], npt.NDArray[Any]]


def run_demo(
    seed: int = 0,
    echo: Echo = print,
    *,
    out: str | Path = "snapset-demo",
    quick: bool = False,
    progress: bool = True,
) -> int:
    """The main job: the forum problems, a binary CNN on MNIST-1D, plots and a printed report.

    1. A trainable {0, 1} matrix: STE + Adam and Bop against the forums' answers
       (``matrix_report``).
    2. A learnable multiplier with entries in ``[1, -1, 0.5, -0.5]`` (Keras when
       ``snapset.keras`` imports, else PyTorch) against the forum's ``x * sign(w)``
       (``multiplier_report``).
    3. The size on disk of a multiplier and of a small model, float against packed
       (``sizes_report``).
    4. The MNIST-1D CNN in float, made binary (Sign) and ternary with one ``constrain_`` call
       (``mnist1d_report``).
    5. PNG plots in ``out`` and the Sign model's ``summary`` table.

    ``quick`` shortens the CNN runs for a smoke test. Returns 0 when every snapset method
    recovered its planted values exactly, else 1; before any work, 1 when a package it needs
    is missing (it names ``pip install 'snapset[demo]'``) and 2 for an unusable ``out``.

    Examples:
        >>> import pathlib, tempfile
        >>> taken = pathlib.Path(tempfile.mkdtemp()) / "plots"
        >>> _ = taken.write_text("")
        >>> run_demo(out=taken)  # doctest: +ELLIPSIS
        snapset demo writes its plots to a folder; .../plots is a file: pass another --out
        2
    """
    folder = Path(out)
    status, why = refusal("demo", folder)
    if status:
        echo(why)
        return status
    with one_thread():
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        all_recovered = matrix_report(seed, echo)
        echo("")
        all_recovered &= multiplier_report(seed, echo)
        echo("")
        sizes_report(echo)
        echo("")
        plots = mnist1d_report(seed, echo, folder, quick=quick, progress=progress)
        echo("")
        echo("Plots: " + ", ".join(str(p) for p in plots))
        echo(
            "Every snapset method recovered its planted values exactly."
            if all_recovered
            else "Some snapset method missed planted values: see the tables above."
        )
        echo(f"Done in {time.perf_counter() - started:.0f} s.")
        return 0 if all_recovered else 1


def _row(label: str, recovered: float, exact: str, seconds: float) -> str:
    return f"  {label:<42} {recovered:>9.1%}   {exact:<24} {seconds:>5.1f} s"


_HEADER = f"  {'method':<42} {'recovered':>9}   {'values':<24} {'time':>7}"


def matrix_report(seed: int = 0, echo: Echo = print) -> bool:
    """The demo's first section: a planted {0, 1} matrix learned by ``ste`` + Adam and by
    ``flip`` + Bop, beside the forums' answers; True when both snapset rows are exact.

    Examples:
        >>> lines = []
        >>> matrix_report(echo=lines.append)
        True
        >>> [line.split("  ")[1] for line in lines[2:4]]
        ['snapset ste + Adam', 'snapset flip + Bop']
    """
    planted, x, y = forum.planted_binary_matrix(seed)
    echo("1. A trainable 64x32 matrix with entries in {0, 1}: y = x W^T + noise, 2048 samples")
    echo(_HEADER)
    all_recovered = True
    for method in ("ste", "flip"):
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), method)
        if method == "flip":
            fit_bop(layer, x, y, steps=150, seed=seed)
            label = "snapset flip + Bop"
        else:
            forum.fit_adam(layer, x, y, epochs=6, seed=seed)
            label = "snapset ste + Adam"
        layer.eval()
        recovered = float(torch.eq(layer.weight, planted).float().mean())
        exact = "exactly {0, 1}" if _in_set(layer.weight, snapset.Binary()) else "NOT in {0, 1}"
        all_recovered &= recovered == 1.0
        echo(_row(label, recovered, exact, time.perf_counter() - start))
    for answer_class, label in (
        (forum.ReluSigmoidAnswer, "forum: relu(sigmoid(w) - 0.9)"),
        (forum.SigmoidAnswer, "forum: sigmoid(50 w)"),
    ):
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        answer = forum.fit_adam(answer_class(32, 64, bias=False), x, y, epochs=6, seed=seed)
        weight = answer.effective_weight().detach()
        recovered = float(((weight >= 0.5).float() == planted).float().mean())
        exact = f"in [{float(weight.min()):.3g}, {float(weight.max()):.3g}]"
        echo(_row(label, recovered, exact, time.perf_counter() - start))
    return all_recovered


def multiplier_report(seed: int = 0, echo: Echo = print) -> bool:
    """The demo's second section: a planted multiplier with entries in Sign and in
    ``[1, -1, 0.5, -0.5]``, learned by Keras's ``sk.Multiplier`` (on the configured backend)
    where ``snapset.keras`` imports, else by ``st.Multiplier``, beside the forum's
    ``x * sign(w)``; True when every snapset row is exact.

    Examples:
        >>> lines = []
        >>> multiplier_report(echo=lines.append)
        True
        >>> any("w never moved" in line for line in lines)
        True
    """
    fit_multiplier, framework = multiplier_trainer()
    echo(f"2. A learnable multiplier with entries in {list(FOUR_VALUES.values)}: y = x * w + noise")
    echo(f"   ({framework})")
    echo(_HEADER)
    all_recovered = True
    for values, name in ((snapset.Sign(), "Sign"), (FOUR_VALUES, "[1, -1, 0.5, -0.5]")):
        planted, x, y = forum.planted_multiplier(values, seed)
        start = time.perf_counter()
        learned = fit_multiplier(values, x.numpy(), y.numpy(), seed)
        recovered = float((learned == planted.numpy()).mean())
        exact = "exactly in the set" if bool(values.contains(learned).all()) else "NOT in the set"
        all_recovered &= recovered == 1.0
        echo(_row(f"snapset Multiplier {name}, ste", recovered, exact, time.perf_counter() - start))
        if values == snapset.Sign():
            start = time.perf_counter()
            torch.manual_seed(seed + 1)
            sign_answer = forum.SignAnswer(64)
            before = sign_answer.weight.detach().clone()
            forum.fit_adam(sign_answer, x, y, epochs=12, lr=3e-3, seed=seed, anneal=True)
            moved = "w never moved" if torch.equal(sign_answer.weight, before) else "w moved"
            recovered = float(torch.eq(sign_answer.effective_weight(), planted).float().mean())
            echo(_row("forum: x * sign(w)", recovered, moved, time.perf_counter() - start))
    return all_recovered


def multiplier_trainer() -> tuple[MultiplierTrainer, str]:
    """``(fit, description)``: ``fit(values, x, y, seed)`` trains a multiplier on numpy data
    and returns its exact values. Keras's ``sk.Multiplier`` on whichever backend Keras is
    configured for, when ``snapset.keras`` imports; else ``st.Multiplier``. Either way Adam's
    learning rate anneals to zero over the 12 epochs, so that latents near a boundary settle
    (see [`fit_adam`][snapset.demo.fit_adam]).

    Examples:
        >>> fit, framework = multiplier_trainer()
        >>> "Multiplier" in framework
        True
    """
    # TensorFlow's C++ start-up notes would bury the report; the oneDNN one prints whatever
    # the log level while oneDNN's custom operations are on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras

        import snapset.keras as sk
    except ImportError:
        return _torch_multiplier, "PyTorch: snapset.torch.Multiplier (Keras is not installed)"

    def fit(values: snapset.ValueSet, x: Any, y: Any, seed: int) -> npt.NDArray[Any]:
        keras.utils.set_random_seed(seed + 1)
        model = keras.Sequential(
            [keras.Input((x.shape[1],)), sk.Multiplier(values=values, name="multiplier")]
        )
        steps = 12 * -(-len(x) // 64)
        lr = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
        model.fit(x, y, epochs=12, batch_size=64, verbose=0)
        return np.asarray(sk.exact_weights(model)["multiplier/kernel"])

    return fit, f"Keras {keras.__version__}, {keras.backend.backend()} backend: sk.Multiplier"


def _torch_multiplier(values: snapset.ValueSet, x: Any, y: Any, seed: int) -> npt.NDArray[Any]:
    torch.manual_seed(seed + 1)
    layer = st.Multiplier(x.shape[1], values)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    forum.fit_adam(layer, inputs, targets, epochs=12, lr=3e-3, seed=seed, anneal=True)
    return layer.eval().weight.detach().numpy()


def sizes_report(echo: Echo = print) -> list[tuple[str, int, int]]:
    """The size on disk of a 4096-entry multiplier with entries in ``[1, -1, 0.5, -0.5]`` and
    of a Sign MLP (784-256-256-10, float biases), each saved in the framework's own float32
    format and as a snapset file (packed codes), as the keras-io quantization guides show
    sizes before and after; ``(model, float bytes, snapset bytes)`` for each. Keras
    (``.keras`` files, ``sk.save``) when ``snapset.keras`` imports, else PyTorch
    (``torch.save`` of the ``state_dict``, ``st.save``). The files are written to a temporary
    folder and removed.

    Examples:
        >>> lines = []
        >>> [(name, float_bytes > 12 * packed) for name, float_bytes, packed in
        ...  sizes_report(echo=lines.append)]
        [('Multiplier, 4096 entries', True), ('Sign MLP 784-256-256-10', True)]
    """
    saved, framework = _sized_models()
    echo(f"   Saved sizes ({framework}):")
    echo(f"   {'model':<28}{'float32 file':>14}{'snapset file':>14}{'smaller':>10}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (float_bytes, packed_bytes) in saved(Path(folder)).items():
            ratio = float_bytes / packed_bytes
            echo(
                f"   {name:<28}{size_text(float_bytes):>14}{size_text(packed_bytes):>14}"
                f"{ratio:>9.1f}x"
            )
            rows.append((name, float_bytes, packed_bytes))
    return rows


SizedModels = Callable[[Path], dict[str, tuple[int, int]]]


def _sized_models() -> tuple[SizedModels, str]:
    """``(save, framework)``: ``save(folder)`` writes the two models both ways and returns
    their sizes by name."""
    try:
        import keras

        import snapset.keras as sk
    except ImportError:
        return _torch_sizes, "PyTorch: torch.save of the state_dict against st.save"

    def save(folder: Path) -> dict[str, tuple[int, int]]:
        models = {
            "Multiplier, 4096 entries": keras.Sequential(
                [keras.Input((4096,)), sk.Multiplier(FOUR_VALUES)]
            ),
            "Sign MLP 784-256-256-10": keras.Sequential(
                [
                    keras.Input((784,)),
                    sk.Dense(256, snapset.Sign(), activation="relu"),
                    sk.Dense(256, snapset.Sign(), activation="relu"),
                    sk.Dense(10, snapset.Sign()),
                ]
            ),
        }
        sizes = {}
        for index, (name, model) in enumerate(models.items()):
            model.save(folder / f"{index}.keras")
            packed = sk.save(model, folder / f"{index}.safetensors")
            sizes[name] = ((folder / f"{index}.keras").stat().st_size, packed.stat().st_size)
        return sizes

    return save, "Keras: model.save (.keras, float32) against sk.save"


def _torch_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    mlp = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    models = {
        "Multiplier, 4096 entries": st.Multiplier(4096, FOUR_VALUES),
        "Sign MLP 784-256-256-10": st.constrain_(mlp, snapset.Sign()),
    }
    sizes = {}
    for index, (name, model) in enumerate(models.items()):
        torch.save(model.state_dict(), folder / f"{index}.pt")
        packed = st.save(model, folder / f"{index}.safetensors")
        sizes[name] = ((folder / f"{index}.pt").stat().st_size, packed.stat().st_size)
    return sizes


def mnist1d_report(
    seed: int = 0,
    echo: Echo = print,
    folder: str | Path = "snapset-demo",
    *,
    quick: bool = False,
    progress: bool = True,
) -> list[Path]:
    """The demo's third section: the MNIST-1D CNN in float, Sign and Ternary, the Sign model's
    ``summary`` and the plots (written to ``folder``, whose paths it returns).

    ``quick``: 3 epochs instead of 20.

    Examples:
        >>> import tempfile
        >>> lines = []
        >>> with one_thread():
        ...     plots = mnist1d_report(echo=lines.append, folder=tempfile.mkdtemp(), quick=True,
        ...                            progress=False)
        >>> [line.split()[0] for line in lines[2:5]]
        ['float32', 'Sign', 'Ternary']
    """
    data = mnist1d()
    recipe = Recipe(epochs=3 if quick else 20)
    echo(
        f"3. MNIST-1D ({len(data.x_train)} train / {len(data.x_test)} test), the same CNN in "
        f"float and made binary with one constrain_ call, {recipe.epochs} epochs"
    )
    runs = {}
    models = {}
    tracker = None
    for set_name in ("float", "sign", "ternary"):
        model = build("MNIST-1D", set_name, "ste", seed)
        if set_name == "sign":
            tracker = st.FlipTracker(model)
        bar = _progress(f"   {SET_LABELS[set_name]}", recipe.epochs) if progress else None
        runs[set_name] = train(
            model,
            data,
            recipe,
            seed=seed,
            tracker=tracker if set_name == "sign" else None,
            progress=bar,
        )
        models[set_name] = model
    echo(f"  {'weights':<24} {'test accuracy':>13} {'s/epoch':>8} {'packed size':>12}")
    for set_name, run in runs.items():
        echo(
            f"  {SET_LABELS[set_name]:<24} {run.accuracy:>13.1%} "
            f"{run.seconds_per_epoch:>8.2f} {size_text(run.packed_bytes):>12}"
        )
    echo("  (the MNIST-1D paper's float CNN: 94%)")
    echo("")
    echo("summary(model) of the Sign CNN:")
    echo(str(st.summary(models["sign"])))
    assert tracker is not None
    return plot_demo(runs, models, tracker, folder)


def _progress(label: str, total: int) -> Callable[[Iterator[int]], Iterator[int]]:
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return lambda epochs: epochs

    def wrap(epochs: Iterator[int]) -> Iterator[int]:
        return iter(tqdm(epochs, desc=label, total=total, unit="epoch", leave=False))

    return wrap


def _in_set(tensor: torch.Tensor, values: snapset.ValueSet) -> bool:
    return bool(values.contains(tensor.detach().cpu().numpy()).all())
