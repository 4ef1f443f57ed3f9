"""What a results file states about the machine it ran on."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import platform
from pathlib import Path

import torch

import snapset


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one.

    Examples:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(*packages: str) -> str:
    """Date, CPU, torch threads and versions: Python, torch, ``packages`` where installed,
    snapset.

    Examples:
        >>> line = machine_line("numpy", "not_a_package")
        >>> "numpy" in line, "not_a_package" in line, "snapset" in line
        (True, False, True)
    """
    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in packages:
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {importlib.import_module(name).__version__}")
    threads = torch.get_num_threads()
    return (
        f"{datetime.date.today()}, {cpu_name()}, {threads} thread{'s' if threads != 1 else ''}, "
        f"{', '.join(versions)}, snapset {snapset.__version__}"
    )
