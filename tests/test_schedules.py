"""Schedules of ltbench/schedules.py at their boundary epochs, with the rounding each one states."""
from __future__ import annotations

import pytest

from ltbench.schedules import drw_switch_epoch, mwnl_power, mwnl_stage_epochs, scale_epoch


# --- LDAM-DRW switch ---------------------------------------------------------------------------
@pytest.mark.parametrize("epochs, expected", [(200, 160), (100, 80), (70, 56), (7, 5), (2, 1), (1, 0)])
def test_drw_switch_is_floor_of_eighty_percent(epochs, expected):
    assert drw_switch_epoch(epochs) == expected


def test_drw_switch_rounds_down_where_scale_epoch_rounds():
    # 0.8 · 7 = 5.6: floor gives the official-style 5, round (scale_epoch) would give 6
    assert drw_switch_epoch(7) == 5
    assert scale_epoch(160, 7, 200) == 6


def test_drw_switch_uses_the_decimal_fraction():
    assert 0.29 * 100 < 29  # the float product is 28.999...; the stated rule is floor(29) = 29
    assert drw_switch_epoch(100, fraction=0.29) == 29
    assert drw_switch_epoch(10, fraction=0.5) == 5


def test_drw_switch_absolute_epoch_wins():
    assert drw_switch_epoch(7, drw_epoch=3) == 3
    assert drw_switch_epoch(200, fraction=0.5, drw_epoch=160) == 160
    assert drw_switch_epoch(7, drw_epoch=0) == 0


@pytest.mark.parametrize("kwargs", [dict(fraction=-0.1), dict(drw_epoch=-1)])
def test_drw_switch_rejects_negative_values(kwargs):
    with pytest.raises(ValueError, match="drw_switch_epoch"):
        drw_switch_epoch(10, **kwargs)


# --- MWNL cumulative power -----------------------------------------------------------------------
def test_mwnl_stage_epochs_official_and_scaled():
    assert mwnl_stage_epochs(70) == (20, 60)  # the official config
    assert mwnl_stage_epochs(7) == (2, 6)
    assert mwnl_stage_epochs(100) == (29, 86)  # round(28.57), round(85.71)
    assert mwnl_stage_epochs(2) == (1, 2)
    assert mwnl_stage_epochs(1) == (0, 1)
    assert mwnl_stage_epochs(7, 20, 60, reference_epochs=None) == (20, 60)  # absolute


def test_mwnl_stage_epochs_round_half_to_even():
    # 5 · 7 / 14 = 2.5 -> 2 and 7 · 7 / 14 = 3.5 -> 4 (Python's round, as the docstring states)
    assert mwnl_stage_epochs(7, 5, 7, reference_epochs=14) == (2, 4)


def test_mwnl_official_schedule_has_no_ties():
    for epochs in range(1, 401):
        for reference in (20 * epochs / 70, 60 * epochs / 70):
            assert abs(reference - int(reference) - 0.5) > 1e-9


@pytest.mark.parametrize(
    "epoch, expected",
    [(1, 0.0), (20, 0.0), (21, 1.2 * (1 / 40) ** 2), (40, 1.2 * 0.25), (59, 1.2 * (39 / 40) ** 2),
     (60, 1.2), (70, 1.2)],
)
def test_mwnl_power_official_config(epoch, expected):
    assert mwnl_power(epoch, 20, 60, 1.2) == pytest.approx(expected, rel=1e-15, abs=0)


def test_mwnl_power_boundaries_for_a_scaled_budget():
    E_min, E_max = mwnl_stage_epochs(7)  # (2, 6)
    powers = [mwnl_power(e, E_min, E_max) for e in range(1, 8)]
    assert powers == pytest.approx([0.0, 0.0, 1.2 / 16, 1.2 * 4 / 16, 1.2 * 9 / 16, 1.2, 1.2])
    assert mwnl_power(E_min, E_min, E_max) == 0.0
    assert mwnl_power(E_min + 1, E_min, E_max) > 0.0
    assert mwnl_power(E_max - 1, E_min, E_max) < 1.2
    assert mwnl_power(E_max, E_min, E_max) == 1.2


def test_mwnl_power_with_equal_stage_epochs_jumps():
    assert mwnl_power(3, 3, 3) == 0.0 and mwnl_power(4, 3, 3) == 1.2


def test_mwnl_power_is_one_indexed():
    with pytest.raises(ValueError, match="1-indexed"):
        mwnl_power(0, 20, 60)
