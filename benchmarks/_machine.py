"""What every benchmark's results file states about the machine it ran on, and where it goes."""

from pathlib import Path

from snapset.demo import cpu_name as cpu_name
from snapset.demo import machine_line as machine_line


def write_result(name: str, text: str) -> Path:
    """Write a benchmark's table to ``benchmarks/results/<name>`` and say where."""
    path = Path(__file__).parent / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return path


def replace_section(name: str, heading: str, section: str) -> Path:
    """Write ``section`` into ``benchmarks/results/<name>`` in place of the section that starts
    with ``heading`` (a ``## `` line), or after the rest where there is none."""
    path = Path(__file__).parent / "results" / name
    text = path.read_text() if path.exists() else ""
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not ("## " + p).startswith(heading)]
    return write_result(name, "\n## ".join(kept).rstrip("\n") + "\n\n" + section)
