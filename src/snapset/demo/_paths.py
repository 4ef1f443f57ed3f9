"""Where the demo and the accuracy run write: checked before any work."""

from __future__ import annotations

import os
from pathlib import Path


def unusable(path: Path, *, folder: bool) -> str:
    """Why ``path`` cannot be written (a file, or with ``folder`` a folder for files), or ""
    when it can.

    Examples:
        >>> import pathlib, tempfile
        >>> here = pathlib.Path(tempfile.mkdtemp())
        >>> unusable(here, folder=False), unusable(here / "new" / "table.md", folder=False)
        ('is a folder', '')
        >>> _ = (here / "notes").write_text("")
        >>> unusable(here / "notes", folder=True)
        'is a file'
        >>> unusable(here / "notes" / "plots", folder=True)  # doctest: +ELLIPSIS
        'lies under .../notes, which is a file'
    """
    if path.exists():
        if path.is_dir() != folder:
            return "is a file" if folder else "is a folder"
        return "" if os.access(path, os.W_OK) else "is not writable"
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        return f"lies under {existing}, which is a file"
    return "" if os.access(existing, os.W_OK) else "is not writable"
