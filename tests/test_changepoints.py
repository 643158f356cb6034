"""Change-point detection (harness.measure.changepoints) on seeded synthetic histories.

Calibration: pure noise must not raise alarms, a 5% step and a 2%/night creep must be found at
the right night, and each must be named for what it is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.measure.changepoints import ChangePoint, detect, robust_noise


def noise_series(seed: int, nights: int, sd: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 0.004 * np.exp(rng.normal(0.0, sd, nights))


def test_pure_noise_raises_no_alarm_in_95_of_100_series():
    alarms = []
    for seed in range(100):
        rng = np.random.default_rng(10_000 + seed)
        nights, sd = int(rng.integers(30, 61)), float(rng.uniform(0.01, 0.03))
        found = detect(noise_series(seed, nights, sd))
        if found:
            alarms.append((seed, nights, sd, [c.describe() for c in found]))
    assert len(alarms) <= 5, alarms


@pytest.mark.parametrize("seed", range(8))
def test_a_5pct_step_in_noise_is_found_at_its_night(seed):
    rng = np.random.default_rng(seed)
    nights, sd = 40, float(rng.uniform(0.01, 0.02))
    night = int(rng.integers(8, 33))
    values = noise_series(100 + seed, nights, sd)
    values[night:] *= 1.05
    ids = [f"run{i:02d}" for i in range(nights)]
    found = detect(values, run_ids=ids)
    assert len(found) == 1, [c.describe() for c in found]
    step = found[0]
    assert step.kind == "step" and abs(step.index - night) <= 1
    assert step.run_id == ids[step.index]
    assert step.relative_change == pytest.approx(0.05, abs=0.015)
    assert step.after / step.before - 1 == pytest.approx(step.relative_change)
    assert step.p_value < 0.01 and step.slope_per_run is None


@pytest.mark.parametrize("seed", range(8))
def test_a_2pct_per_night_creep_is_named_with_the_night_it_started(seed):
    rng = np.random.default_rng(seed)
    nights, sd = 40, float(rng.uniform(0.01, 0.02))
    values = noise_series(200 + seed, nights, sd)
    values[30:] *= 1.02 ** np.arange(1, 11)  # night 30 is the first one that crept
    ids = [f"run{i:02d}" for i in range(nights)]
    found = detect(values, run_ids=ids)
    assert [c.kind for c in found] == ["creep"], [c.describe() for c in found]
    creep = found[0]
    assert abs(creep.index - 30) <= 2 and creep.run_id == ids[creep.index]
    assert creep.slope_per_run == pytest.approx(0.02, abs=0.008)
    assert creep.runs == nights - creep.index
    assert creep.relative_change == pytest.approx(1.02 ** 10 - 1, abs=0.06)
    assert "/run since run" in creep.describe()


def test_a_step_down_and_a_later_step_up_are_both_found():
    values = noise_series(7, 50, 0.01)
    values[15:] *= 0.9
    values[35:] *= 1.15
    found = detect(values)
    assert [(c.kind, c.index) for c in found] == [("step", 15), ("step", 35)]
    assert found[0].relative_change == pytest.approx(-0.1, abs=0.02)
    assert found[1].relative_change == pytest.approx(0.15, abs=0.02)


def test_steps_below_the_minimum_size_are_not_reported():
    values = noise_series(3, 40, 0.001)
    values[20:] *= 1.01  # highly significant in 0.1% noise, but only 1%
    assert detect(values) == []
    assert [c.index for c in detect(values, min_change=0.005)] == [20]


def test_one_outlier_night_is_not_a_step():
    values = noise_series(5, 40, 0.01)
    values[25] *= 1.3
    assert detect(values) == []


def test_deterministic():
    values = noise_series(11, 40, 0.02)
    values[22:] *= 1.04
    assert detect(values) == detect(values)
    assert detect(values, seed=1)[0].index == detect(values, seed=2)[0].index


@pytest.mark.parametrize("values", [[], [1.0], [1.0, 2.0], [1.0, 1.0, 5.0], [3.0] * 40,
                                    [math.nan] * 10, [0.0, -1.0, 2.0, 2.0, 2.0, 2.0]])
def test_short_constant_and_empty_series_have_no_change_point(values):
    assert detect(values) == []


def test_nan_runs_are_skipped_and_positions_refer_to_the_series_as_given():
    values = list(noise_series(9, 40, 0.01))
    for i in range(20, 40):
        values[i] *= 1.08
    for i in (3, 19, 30):
        values[i] = math.nan
    values[10] = None
    found = detect(values, run_ids=[f"r{i}" for i in range(40)])
    assert len(found) == 1 and found[0].index == 20 and found[0].run_id == "r20"


def test_a_noiseless_step_is_found():
    found = detect([2.0] * 20 + [2.2] * 20)
    assert len(found) == 1 and found[0].index == 20
    assert found[0].before == pytest.approx(2.0) and found[0].after == pytest.approx(2.2)


def test_per_run_noise_weights_the_fit():
    values = noise_series(13, 40, 0.01)
    values[20:] *= 1.05
    noise = [0.01] * 40
    noise[5] = math.nan  # unknown: takes the median
    found = detect(values, noise=noise)
    assert [c.index for c in found] == [20]
    with pytest.raises(ValueError, match="noise has 3 entries"):
        detect(values, noise=[0.01] * 3)


def test_describe_and_dict():
    point = ChangePoint("step", 20, "20261120T000000Z-abc", 1.0, 1.102, 0.102, 0.001,
                        started_at="2026-11-20T00:00:00+00:00")
    assert point.describe() == "step +10.2% at run 20261120T000000Z-abc (2026-11-20), p=0.001"
    creep = ChangePoint("creep", 30, "r30", 1.0, 1.22, 0.22, 0.001, 0.021, 10)
    assert creep.describe() == "creep +2.1%/run since run r30: +22.0% over 10 runs, p=0.001"
    assert point.to_dict()["kind"] == "step"


def test_robust_noise_ignores_a_step():
    values = noise_series(17, 200, 0.02)
    values[100:] *= 1.5
    assert robust_noise(values) == pytest.approx(0.02, rel=0.2)
    assert math.isnan(robust_noise([1.0, 2.0]))


@pytest.mark.parametrize("seed", range(5))
def test_a_staircase_of_two_steps_is_two_steps_not_a_creep(seed):
    values = noise_series(300 + seed, 32, 0.006)
    values[12:] *= 1.08
    values[20:] *= 1.10
    found = detect(values)
    assert [(c.kind, c.index) for c in found] == [("step", 12), ("step", 20)], [c.describe() for c in found]
