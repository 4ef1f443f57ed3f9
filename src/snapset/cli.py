"""The ``snapset`` command: ``snapset demo`` (the main job) and ``snapset bench accuracy``."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._sets import Binary, Sign, ValueSet

FOUR_VALUES = ValueSet([1, -1, 0.5, -0.5])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapset`` console script.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: 0
    """
    parser = argparse.ArgumentParser(
        prog="snapset", description="Train parameters restricted to a finite set of values."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="the forum problems, a binary CNN on MNIST-1D, plots and a report (about 2 minutes)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the problems and the models")
    demo.add_argument("--out", type=Path, default=Path("snapset-demo"), help="folder for the plots")
    demo.add_argument("--quick", action="store_true", help="a short run (under 30 seconds)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench = commands.add_parser("bench", help="benchmarks on real data")
    bench.add_argument("name", choices=["accuracy"], help="which benchmark")
    bench.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    bench.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/accuracy.md"),
        help="markdown file for the table",
    )
    bench.add_argument(
        "--peers",
        type=Path,
        default=Path("benchmarks/peers"),
        help="folder of the peer runners (larq, brevitas); skipped when missing",
    )
    args = parser.parse_args(argv)
    if args.command == "bench" and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    if args.command == "demo":
        return demo_command(
            args.seed, out=args.out, quick=args.quick, progress=not args.no_progress
        )
    try:
        from .torch._bench import accuracy_command
    except ImportError as error:
        print(f"snapset bench needs PyTorch and numpy: pip install torch ({error})")
        return 1
    return accuracy_command(seeds=args.seeds, quick=args.quick, out=args.out, peers=args.peers)


