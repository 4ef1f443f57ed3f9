"""The Keras example runs as a user would run it, on the backend under test, and succeeds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)


EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "keras_multiplier.py"


@pytest.mark.slow
def test_the_keras_multiplier_example_recovers_the_planted_values():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"backend: {keras.backend.backend()}"
    assert lines[-1] == "exact match: True"
