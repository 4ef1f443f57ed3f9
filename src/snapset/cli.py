"""The ``snapset`` command: ``snapset demo`` runs the forum problems end to end."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._sets import Binary, Sign, ValueSet


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
        "demo", help="learn the forum problems' planted {0,1} matrix and multiplier"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the planted problems")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo_command(args.seed)
    return 2  # pragma: no cover - argparse has refused unknown commands already


def demo_command(seed: int = 0, echo: Callable[[str], Any] = print) -> int:
    """Learn the two forum problems with snapset and with the forums' answers; print a report.

    Returns 0 when every snapset method recovered its planted values exactly, else 1.
    """
    try:
        import torch
        from torch import nn

        import snapset.torch as st
        from snapset.torch import _forum as forum
    except ImportError:
        echo("snapset demo needs PyTorch: pip install torch (see the README)")
        return 1

    def row(label: str, recovered: float, exact: str, seconds: float) -> str:
        return f"  {label:<36} {recovered:>9.1%}   {exact:<24} {seconds:>5.1f} s"

    header = f"  {'method':<36} {'recovered':>9}   {'values':<24} {'time':>7}"
    all_recovered = True

    planted, x, y = forum.planted_binary_matrix(seed)
    echo("1. A trainable 64x32 matrix with entries in {0, 1}: y = x W^T + noise, 2048 samples")
    echo(header)
    for method in ("ste", "stochastic", "gumbel"):
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", Binary(), method)
        forum.fit(layer, x, y, epochs=6, seed=seed).eval()
        recovered = float(torch.eq(layer.weight, planted).float().mean())
        exact = "exactly {0, 1}" if _in_set(layer.weight, Binary()) else "NOT in {0, 1}"
        all_recovered &= recovered == 1.0
        echo(row(f"snapset {method} + Adam", recovered, exact, time.perf_counter() - start))
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
        echo(row(label, recovered, exact, time.perf_counter() - start))

    values = ValueSet([1, -1, 0.5, -0.5])
    echo("")
    echo(f"2. A learnable multiplier with entries in {list(values.values)}: y = x * w + noise")
    echo(header)
    for vs in (Sign(), values):
        planted, x, y = forum.planted_multiplier(vs, seed)
        start = time.perf_counter()
        torch.manual_seed(seed + 1)
        multiplier = forum.fit(st.Multiplier(64, vs), x, y, epochs=12, lr=3e-3, seed=seed)
        multiplier.eval()
        recovered = float(torch.eq(multiplier.weight, planted).float().mean())
        exact = "exactly in the set" if _in_set(multiplier.weight, vs) else "NOT in the set"
        all_recovered &= recovered == 1.0
        label = f"snapset Multiplier {'Sign' if vs == Sign() else 'ste'} + Adam"
        echo(row(label, recovered, exact, time.perf_counter() - start))
        if vs == Sign():
            start = time.perf_counter()
            torch.manual_seed(seed + 1)
            sign_answer = forum.SignAnswer(64)
            before = sign_answer.weight.detach().clone()
            forum.fit(sign_answer, x, y, epochs=12, lr=3e-3, seed=seed)
            moved = "w never moved" if torch.equal(sign_answer.weight, before) else "w moved"
            recovered = float(torch.eq(sign_answer.effective_weight(), planted).float().mean())
            echo(row("forum: x * sign(w)", recovered, moved, time.perf_counter() - start))
    echo("")
    echo(
        "Every snapset method recovered its planted values exactly."
        if all_recovered
        else "Some snapset method missed planted values: see the table above."
    )
    return 0 if all_recovered else 1


def _in_set(tensor: Any, values: ValueSet) -> bool:
    return bool(values.contains(tensor.detach().cpu().numpy()).all())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
