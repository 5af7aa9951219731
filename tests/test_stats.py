"""McNemar and Wilson intervals against hand-computed values and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from fashionlab import stats


def correctness(both: int, only_a: int, only_b: int, neither: int):
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    return a, b


def test_mcnemar_by_hand():
    # b = 12, c = 3: p = 2 * sum_{k<=3} C(15, k) / 2^15 = 2 * 576 / 32768
    t = stats.mcnemar(*correctness(50, 12, 3, 35))
    assert (t.only_a, t.only_b) == (12, 3)
    assert t.p_value == pytest.approx(1152 / 32768, abs=1e-12)
    # b = 0, c = 5: p = 2 / 2^5
    assert stats.mcnemar(*correctness(10, 0, 5, 0)).p_value == pytest.approx(1 / 16)


def test_mcnemar_edge_cases():
    assert stats.mcnemar(*correctness(5, 0, 0, 5)).p_value == 1.0   # no discordant pairs
    assert stats.mcnemar(*correctness(5, 4, 4, 5)).p_value == 1.0   # capped at 1
    with pytest.raises(ValueError):
        stats.mcnemar(np.ones(3, bool), np.ones(4, bool))



def test_a_p_value_below_floats_range_is_not_printed_as_zero():
    far = stats.mcnemar(*correctness(0, 2000, 0, 0))  # 2000 discordant pairs, all one way
    assert far.p_value == 0.0 and far.p_text == "< 1e-300"
    assert stats.mcnemar(*correctness(50, 12, 3, 35)).p_text == "0.0352"


@pytest.mark.parametrize("table", [(50, 12, 3, 35), (9000, 40, 61, 899), (8700, 310, 490, 500),
                                   (1, 1, 0, 0), (0, 7, 9, 3)])
def test_mcnemar_matches_statsmodels(table):
    both, only_a, only_b, neither = table
    expected = sm_mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue
    assert stats.mcnemar(*correctness(*table)).p_value == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("k,n", [(9123, 10000), (0, 20), (20, 20), (7, 10), (1, 1), (500, 999)])
def test_wilson_matches_statsmodels(k, n):
    low, high = stats.wilson_interval(k, n)
    ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert low == pytest.approx(ref_low, abs=1e-9)
    assert high == pytest.approx(ref_high, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_by_hand():
    # p = 0.5, n = 100, z = 1.96: centre 0.5, half = 1.96 * sqrt(0.0025 + 0.000096) / 1.0384
    # = 0.09617, so the interval is 0.1923 wide (the normal approximation gives 0.1960)
    low, high = stats.wilson_interval(50, 100)
    half = stats.Z95 * math.sqrt(0.25 / 100 + stats.Z95**2 / 40000) / (1 + stats.Z95**2 / 100)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half))
    assert high - low == pytest.approx(0.1923, abs=1e-4)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_mean_std():
    assert stats.mean_std([0.80, 0.82, 0.84]) == pytest.approx((0.82, 0.02))
    mean, std = stats.mean_std([0.9])
    assert mean == 0.9 and math.isnan(std)


def test_per_class_accuracy_of_a_class_without_images_is_undefined():
    from fashionlab import metrics

    cm = metrics.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 4)
    acc = metrics.per_class_accuracy(cm)
    assert acc[:3].tolist() == [0.5, 1.0, 0.0] and np.isnan(acc[3])
