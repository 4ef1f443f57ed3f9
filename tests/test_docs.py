"""Every python block of the documentation runs, and the README's links lead somewhere.

The python blocks of a page (docs/**/*.md and README.md) run in order in one namespace, in a
temporary working directory, after seeding Python's, numpy's and torch's generators. The Keras
blocks are every block of the Keras guide (docs/guides/keras.md) and every block elsewhere that
imports Keras (a line ``import keras``, ``import snapset.keras as sk``, ``from keras ...``): they
run in tests/keras/test_docs.py, once per Keras backend, in a namespace of their own per page;
all others run here. Every fenced block is ``python`` (run), ``bash`` or ``text`` (shown only),
so none can slip past both tests under another name."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
LANGUAGES = ("python", "bash", "text")
KERAS_PAGES = (ROOT / "docs" / "guides" / "keras.md",)

# An opening fence, possibly indented (inside a list or an admonition), and its closing twin.
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
FENCE_LINE = re.compile(r"^ *```", re.MULTILINE)
KERAS_IMPORT = re.compile(r"^\s*(import|from)\s[^#\n]*\bkeras\b", re.MULTILINE)
KERAS_NAME = re.compile(r"\b(sk|keras)\.")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the first line of code, 1-based
    language: str
    code: str

    @property
    def keras(self) -> bool:
        return self.page in KERAS_PAGES or bool(KERAS_IMPORT.search(self.code))

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order, their code dedented by the fence's indent."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        line = text.count("\n", 0, match.start("body")) + 1
        found.append(Block(page, line, match["info"].strip(), code))
    return found


def python_blocks(page: Path, *, keras: bool) -> list[Block]:
    return [b for b in blocks(page) if b.language == "python" and b.keras == keras]


def pages_with(*, keras: bool) -> list[Path]:
    return [page for page in PAGES if python_blocks(page, keras=keras)]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def run_blocks(page: Path, *, keras: bool) -> None:
    """Run the chosen python blocks of ``page`` in order in one namespace.

    Each block is compiled under the page's path with its own line numbers, so a failure points
    at the line of the documentation that failed.
    """
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in python_blocks(page, keras=keras):
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(page.relative_to(ROOT)), "exec"), namespace)


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)


# ----- the torch (and framework-free) blocks ---------------------------------------------------


# Lightning's advice for real runs (DataLoader workers, logging intervals) and its use of a
# pytree API that torch 2.13 deprecates, for the Lightning block of the scaling-out guide.
@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning")
@pytest.mark.parametrize("page", pages_with(keras=False), ids=page_id)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    seed_all()
    torch.manual_seed(0)
    # The blocks train tiny models: one thread is as fast, and far faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_blocks(page, keras=False)
    finally:
        torch.set_num_threads(threads)


# ----- that every block is run by one of the two tests -----------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_fence_is_python_bash_or_text(page: Path) -> None:
    found = blocks(page)
    assert 2 * len(found) == len(FENCE_LINE.findall(page.read_text(encoding="utf-8"))), (
        "a fence without its closing twin"
    )
    assert [b.name for b in found if b.language not in LANGUAGES] == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_python_block_is_run_by_one_of_the_two_tests(page: Path) -> None:
    # Counted on the raw text, apart from the fence parser that the two tests rely on.
    opened = re.findall(r"^ *```python[ \t]*$", page.read_text(encoding="utf-8"), re.MULTILINE)
    here = python_blocks(page, keras=False)
    there = python_blocks(page, keras=True)
    assert len(here) + len(there) == len(opened)
    assert (page in pages_with(keras=False)) == bool(here)
    assert (page in pages_with(keras=True)) == bool(there)


def test_every_page_of_the_site_is_checked() -> None:
    # mkdocs builds these suffixes as pages too; PAGES holds the .md files only.
    others = [p for p in (ROOT / "docs").rglob("*") if p.suffix in (".markdown", ".mdown", ".mkd")]
    assert others == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_keras_code_is_in_keras_blocks(page: Path) -> None:
    # A block that uses Keras without importing it would run here, on no particular backend.
    assert [b.name for b in python_blocks(page, keras=False) if KERAS_NAME.search(b.code)] == []


def test_the_guides_have_python_blocks_of_both_kinds() -> None:
    assert ROOT / "docs" / "guides" / "pytorch.md" in pages_with(keras=False)
    assert ROOT / "docs" / "guides" / "keras.md" in pages_with(keras=True)


# ----- links and includes ----------------------------------------------------------------------


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_readme_links_point_to_existing_files() -> None:
    targets = LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]
    assert local, "the README links into the documentation"
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_the_benchmarks_pages_include_every_result_file() -> None:
    included = {  # a file, or lines of it ("file.md:3:", from line 3 on)
        match
        for page in (ROOT / "docs").rglob("*.md")
        for match in re.findall(
            r'^--8<-- "([^":]+)(?::\d*:\d*)?"$', page.read_text(encoding="utf-8"), re.M
        )
    }
    results = {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert results <= included
    assert [path for path in included if not (ROOT / path).is_file()] == []
