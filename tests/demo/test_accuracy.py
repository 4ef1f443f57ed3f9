"""snapset's rows of the accuracy table: the goal a seeded run reaches, and the quick run."""

import pytest

from snapset import demo
from snapset.cli import main


@pytest.mark.slow
def test_mnist1d_sign_cnn_reaches_the_goal_from_seed_0():
    with demo.one_thread():  # as the benchmark runs
        model = demo.build("MNIST-1D", "sign", "ste", seed=0)
        run = demo.train(model, demo.mnist1d(), demo.Recipe(), seed=0)
    # The goal for the Sign CNN on MNIST-1D (benchmarks/accuracy.py, GOALS); the
    # exact figure moves by a few test samples from one CPU to another.
    assert run.accuracy >= 0.95
    assert len(run.test_accuracies) == demo.Recipe().epochs


def test_bench_accuracy_quick_writes_its_table(tmp_path, capsys):
    out = tmp_path / "results" / "accuracy.md"
    assert main(["bench", "accuracy", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"wrote {out}" in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| snapset |")]
    assert len(rows) == 2 * len(demo.CONFIGS)  # every set and method on both data sets
    prefix = "| snapset | MNIST-1D | Sign {-1, 1} | ste |"
    sign = next(row for row in rows if row.startswith(prefix))
    cells = [cell.strip() for cell in sign.strip("|").split("|")]
    assert float(cells[5].rstrip("%")) > 50  # five times chance after two epochs
    assert cells[7] == "7.4 KiB"  # 48,000 weights at one bit, BatchNorm in float32
    assert "1 seed(s) [0]" in text and "1 thread," in text
