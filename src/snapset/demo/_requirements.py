"""What ``snapset demo`` and ``snapset bench accuracy`` need (the modules they import and a
place to write), checked before any work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._paths import unusable

#: The modules each command imports beyond PyTorch, and the package that provides each. Keras
#: and tqdm are not here: without them the demo trains its multiplier in PyTorch and shows no
#: progress bars.
NEEDS = {
    "demo": {"mnist1d": "mnist1d", "matplotlib": "matplotlib"},
    "bench accuracy": {"mnist1d": "mnist1d", "sklearn": "scikit-learn"},
}


def missing(command: str) -> str:
    """Why ``snapset <command>`` cannot run here (the packages it needs that do not import, and
    the extra that installs them), or "" when it can.

    Examples:
        >>> missing("demo")
        ''
        >>> NEEDS["nothing"] = {"no_such_module_here": "no-such-package"}
        >>> missing("nothing")
        "snapset nothing needs no-such-package, which is not installed: pip install 'snapset[demo]'"
        >>> del NEEDS["nothing"]
    """
    absent = [package for module, package in NEEDS[command].items() if not _importable(module)]
    if not absent:
        return ""
    verb = "is" if len(absent) == 1 else "are"
    return (
        f"snapset {command} needs {' and '.join(absent)}, which {verb} not installed: "
        "pip install 'snapset[demo]'"
    )


#: What each command writes to its ``--out``, and whether that is a folder.
WRITES = {"demo": ("its plots to a folder", True), "bench accuracy": ("a markdown file", False)}


def refusal(command: str, out: Path) -> tuple[int, str]:
    """The exit status and message with which ``snapset <command>`` stops before any work:
    1 when a package it needs is missing, 2 when ``out`` cannot be written; ``(0, "")`` when
    it can run.

    Examples:
        >>> import pathlib, tempfile
        >>> refusal("bench accuracy", pathlib.Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
        (2, 'snapset bench accuracy writes a markdown file; ... is a folder: pass another --out')
    """
    absent = missing(command)
    if absent:
        return 1, absent
    what, folder = WRITES[command]
    problem = unusable(out, folder=folder)
    if problem:
        return 2, f"snapset {command} writes {what}; {out} {problem}: pass another --out"
    return 0, ""


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
