"""Every Keras block of the documentation runs on this process's Keras backend.

The rules (what a Keras block is, how a page's blocks run) are those of tests/test_docs.py,
which runs every other block and checks that each block is run by one of the two.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")


def _load_rules():
    path = Path(__file__).resolve().parents[1] / "test_docs.py"
    spec = importlib.util.spec_from_file_location("snapset_docs_rules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


docs = _load_rules()


@pytest.mark.parametrize("page", docs.pages_with(keras=True), ids=docs.page_id)
def test_keras_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    docs.seed_all()
    keras.utils.set_random_seed(0)
    docs.run_blocks(page, keras=True)
