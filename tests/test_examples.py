"""Each example runs as a user would run it and reaches its goal."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_binary_matrix_example_recovers_every_entry():
    out = run("binary_matrix.py")
    assert "entries recovered 100.0%" in out.splitlines()[-2]
    assert out.splitlines()[-1] == "Linear [0.0, 1.0]"


@pytest.mark.slow
def test_multiplier_example_matches_the_planted_values():
    assert run("multiplier.py").splitlines()[-1] == "exact match: True"


@pytest.mark.slow
def test_ddp_example_keeps_replicas_identical():
    out = run("ddp_torchrun.py").splitlines()
    assert out[-2:] == ["values in their sets: True", "replicas identical: True"]
