"""The `snapset` command's argument errors: exit status 2, said before any training."""

from pathlib import Path

import pytest

from snapset.cli import main


def test_bench_refuses_a_seed_count_below_one_before_training(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "accuracy", "--seeds", "0"])
    assert stop.value.code == 2
    assert "--seeds must be at least 1, not 0" in capsys.readouterr().err


def test_an_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "speed"])
    assert stop.value.code == 2
    assert "invalid choice: 'speed'" in capsys.readouterr().err


def test_demo_refuses_an_out_path_that_is_a_file_before_training(tmp_path, capsys):
    taken = tmp_path / "plots"
    taken.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(taken)]) == 2
    assert "is a file: pass another --out" in capsys.readouterr().out
    assert taken.read_text() == "not a folder"


def test_demo_refuses_an_out_path_under_a_file_before_training(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    assert main(["demo", "--quick", "--out", str(taken / "plots")]) == 2
    assert f"lies under {taken}, which is a file" in capsys.readouterr().out


def test_bench_refuses_an_out_path_that_is_a_folder_before_training(tmp_path, capsys):
    assert main(["bench", "accuracy", "--quick", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder: pass another --out" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_bench_refuses_an_out_path_under_a_file_before_training(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    out = taken / "accuracy.md"
    assert main(["bench", "accuracy", "--quick", "--out", str(out)]) == 2
    assert f"lies under {taken}, which is a file" in capsys.readouterr().out
    assert taken.read_text() == "a file, not a folder"


def test_the_bench_writes_to_the_current_folder_by_default(monkeypatch):
    import snapset.demo

    calls = []

    def run_accuracy(**given):
        calls.append(given)
        return 0

    monkeypatch.setattr(snapset.demo, "run_accuracy", run_accuracy)
    assert main(["bench", "accuracy"]) == 0
    assert calls == [{"seeds": 3, "quick": False, "out": Path("snapset-accuracy.md")}]


@pytest.mark.parametrize(
    ("argv", "absent", "needs"),
    [
        (["demo", "--quick"], "mnist1d", "mnist1d"),
        (["demo"], "matplotlib", "matplotlib"),
        (["bench", "accuracy", "--quick"], "sklearn", "scikit-learn"),
    ],
)
def test_a_missing_package_is_named_before_any_work(monkeypatch, capsys, argv, absent, needs):
    import importlib.util

    import snapset.demo._accuracy
    import snapset.demo._report

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the requirements were checked")

    for module, name in [
        (snapset.demo._report, "matrix_report"),
        (snapset.demo._report, "one_thread"),
        (snapset.demo._accuracy, "datasets"),
        (snapset.demo._accuracy, "one_thread"),
    ]:
        monkeypatch.setattr(module, name, no_work)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == absent else find_spec(name)
    )
    assert main(argv) == 1
    command = " ".join(argv[: 2 if argv[0] == "bench" else 1])
    assert capsys.readouterr().out == (
        f"snapset {command} needs {needs}, which is not installed: pip install 'snapset[demo]'\n"
    )
