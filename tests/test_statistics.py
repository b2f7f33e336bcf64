"""The sweep report's statistics against values worked out by hand (t quantiles from a printed t table)."""

import math

import pytest

from jaxformer import statistics

# Student's t, two-sided 95% (the 0.975 quantile), from a printed table.
T975 = {2: 4.3027, 4: 2.7764}


def test_t_interval_by_hand():
    # 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (n - 1) = 7/3.
    ci = statistics.t_interval([1.0, 2.0, 4.0])
    mean, std = 7 / 3, math.sqrt(7 / 3)
    half = T975[2] * std / math.sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(mean, abs=1e-12) and ci["std"] == pytest.approx(std, 1e-12)
    assert ci["lo"] == pytest.approx(mean - half, abs=2e-4) and ci["hi"] == pytest.approx(mean + half, abs=2e-4)


def test_t_interval_five_values_and_degenerate_cases():
    # 2.0, 2.1, 2.2, 2.3, 2.4: mean 2.2, std sqrt(0.1 / 4) = 0.158114.
    ci = statistics.t_interval([2.0, 2.1, 2.2, 2.3, 2.4])
    half = T975[4] * math.sqrt(0.025) / math.sqrt(5)
    assert (ci["lo"], ci["hi"]) == pytest.approx((2.2 - half, 2.2 + half), abs=1e-4)
    assert statistics.t_interval([1.5]) is None  # one seed: no spread to estimate
    assert statistics.t_interval([1.5, None, float("nan")]) is None
    same = statistics.t_interval([1.5, 1.5, 1.5])
    assert same["lo"] == same["hi"] == 1.5


def test_paired_difference_by_hand():
    variant = {0: 2.00, 1: 2.50, 2: 3.10, 7: 1.0}  # seed 7 has no reference: left out
    reference = {0: 1.90, 1: 2.45, 2: 3.00, 3: 9.0}
    d = statistics.paired_difference(variant, reference)
    # differences 0.10, 0.05, 0.10: mean 0.25/3; deviations 1/60, -1/30, 1/60 -> var (1+4+1)/3600/2 = 1/1200.
    mean, std = 0.25 / 3, math.sqrt(1 / 1200)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(mean, abs=1e-12) and d["std"] == pytest.approx(std, rel=1e-9)
    half = T975[2] * std / math.sqrt(3)
    assert (d["lo"], d["hi"]) == pytest.approx((mean - half, mean + half), abs=1e-4)
    assert d["lo"] > 0 and not d["tie"]  # consistently worse: significant although the means are close


def test_paired_difference_tie_and_too_few_seeds():
    d = statistics.paired_difference({0: 2.1, 1: 1.9, 2: 2.05}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert d["lo"] < 0 < d["hi"] and d["tie"]
    assert statistics.paired_difference({0: 2.1, 1: 2.0}, {0: 2.0}) is None
