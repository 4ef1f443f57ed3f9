"""`snapset demo --quick`: the report's numbers and the plots it writes."""

import re

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
    assert any(line.strip().startswith("Sign MLP 784-256-256-10") for line in lines)  # sizes

    for name in ("loss.png", "flips.png", "values.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert lines[-2] == "Every snapset method recovered its planted values exactly."
