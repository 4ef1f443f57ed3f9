"""The ``snapset`` command: ``snapset demo`` (the main job) and ``snapset bench accuracy``.

It parses the arguments and hands them to [`snapset.demo`][], where the work is done.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapset`` console script; returns the exit status.

    Examples:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: 0
    """
    parser = argparse.ArgumentParser(
        prog="snapset", description="Train parameters restricted to a finite set of values."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="the forum problems, a binary CNN on MNIST-1D, plots and a report (about 2 minutes)",
    )
    demo_parser.add_argument(
        "--seed", type=int, default=0, help="seed of the problems and the models"
    )
    demo_parser.add_argument(
        "--out", type=Path, default=Path("snapset-demo"), help="folder for the plots"
    )
    demo_parser.add_argument("--quick", action="store_true", help="a short run (under 30 seconds)")
    demo_parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench_parser = commands.add_parser("bench", help="benchmarks on real data")
    bench_parser.add_argument("name", choices=["accuracy"], help="which benchmark")
    bench_parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    bench_parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs: a smoke run")
    bench_parser.add_argument(
        "--out",
        type=Path,
        default=Path("snapset-accuracy.md"),
        help="markdown file for the table (default ./snapset-accuracy.md)",
    )
    args = parser.parse_args(argv)
    if args.command == "bench" and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    try:
        from . import demo
    except ImportError as error:
        print(
            f"snapset {args.command} needs PyTorch ({error}): pip install torch (the build "
            "you want), then pip install 'snapset[demo]'"
        )
        return 1
    if args.command == "demo":
        return demo.run_demo(
            args.seed, out=args.out, quick=args.quick, progress=not args.no_progress
        )
    return demo.run_accuracy(seeds=args.seeds, quick=args.quick, out=args.out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
