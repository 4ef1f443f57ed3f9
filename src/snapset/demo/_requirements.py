"""What ``snapset demo`` and ``snapset bench accuracy`` import, checked before any work."""

from __future__ import annotations

import importlib.util

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


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
