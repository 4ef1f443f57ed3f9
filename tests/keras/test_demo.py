"""The demo's multiplier section on the Keras backend under test: whichever backend Keras is
configured for learns the planted values exactly, and the report names it."""

import pytest

keras = pytest.importorskip(
    "keras", reason="Keras 3 is not installed: pip install 'snapset[keras]'"
)

from snapset import demo  # noqa: E402


@pytest.mark.slow
def test_the_demo_multiplier_runs_on_the_configured_backend_and_is_exact():
    lines = []
    assert demo.multiplier_report(seed=0, echo=lines.append)
    assert lines[1].endswith(f"{keras.backend.backend()} backend: sk.Multiplier)")
    ours = [line for line in lines if line.strip().startswith("snapset")]
    assert len(ours) == 2
    for line in ours:
        assert "100.0%" in line and "exactly in the set" in line, line


def test_the_demo_sizes_are_keras_files_against_snapset_files():
    lines = []
    rows = demo.sizes_report(echo=lines.append)
    assert "Keras: model.save (.keras, float32) against sk.save" in lines[0]
    sizes = {name: (float_bytes, packed) for name, float_bytes, packed in rows}
    # 4096 float32 entries against 2 bits each; 0.47 M float32 weights against 1 bit each
    assert sizes["Multiplier, 4096 entries"][1] < 4096 * 2 / 8 + 1024
    assert sizes["Sign MLP 784-256-256-10"][0] > 25 * sizes["Sign MLP 784-256-256-10"][1]
