"""Checks of the built wheel, installed (not editable) in a fresh environment with the demo's
extras; ``make test-wheel`` runs this file with that environment's Python from outside the
checkout. A script, not a pytest module: the test suite's environment has the checkout
installed in editable mode."""

import importlib
import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path


def run(*args: str) -> str:
    """Run the installed ``snapset`` command; fail with its output if it fails."""
    command = [str(Path(sys.executable).parent / "snapset"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def main() -> None:
    import snapset

    package = Path(snapset.__file__).parent
    assert "site-packages" in package.parts, f"snapset imported from {package}, not the wheel"
    assert snapset.__version__ == importlib.metadata.version("snapset")
    assert (package / "py.typed").is_file(), "the wheel lacks py.typed"
    shipped = {Path(str(f)).parts[0] for f in importlib.metadata.files("snapset") or []}
    assert not shipped & {"tests", "benchmarks", "docs", "examples"}, shipped

    for front in ("snapset.torch", "snapset.keras", "snapset.demo"):
        importlib.import_module(front)

    with tempfile.TemporaryDirectory() as folder:
        plots = Path(folder) / "plots"
        report = run("demo", "--quick", "--no-progress", "--out", str(plots))
        assert "Every snapset method recovered its planted values exactly." in report, report
        for name in ("loss.png", "flips.png", "values.png"):
            assert (plots / name).read_bytes()[:4] == b"\x89PNG", name
        table = Path(folder) / "accuracy.md"
        run("bench", "accuracy", "--quick", "--out", str(table))
        assert "| snapset | MNIST-1D | Sign {-1, 1} | ste |" in table.read_text()
    print(
        f"snapset {snapset.__version__}: the installed wheel imports, runs the demo and the bench"
    )


if __name__ == "__main__":
    main()
