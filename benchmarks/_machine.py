"""What every benchmark's results file states about the machine it ran on."""

import contextlib
import datetime
import importlib
import platform
from pathlib import Path

from snapset._machine import cpu_name as cpu_name


def write_result(name: str, text: str) -> Path:
    """Write a benchmark's table to ``benchmarks/results/<name>`` and say where."""
    path = Path(__file__).parent / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return path


def machine_line(*packages: str) -> str:
    """Date, CPU, torch threads and versions: Python, torch, ``packages`` where installed,
    snapset."""
    import torch

    import snapset

    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in packages:
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {importlib.import_module(name).__version__}")
    return (
        f"{datetime.date.today()}, {cpu_name()}, {torch.get_num_threads()} threads, "
        f"{', '.join(versions)}, snapset {snapset.__version__}"
    )