def demo_command(
    seed: int = 0,
    echo: Callable[[str], Any] = print,
    *,
    out: str | Path = "snapset-demo",
    quick: bool = False,
    progress: bool = True,
) -> int:
    """The main job: the forum problems, a binary CNN on MNIST-1D, plots and a printed report.

    1. A trainable {0, 1} matrix: STE + Adam and Bop against the forums' answers.
    2. A learnable multiplier with entries in ``[1, -1, 0.5, -0.5]`` (Keras when
       ``snapset.keras`` imports, else PyTorch) against the forum's ``x * sign(w)``.
    3. The MNIST-1D CNN in float, made binary (Sign) and ternary with one ``constrain_`` call.
    4. PNG plots in ``out`` and the Sign model's ``summary`` table.

    ``quick`` shortens the CNN runs for a smoke test. Returns 0 when every snapset method
    recovered its planted values exactly, else 1 (2 for an unusable ``out``, before any work).

    Example:
        >>> import pathlib, tempfile
        >>> taken = pathlib.Path(tempfile.mkdtemp()) / "plots"
        >>> _ = taken.write_text("")
        >>> demo_command(out=taken)  # doctest: +ELLIPSIS
        snapset demo writes its plots to a folder; .../plots is a file: pass another --out
        2
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        echo(f"snapset demo writes its plots to a folder; {folder} is a file: pass another --out")
        return 2
    try:
        import torch

        from .torch import _experiments  # noqa: F401  # PyTorch and the package's training code
    except ImportError:
        echo("snapset demo needs PyTorch: pip install torch (see the README)")
        return 1
    # These models are small: one thread is as fast as two, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        all_recovered = _forum_matrix(seed, echo)
        echo("")
        all_recovered &= _forum_multiplier(seed, echo)
        echo("")
        plots = _mnist1d_cnn(seed, echo, folder, quick, progress)
        echo("")
        echo("Plots: " + ", ".join(str(p) for p in plots))
        echo(
            "Every snapset method recovered its planted values exactly."
            if all_recovered
            else "Some snapset method missed planted values: see the tables above."
        )
        echo(f"Done in {time.perf_counter() - started:.0f} s.")
        return 0 if all_recovered else 1
    finally:
        torch.set_num_threads(threads)


def _row(label: str, recovered: float, exact: str, seconds: float) -> str:
    return f"  {label:<42} {recovered:>9.1%}   {exact:<24} {seconds:>5.1f} s"


_HEADER = f"  {'method':<42} {'recovered':>9}   {'values':<24} {'time':>7}"


def _forum_matrix(seed: int, echo: Callable[[str], Any]) -> bool:
    import torch
    from torch import nn

    from . import torch as st
    from .torch import _experiments as ex
    from .torch import _forum as forum

    planted, x, y = forum.planted_binary_matrix(seed)
    echo("1. A trainable 64x32 matrix with entries in {0, 1}: y = x W^T + noise, 2048 samples")
    echo(_HEADER)
    all_recovered = True
    for method in ("ste", "flip"):
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", Binary(), method)
        if method == "flip":
            ex.fit_bop(layer, x, y, steps=150, seed=seed)
            label = "snapset flip + Bop"
        else:
            forum.fit(layer, x, y, epochs=6, seed=seed)
            label = "snapset ste + Adam"
        layer.eval()
        recovered = float(torch.eq(layer.weight, planted).float().mean())
        exact = "exactly {0, 1}" if _in_set(layer.weight, Binary()) else "NOT in {0, 1}"
        all_recovered &= recovered == 1.0
        echo(_row(label, recovered, exact, time.perf_counter() - start))
    for answer_class, label in (
        (forum.ReluSigmoidAnswer, "forum: relu(sigmoid(w) - 0.9)"),
        (forum.SigmoidAnswer, "forum: sigmoid(50 w)"),
    ):
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        answer = forum.fit(answer_class(32, 64, bias=False), x, y, epochs=6, seed=seed)
        weight = answer.effective_weight().detach()
        recovered = float(((weight >= 0.5).float() == planted).float().mean())
        exact = f"in [{float(weight.min()):.3g}, {float(weight.max()):.3g}]"
        echo(_row(label, recovered, exact, time.perf_counter() - start))
    return all_recovered


def _forum_multiplier(seed: int, echo: Callable[[str], Any]) -> bool:
    import torch

    from .torch import _forum as forum

    fit_multiplier, framework = _multiplier_trainer()
    echo(f"2. A learnable multiplier with entries in {list(FOUR_VALUES.values)}: y = x * w + noise")
    echo(f"   ({framework})")
    echo(_HEADER)
    all_recovered = True
    for vs, name in ((Sign(), "Sign"), (FOUR_VALUES, "[1, -1, 0.5, -0.5]")):
        planted, x, y = forum.planted_multiplier(vs, seed)
        start = time.perf_counter()
        learned = fit_multiplier(vs, x.numpy(), y.numpy(), seed)
        recovered = float((learned == planted.numpy()).mean())
        exact = "exactly in the set" if bool(vs.contains(learned).all()) else "NOT in the set"
        all_recovered &= recovered == 1.0
        echo(_row(f"snapset Multiplier {name}, ste", recovered, exact, time.perf_counter() - start))
        if vs == Sign():
            start = time.perf_counter()
            torch.manual_seed(seed + 1)
            sign_answer = forum.SignAnswer(64)
            before = sign_answer.weight.detach().clone()
            forum.fit(sign_answer, x, y, epochs=12, lr=3e-3, seed=seed)
            moved = "w never moved" if torch.equal(sign_answer.weight, before) else "w moved"
            recovered = float(torch.eq(sign_answer.effective_weight(), planted).float().mean())
            echo(_row("forum: x * sign(w)", recovered, moved, time.perf_counter() - start))
    return all_recovered


MultiplierTrainer = Callable[[ValueSet, Any, Any, int], Any]


def _multiplier_trainer() -> tuple[MultiplierTrainer, str]:
    """Keras's ``sk.Multiplier`` when ``snapset.keras`` imports, else ``st.Multiplier``."""
    # TensorFlow's C++ start-up notes would bury the report; the oneDNN one prints whatever
    # the log level while oneDNN's custom operations are on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras

        from . import keras as sk
    except ImportError:
        return _torch_multiplier, "PyTorch: snapset.torch.Multiplier (Keras is not installed)"

    def fit(values: ValueSet, x: Any, y: Any, seed: int) -> Any:
        keras.utils.set_random_seed(seed + 1)
        model = keras.Sequential(
            [keras.Input((x.shape[1],)), sk.Multiplier(values=values, name="multiplier")]
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
        model.fit(x, y, epochs=12, batch_size=64, verbose=0)
        return sk.exact_weights(model)["multiplier/kernel"]

    return fit, f"Keras {keras.__version__}, {keras.backend.backend()} backend: sk.Multiplier"


def _torch_multiplier(values: ValueSet, x: Any, y: Any, seed: int) -> Any:
    import torch

    from . import torch as st
    from .torch import _forum as forum

    torch.manual_seed(seed + 1)
    layer = st.Multiplier(x.shape[1], values)
    forum.fit(layer, torch.from_numpy(x), torch.from_numpy(y), epochs=12, lr=3e-3, seed=seed)
    return layer.eval().weight.detach().numpy()


def _mnist1d_cnn(
    seed: int, echo: Callable[[str], Any], folder: Path, quick: bool, progress: bool
) -> list[Path]:
    from . import torch as st
    from .torch import _experiments as ex

    data = ex.mnist1d()
    recipe = ex.Recipe(epochs=3 if quick else 20)
    echo(
        f"3. MNIST-1D ({len(data.x_train)} train / {len(data.x_test)} test), the same CNN in "
        f"float and made binary with one constrain_ call, {recipe.epochs} epochs"
    )
    runs = {}
    models = {}
    tracker = None
    for set_name in ("float", "sign", "ternary"):
        model = ex.build("MNIST-1D", set_name, "ste", seed)
        if set_name == "sign":
            tracker = st.FlipTracker(model)
        bar = _progress(f"   {ex.SET_LABELS[set_name]}", recipe.epochs) if progress else None
        runs[set_name] = ex.train(
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
            f"  {ex.SET_LABELS[set_name]:<24} {run.accuracy:>13.1%} "
            f"{run.seconds_per_epoch:>8.2f} {_size(run.packed_bytes):>12}"
        )
    echo("  (the MNIST-1D paper's float CNN: 94%)")
    echo("")
    echo("summary(model) of the Sign CNN:")
    echo(str(st.summary(models["sign"])))
    assert tracker is not None
    return ex.plot_demo(runs, models, tracker, folder)


def _progress(label: str, total: int) -> Callable[[Iterator[int]], Iterator[int]]:
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return lambda epochs: epochs

    def wrap(epochs: Iterator[int]) -> Iterator[int]:
        return iter(tqdm(epochs, desc=label, total=total, unit="epoch", leave=False))

    return wrap


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _in_set(tensor: Any, values: ValueSet) -> bool:
    return bool(values.contains(tensor.detach().cpu().numpy()).all())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
