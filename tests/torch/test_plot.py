"""The flip-ratio plot draws what happened: no flip at 0, whole update numbers, legends beside
the data (checked on the figure's contents, not its pixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snapset
import snapset.torch as st

pytest.importorskip("matplotlib")
from matplotlib.ticker import MaxNLocator

from snapset.torch._plot import training_figure


def tracked_flips(flips: list[int]) -> st.FlipTracker:
    """A tracker of an 8-entry sign layer after updates that flip ``flips[i]`` entries."""
    layer = st.constrain(torch.nn.Linear(4, 2), "weight", snapset.Sign(), "flip")
    layer.weight = torch.ones(2, 4)
    tracker = st.FlipTracker(layer)
    for count in flips:
        weight = layer.weight.detach().clone().flatten()
        weight[:count] *= -1
        layer.weight = weight.reshape(2, 4)
        tracker.update()
    return tracker


def test_updates_without_a_flip_are_drawn_at_zero() -> None:
    figure = training_figure(tracked_flips([2, 0, 1, 0, 0, 4]))
    top = figure.axes[0]
    line, _ = top.get_lines()
    assert line.get_xdata().tolist() == [1, 2, 3, 4, 5, 6]
    assert line.get_ydata().tolist() == [0.25, 0.0, 0.125, 0.0, 0.0, 0.5]
    assert top.get_yscale() == "symlog"
    # linear up to the smallest flip that happened, so every flip lies on the log part
    assert top.yaxis.get_transform().linthresh == 0.125
    zero = top.transData.transform((1, 0.0))[1]
    assert zero == pytest.approx(top.transAxes.transform((0, 0))[1])  # 0 at the bottom edge
    assert top.transData.transform((1, 0.125))[1] > zero + 10  # the smallest flip stands apart


def test_update_numbers_are_whole_and_legends_sit_beside_the_data() -> None:
    figure = training_figure(tracked_flips([1, 3, 0]))
    figure.draw_without_rendering()
    for axis in figure.axes:
        assert isinstance(axis.xaxis.get_major_locator(), MaxNLocator)
        ticks = axis.get_xticks()
        assert np.array_equal(ticks, np.round(ticks))
        legend = axis.get_legend()
        assert legend.get_window_extent().x0 >= axis.get_window_extent().x1


def test_a_training_without_any_flip_is_a_flat_line_at_zero() -> None:
    top = training_figure(tracked_flips([0, 0])).axes[0]
    assert top.get_lines()[0].get_ydata().tolist() == [0.0, 0.0]
    assert top.get_ylim()[0] == 0


def test_oscillations_are_a_dashed_line_of_the_tensors_colour_beside_its_flips() -> None:
    """Entry 0 goes down, up, down: its second and third changes oscillate, and so does
    entry 1's second change (down, then up)."""
    tracker = tracked_flips([2, 1, 0, 3])
    top = training_figure(tracker).axes[0]
    flips, oscillations = top.get_lines()
    assert oscillations.get_linestyle() == "--" and flips.get_linestyle() == "-"
    assert oscillations.get_color() == flips.get_color()
    assert oscillations.get_xdata().tolist() == [1, 2, 3, 4]
    assert oscillations.get_ydata().tolist() == [0.0, 0.125, 0.0, 0.25]
    assert oscillations.get_ydata().tolist() == tracker.oscillation_ratios()["weight"]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["weight"]


def test_an_oscillation_smaller_than_every_flip_ratio_still_lies_on_the_log_part() -> None:
    layer = st.constrain(torch.nn.Linear(8, 8), "weight", snapset.Sign(), "flip")
    layer.weight = torch.ones(8, 8)
    tracker = st.FlipTracker(layer)
    for down, up in ((range(4), []), (range(4, 11), [0])):  # then 1 of 8 flips goes back
        weight = layer.weight.detach().clone().flatten()
        weight[list(down)], weight[up] = -1.0, 1.0
        layer.weight = weight.reshape(8, 8)
        tracker.update()
    assert tracker.flip_ratios()["weight"] == [4 / 64, 8 / 64]
    assert tracker.oscillation_ratios()["weight"] == [0.0, 1 / 64]
    top = training_figure(tracker).axes[0]
    assert top.yaxis.get_transform().linthresh == 1 / 64
