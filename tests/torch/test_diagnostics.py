"""Diagnostics: flip ratios, value histograms, the summary table and the plot."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import snapset
import snapset.torch as st
from snapset.demo import planted_binary_matrix


def test_summary_numbers_by_hand(small_mixed_model: nn.Sequential) -> None:
    table = st.summary(small_mixed_model)
    rows = {row.name: row for row in table.rows}
    # Binary 4x3: 12 weights, 1 bit each -> 12 bits -> 2 bytes; 48 bytes in float32.
    assert (rows["0.weight"].count, rows["0.weight"].bits, rows["0.weight"].packed_bytes) == (
        12,
        1,
        2,
    )
    assert rows["0.weight"].compression == 24.0
    # Four values: 3 weights x 2 bits = 6 bits -> 1 byte.
    assert (rows["1.weight"].count, rows["1.weight"].bits, rows["1.weight"].packed_bytes) == (
        3,
        2,
        1,
    )
    # Gumbel stores 6 x 3 logits but holds 6 weights: 2 bits each -> 12 bits -> 2 bytes.
    assert (rows["2.weight"].count, rows["2.weight"].bits, rows["2.weight"].packed_bytes) == (
        6,
        2,
        2,
    )
    assert rows["2.weight"].method == "gumbel"
    # Plain biases stay float32: 3 + 2 weights, 4 bytes each.
    assert (rows["0.bias"].method, rows["0.bias"].bits, rows["0.bias"].packed_bytes) == (
        "-",
        32,
        12,
    )
    assert rows["2.bias"].packed_bytes == 8
    assert (table.count, table.constrained_count) == (26, 21)
    assert (table.packed_bytes, table.float32_bytes) == (25, 104)
    assert table.compression == pytest.approx(104 / 25)
    text = str(table)
    assert "| 0.weight | {0, 1}" in text
    assert "{-1, -0.5, 0.5, 1}" in text
    assert "| total" in text and "4.16x" in text
    assert "21 of 26 weights (80.8%) in a value set; 25 B packed" in text


def test_summary_counts_hardened_tensors_in_their_sets(small_mixed_model: nn.Sequential) -> None:
    def numbers(table: st.Summary) -> dict[str, tuple[object, ...]]:
        return {row.name: (row.values, row.count, row.bits, row.packed_bytes) for row in table.rows}

    constrained = st.summary(small_mixed_model)
    hardened = st.summary(st.harden_(small_mixed_model))
    assert numbers(hardened) == numbers(constrained)
    assert {row.method for row in hardened.rows if row.values is not None} == {"hardened"}
    assert "21 of 26 weights (80.8%) in a value set; 25 B packed" in str(hardened)
    with torch.no_grad():
        small_mixed_model[0].weight[0, 0] = 0.5  # a value outside {0, 1}: plain again
    assert st.summary(small_mixed_model).constrained_count == 21 - 12
    gf2 = st.summary(st.GF2Linear(8, 3).harden_())  # its hardened weight is a buffer
    assert [(row.name, row.method, row.count, row.packed_bytes) for row in gf2.rows] == [
        ("weight", "hardened", 24, 3)
    ]


def test_summary_refuses_a_flip_parameter_off_its_set(small_mixed_model: nn.Sequential) -> None:
    with torch.no_grad():
        small_mixed_model[0].parametrizations.weight.original[0, 0] = 0.5
    with pytest.raises(snapset.OutsideSetError, match=r"'0\.weight' holds 1 value outside"):
        st.summary(small_mixed_model)


def test_flip_ratio_and_histograms_by_hand_for_every_method(
    small_mixed_model: nn.Sequential,
) -> None:
    model = small_mixed_model
    st.constrain(model[0], "bias", snapset.Sign(), method="ste")
    tracker = st.FlipTracker(model)
    assert sorted(tracker.names) == ["0.bias", "0.weight", "1.weight", "2.weight"]
    values_before = {name: c.hard(_stored(model, name)).clone() for name, c in _constraints(model)}
    with torch.no_grad():
        model[0].weight = torch.ones(3, 4)  # a flip parameter: assigned
        model[1].parametrizations.weight.original[0] = -model[1].weight[0]  # stays in the set
        latent = model[0].parametrizations.bias.original
        latent[0] = -latent[0]  # a latent crosses its threshold: one flip
        logits = model[2].parametrizations.weight.original
        logits[0, 0] = logits[0, 0].flip(0)  # reversing the logits of one entry moves its argmax
    tracker.update()
    expected = {
        name: int((c.hard(_stored(model, name)) != values_before[name]).sum())
        / values_before[name].numel()
        for name, c in _constraints(model)
    }
    ratios = tracker.flip_ratios()
    assert {name: series[-1] for name, series in ratios.items()} == expected
    assert expected["0.bias"] == 1 / 3 and expected["1.weight"] == 1 / 3
    assert expected["2.weight"] == 1 / 6
    histograms = tracker.histograms()
    assert histograms["0.weight"].tolist()[-1] == [0, 12]
    assert histograms["0.weight"].shape == (2, 2)
    for name, constraint in _constraints(model):
        hard = constraint.hard(_stored(model, name))
        assert histograms[name][-1].tolist() == [int((hard == v).sum()) for v in constraint.values]


def test_tracker_keeps_bits_not_float_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit planes for the compiled sweep (one bit an entry and boundary, and two for the
    direction of the last change), a byte or a bool an entry, and two bools, for torch's
    operations."""
    layer = st.constrain(nn.Linear(64, 64), "weight", snapset.Ternary(), method="ste")
    tracked = st.FlipTracker(layer)._tracked[0]
    assert tracked.previous.dtype == torch.uint8 and tracked.previous.shape == (2, 64 * 64 // 8)
    assert [(went.dtype, went.shape) for went in tracked.last] == [(torch.uint8, (512,))] * 2
    binary = st.constrain(nn.Linear(8, 8), "weight", snapset.Sign(), "flip")
    assert st.FlipTracker(binary)._tracked[0].previous.shape == (1, 8)
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    tracked = st.FlipTracker(layer)._tracked[0]
    assert tracked.previous.element_size() == 1 and tracked.previous.numel() == 64 * 64
    assert [(went.dtype, went.shape) for went in tracked.last] == [(torch.bool, (64, 64))] * 2
    assert st.FlipTracker(binary)._tracked[0].previous.dtype == torch.bool


def test_tracker_goes_on_with_torch_operations_when_the_sweep_stops_applying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From bit planes to codes in the middle of a run (here: numba switched off; in use, a
    move to a GPU): the flips are still counted against the last update."""
    layer = st.constrain(nn.Linear(16, 4), "weight", snapset.Ternary(), "flip")
    layer.weight = torch.zeros(4, 16)
    tracker = st.FlipTracker(layer)
    layer.weight = torch.tensor([[1.0] * 16, [-1.0] * 16, [0.0] * 16, [0.0] * 16])
    tracker.update()
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    layer.weight = torch.tensor([[1.0] * 16, [0.0] * 16, [0.0] * 16, [-1.0] * 8 + [0.0] * 8])
    tracker.update()
    assert tracker.flip_ratios()["weight"] == [0.5, 0.375]
    assert tracker.histograms()["weight"].tolist() == [[0, 64, 0], [16, 32, 16], [8, 40, 16]]


@pytest.mark.parametrize("method", ["flip", "ste", "stochastic", "gumbel"])
@pytest.mark.parametrize(
    "values", [snapset.Sign(), snapset.Ternary(), snapset.ValueSet([1, -1, 0.5, -0.5])], ids=repr
)
def test_the_compiled_tracker_and_torch_operations_record_the_same(
    values: snapset.ValueSet, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One compiled sweep (CPU, numba) or torch's comparisons: the same flips, oscillations
    and histograms."""

    def run() -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
        torch.manual_seed(0)
        layer = st.constrain(nn.Linear(32, 16), "weight", values, method=method, scale=None)
        tracker = st.FlipTracker(layer)
        groups = st.param_groups(layer)
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.Adam(groups.latent + groups.other, lr=0.05)
        ]
        if groups.flip:
            optimizers.append(st.Bop(groups.flip, threshold=1e-3, gamma=0.3))
        for _ in range(8):
            layer.zero_grad()
            layer(torch.randn(4, 32)).square().mean().backward()
            for optimizer in optimizers:
                optimizer.step()
            tracker.update()
        return tracker.flip_ratios(), tracker.oscillation_ratios(), tracker.histograms()

    ratios, oscillations, histograms = run()
    assert sum(ratios["weight"]) > 0  # entries did change
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")
    torch_ratios, torch_oscillations, torch_histograms = run()
    assert ratios == torch_ratios
    assert oscillations == torch_oscillations
    assert np.array_equal(histograms["weight"], torch_histograms["weight"])


