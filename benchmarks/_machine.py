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
