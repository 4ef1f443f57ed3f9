"""Each example runs as a user would run it and reaches its goal."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
# Each example and the test that runs it; the Keras one runs once per Keras backend.
TESTED = {
    "binary_matrix.py": "test_binary_matrix_example_recovers_every_entry",
    "multiplier.py": "test_multiplier_example_matches_the_planted_values",
    "ddp_torchrun.py": "test_ddp_example_keeps_replicas_identical",
    "keras_multiplier.py": "keras/test_examples.py",
    "ternary_lm.py": "test_ternary_lm_example_trains_packs_and_exports",
}


def run(name, *args):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
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


@pytest.mark.slow
def test_ternary_lm_example_trains_packs_and_exports(tmp_path):
    out = run("ternary_lm.py", "--steps", "4", "--train-bytes", "100000", "--out", str(tmp_path))
    lines = out.splitlines()
    assert lines[0].startswith("trained 8,192 tokens")
    assert "packed model writes what the trained model writes: 64 of 64 bytes" in lines
    assert (tmp_path / "model-tq2_0.gguf").is_file()
    assert (tmp_path / "transformers" / "config.json").is_file()
    same = float(lines[-1].split("same next byte at ")[1].split("%")[0])
    assert same >= 95.0


def test_every_example_is_run_by_a_test():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TESTED)
    for name, test in TESTED.items():
        assert test in globals() or (Path(__file__).parent / test).is_file(), name
