"""`snapset demo --quick`: the report's numbers and the plots it writes."""

import re

import pytest

from snapset.cli import main


def _percent(line: str) -> float:
    match = re.search(r"(\d+\.\d)%", line)
    assert match is not None, line
    return float(match.group(1)) / 100


def test_demo_quick_recovers_every_planted_value_and_writes_its_plots(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()

    ours = [line for line in lines if line.strip().startswith("snapset")]
    labels = [line.split("  ")[1].strip() for line in ours]
    assert labels == [
        "snapset ste + Adam",
        "snapset flip + Bop",
        "snapset Multiplier Sign, ste",
        "snapset Multiplier [1, -1, 0.5, -0.5], ste",
    ]
    for line in ours:
        assert _percent(line) == 1.0, line
        assert "exactly" in line, line
    relu = next(line for line in lines if "relu(sigmoid" in line)
    assert _percent(relu) < 0.6  # its values lie in [0, 0.1): only the zeros are right
    assert "w never moved" in next(line for line in lines if "sign(w)" in line)

    accuracies = {
        name: _percent(next(line for line in lines if line.strip().startswith(name)))
        for name in ("float32", "Sign {-1, 1}", "Ternary {-1, 0, 1}")
    }
    assert accuracies["float32"] > 0.8  # three epochs only
    assert min(accuracies.values()) > 0.5  # five times chance, after three epochs
    assert any("smaller than float32" in line for line in lines)  # the summary table

    for name in ("loss.png", "flips.png", "values.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert lines[-2] == "Every snapset method recovered its planted values exactly."


def test_bench_refuses_a_seed_count_below_one_before_training(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "accuracy", "--seeds", "0"])
    assert stop.value.code == 2
    assert "--seeds must be at least 1, not 0" in capsys.readouterr().err


def test_demo_refuses_an_out_path_that_is_a_file_before_training(tmp_path, capsys):
    taken = tmp_path / "plots"
    taken.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(taken)]) == 2
    assert "is a file: pass another --out" in capsys.readouterr().out
    assert taken.read_text() == "not a folder"
