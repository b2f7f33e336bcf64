"""The sweep report's statistics against values worked out by hand (t quantiles from a printed t table)."""

import math

import numpy as np
import pytest
from scipy import stats

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


def test_holm_by_hand():
    # p = .01, .04, .03, .005 (m = 4). Sorted .005, .01, .03, .04 times 4, 3, 2, 1: .02, .03, .06, .04;
    # running maximum: .02, .03, .06, .06. Back in the input order: .03, .06, .06, .02.
    adjusted = statistics.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert statistics.holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1
    # Bonferroni would give .04 x 4 = .16 for the largest; Holm never exceeds Bonferroni
    p = np.random.default_rng(0).uniform(0, 0.2, 30)
    assert (statistics.holm(p) <= np.minimum(1, 30 * p) + 1e-15).all() and (statistics.holm(p) >= p).all()


def test_benjamini_hochberg_against_scipy_and_by_hand():
    p = np.random.default_rng(1).uniform(0, 0.1, 25)
    np.testing.assert_allclose(statistics.benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    # by hand: .01, .04, .03, .005 sorted .005 .01 .03 .04, times m / rank = 4/1 .. 4/4: .02, .02, .04, .04;
    # running minimum from the top: .02, .02, .04, .04.
    assert statistics.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx(
        [0.02, 0.04, 0.04, 0.02], abs=1e-15)


def test_adjust_marks_significance_only_after_the_declared_correction():
    tests = [{"p": 0.01}, {"p": 0.04}, {"p": 0.03}, {"p": 0.005}, None]
    statistics.adjust(tests, "holm")
    assert [t["significant"] for t in tests[:4]] == [True, False, False, True]  # .03 .06 .06 .02
    statistics.adjust(tests, "bh")
    assert [t["significant"] for t in tests[:4]] == [True, True, True, True]  # .02 .04 .04 .02
    assert tests[1]["p_holm"] == pytest.approx(0.06) and tests[1]["p_bh"] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="correction='bonferroni'; choose one of: holm, bh"):
        statistics.adjust(tests, "bonferroni")


def test_paired_test_p_value_is_scipys_ttest_rel():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.05, 0.1, 5)
    t = statistics.paired_test(dict(enumerate(a)), dict(enumerate(b)))
    assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    # the interval excludes 0 exactly when p < 0.05
    assert (t["lo"] > 0 or t["hi"] < 0) == (t["p"] < 0.05)
    assert statistics.paired_test({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})["p"] == 0.0  # no spread, nonzero mean
