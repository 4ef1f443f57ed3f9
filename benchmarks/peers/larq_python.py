"""Print the Python of larq's own virtual environment, creating it from PyPI if it is missing.

larq 0.13.3 (the last release, 2024) needs Keras 2: it runs on ``tf-keras`` with
``TF_USE_LEGACY_KERAS=1`` and numpy < 2, which cannot share snapset's environment (Keras 3,
numpy 2). The environment lives in benchmarks/.peer-venvs/larq (git-ignored).
"""

import subprocess
import sys
import venv
from pathlib import Path

PINS = ["larq==0.13.3", "tensorflow-cpu==2.17.*", "tf-keras==2.17.*", "numpy<2"]

root = Path(__file__).resolve().parent.parent / ".peer-venvs" / "larq"
python = root / "bin" / "python"
stamp = root / ".installed"
if not stamp.exists() or stamp.read_text() != " ".join(PINS):
    if not python.exists():
        venv.create(root, with_pip=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PINS], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"pip install {' '.join(PINS)} failed: {done.stderr.strip()[-500:]}")
    stamp.write_text(" ".join(PINS))
print(python)