def test_tracker_follows_bop_training() -> None:
    torch.manual_seed(0)
    layer = st.constrain(nn.Linear(16, 8), "weight", snapset.Ternary(), method="flip")
    opt = st.Bop([layer.parametrizations.weight.original], threshold=1e-3, gamma=0.2)
    tracker = st.FlipTracker(layer)
    changed = []
    for _ in range(5):
        before = layer.weight.clone()
        opt.zero_grad()
        layer(torch.randn(32, 16)).square().mean().backward()
        opt.step()
        tracker.update()
        changed.append(int((layer.weight != before).sum()) / before.numel())
    assert tracker.flip_ratios()["weight"] == changed
    assert any(c > 0 for c in changed)


def test_tracker_needs_a_constrained_tensor() -> None:
    with pytest.raises(ValueError, match="no tensor constrained by snapset"):
        st.FlipTracker(nn.Linear(2, 2))


def test_plot_writes_a_png(tmp_path: Path, small_mixed_model: nn.Sequential) -> None:
    pytest.importorskip("matplotlib")
    model = small_mixed_model
    tracker = st.FlipTracker(model)
    opt = st.Bop(st.param_groups(model).flip, threshold=1e-3, gamma=0.5)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
        tracker.update()
    out = tracker.plot(tmp_path / "training.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_mixed_model: nn.Sequential
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    tracker = st.FlipTracker(small_mixed_model)
    with pytest.raises(ImportError, match=r"pip install 'snapset\[plot\]'"):
        st.plot_training(tracker, tmp_path / "x.png")


def _constraints(model: nn.Module) -> list[tuple[str, st.Constraint]]:
    return list(st.named_constraints(model))


def _stored(model: nn.Module, name: str) -> torch.Tensor:
    *path, tensor = name.split(".")
    module = model.get_submodule(".".join(path))
    return module.parametrizations[tensor].original  # type: ignore[index, union-attr, no-any-return]


def test_the_compiled_tracker_splits_a_large_tensor_between_threads_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(threads: int) -> tuple[list[float], list[float], np.ndarray]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            layer = st.Multiplier((1 << 21) + 5, snapset.Ternary(), method="flip")
            tracker = st.FlipTracker(layer)
            opt = st.Bop(layer.parameters(), threshold=1e-3, gamma=0.5)
            for _ in range(3):
                layer.parametrizations.weight.original.grad = 1e-2 * torch.randn((1 << 21) + 5)
                opt.step()
                tracker.update()
            ratios, oscillations = tracker.flip_ratios(), tracker.oscillation_ratios()
            return ratios["weight"], oscillations["weight"], tracker.histograms()["weight"]
        finally:
            torch.set_num_threads(before)

    ratios, oscillations, histograms = run(2)
    assert 0 < ratios[0] < 1
    assert 0 < oscillations[-1] < ratios[-1]
    one_thread = run(1)
    monkeypatch.setenv("SNAPSET_KERNELS", "numpy")  # torch's operations
    for other in (one_thread, run(2)):
        assert other[0] == ratios
        assert other[1] == oscillations
        assert np.array_equal(other[2], histograms)


# ----- oscillation ------------------------------------------------------------------------


def oscillations_by_hand(history: list[list[int]]) -> list[int]:
    """The definition, entry by entry (Nagel et al., 2022): a change of code oscillates when
    it goes against the direction of that entry's previous change; a first change never does.
    One count per step of ``history`` (a list of code lists)."""
    last = [0] * len(history[0])  # +1: last change went up, -1: down, 0: none yet
    counts = []
    for before, after in itertools.pairwise(history):
        count = 0
        for entry, (old, new) in enumerate(zip(before, after, strict=True)):
            if new != old:
                direction = 1 if new > old else -1
                count += direction == -last[entry]
                last[entry] = direction
        counts.append(count)
    return counts


def tracked_codes(
    history: list[list[int]], k: int, switch_at: int | None, device: str | None = None
) -> st.FlipTracker:
    """A tracker of a flip Multiplier over ``{0, ..., k - 1}`` whose codes go through
    ``history``: by the compiled sweep until update ``switch_at`` (None: never), by torch's
    operations after it (numba switched off there, or the layer moved to ``device``)."""
    layer = st.Multiplier(len(history[0]), snapset.ValueSet(range(k)), method="flip")
    stored = layer.parametrizations.weight.original
    layer.weight = torch.tensor(history[0], dtype=torch.float32)
    tracker = st.FlipTracker(layer)
    with pytest.MonkeyPatch.context() as patch:
        for update, codes in enumerate(history[1:]):
            if update == switch_at and device is None:
                patch.setattr("snapset.torch._diagnostics.compiled", lambda: False)
            elif update == switch_at:
                layer.to(device)
            layer.weight = torch.tensor(codes, dtype=torch.float32, device=stored.device)
            tracker.update()
    return tracker


@pytest.mark.parametrize("k", [2, 3, 4])
def test_every_path_counts_oscillations_as_the_definition_does(k: int) -> None:
    """Compiled sweep, torch's operations, and the compiled sweep handing over to torch's in
    the middle: the same numbers as the definition written by hand (37 entries: a partial
    last byte of bit planes)."""
    rng = np.random.default_rng(k)
    history = rng.integers(0, k, (16, 37)).tolist()
    expected = [count / 37 for count in oscillations_by_hand(history)]
    assert sum(expected) > 0
    for switch_at in (None, 0, 7):
        tracker = tracked_codes(history, k, switch_at)
        assert tracker._tracked[0].planes == (switch_at is None)
        assert tracker.oscillation_ratios() == {"weight": expected}
        flips = [np.count_nonzero(np.diff(history, axis=0)[i]) / 37 for i in range(15)]
        assert tracker.flip_ratios() == {"weight": flips}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_tracker_takes_the_directions_along_when_its_model_moves_to_the_gpu() -> None:
    history = np.random.default_rng(0).integers(0, 3, (12, 37)).tolist()
    tracker = tracked_codes(history, 3, 5, device="cuda")
    assert tracker._tracked[0].last[0].is_cuda and not tracker._tracked[0].planes
    expected = [count / 37 for count in oscillations_by_hand(history)]
    assert tracker.oscillation_ratios() == {"weight": expected}


def test_flips_that_keep_their_direction_and_updates_without_flips_do_not_oscillate() -> None:
    history = [[0] * 8, [1] * 4 + [0] * 4, [2] * 4 + [1] * 4, [2] * 4 + [1] * 4, [2] * 8]
    tracker = tracked_codes([*history, [1] * 8], 3, None)  # all down at last: 8 after ups
    assert tracker.flip_ratios()["weight"] == [0.5, 1.0, 0.0, 0.5, 1.0]
    assert tracker.oscillation_ratios()["weight"] == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_a_latent_trained_at_a_constant_high_rate_ends_up_oscillating() -> None:
    """Adam at a constant learning rate on the planted {0, 1} matrix: early flips go where
    the gradient sends them; late, nearly every flip is an entry going back (the latents of
    entries already right random-walk across the threshold). An update without a step neither
    flips nor oscillates."""
    torch.manual_seed(0)
    planted, x, y = planted_binary_matrix()
    layer = st.constrain(nn.Linear(32, 64, bias=False), "weight", snapset.Binary(), "ste")
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    tracker = st.FlipTracker(layer)
    for _ in range(200):
        batch = torch.randint(0, len(x), (64,))
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x[batch]), y[batch]).backward()
        optimizer.step()
        tracker.update()
    tracker.update()  # no step since the last update
    flips = np.array(tracker.flip_ratios()["weight"])
    oscillations = np.array(tracker.oscillation_ratios()["weight"])
    assert (layer.weight == planted).float().mean() > 0.95
    assert oscillations[0] == 0 < flips[0]  # first changes never oscillate
    assert oscillations[:20].sum() < 0.5 * flips[:20].sum()
    assert oscillations[150:200].sum() > 0.9 * flips[150:200].sum() > 0
    assert flips[-1] == oscillations[-1] == 0
    assert np.all(oscillations <= flips)
