"""Paired statistics of `nnunet-mamba compare` against direct numpy and scipy computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunet_mamba.comparison.statistics import case_mean_dice, paired_difference

RNG = np.random.default_rng(7)
CASES = [f"case_{i:03d}" for i in range(40)]
REFERENCE = {case: float(v) for case, v in zip(CASES, RNG.uniform(0.6, 0.9, len(CASES)))}
OTHER = {case: REFERENCE[case] + float(d) for case, d in zip(CASES, RNG.normal(0.02, 0.03, len(CASES)))}


def direct_bootstrap(differences: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    indices = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    low, high = np.percentile(differences[indices].mean(axis=1), [2.5, 97.5])
    return low, high


def test_mean_ci_and_p_equal_a_direct_computation():
    result = paired_difference(REFERENCE, OTHER, resamples=2000, seed=3)
    differences = np.array([OTHER[case] - REFERENCE[case] for case in sorted(CASES)])
    assert result.cases == 40
    assert result.mean == pytest.approx(differences.mean(), abs=1e-15)
    assert result.ci95 == pytest.approx(direct_bootstrap(differences, 2000, 3), abs=1e-15)
    assert result.ci95[0] < result.mean < result.ci95[1]
    assert result.wilcoxon_p == pytest.approx(wilcoxon(differences).pvalue, rel=1e-12)
    # another seed resamples other cases
    assert paired_difference(REFERENCE, OTHER, resamples=2000, seed=4).ci95 != result.ci95


def test_bootstrap_in_chunks_draws_the_same_indices(monkeypatch):
    import nnunet_mamba.comparison.statistics as statistics

    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_ELEMENTS", 7 * 40 + 3)  # chunks of 7 resamples
    differences = np.array([OTHER[case] - REFERENCE[case] for case in sorted(CASES)])
    assert paired_difference(REFERENCE, OTHER, resamples=500, seed=1).ci95 == pytest.approx(
        direct_bootstrap(differences, 500, 1), abs=1e-15)


def test_order_of_the_mappings_does_not_matter():
    shuffled = dict(reversed(list(OTHER.items())))
    assert paired_difference(REFERENCE, shuffled, resamples=300) == paired_difference(REFERENCE, OTHER, resamples=300)


def test_all_zero_differences_give_p_one():
    result = paired_difference(REFERENCE, dict(REFERENCE), resamples=100)
    assert result.wilcoxon_p == 1.0
    assert result.mean == 0.0 and result.ci95 == (0.0, 0.0)


def test_nan_cases_are_left_out():
    other = dict(OTHER, case_000=math.nan)
    reference = dict(REFERENCE, case_001=math.nan)
    result = paired_difference(reference, other, resamples=500, seed=2)
    kept = [case for case in sorted(CASES) if case not in ("case_000", "case_001")]
    differences = np.array([OTHER[case] - REFERENCE[case] for case in kept])
    assert result.cases == 38
    assert result.mean == pytest.approx(differences.mean(), abs=1e-15)
    assert result.ci95 == pytest.approx(direct_bootstrap(differences, 500, 2), abs=1e-15)
    assert result.wilcoxon_p == pytest.approx(wilcoxon(differences).pvalue, rel=1e-12)


def test_fewer_than_two_cases_give_no_interval_and_no_p():
    one = paired_difference({"a": 0.5, "b": math.nan}, {"a": 0.7, "b": 0.1})
    assert one.cases == 1 and one.mean == pytest.approx(0.2)
    assert all(math.isnan(v) for v in one.ci95) and one.wilcoxon_p is None
    none = paired_difference({"a": math.nan}, {"a": 0.7})
    assert none.cases == 0 and math.isnan(none.mean) and none.wilcoxon_p is None


def test_mismatched_cases_are_named():
    other = {case: v for case, v in OTHER.items() if case not in ("case_003", "case_017")}
    other["extra_case"] = 0.5
    with pytest.raises(ValueError, match=r"reference lacks 'extra_case'.*other lacks 'case_003', 'case_017'"):
        paired_difference(REFERENCE, other)
    many = {case: v for case, v in OTHER.items() if case >= "case_010"}
    with pytest.raises(ValueError, match=r"'case_000', .*'case_004' and 5 more"):
        paired_difference(REFERENCE, many)


def test_case_mean_dice_ignores_nan_classes():
    means = case_mean_dice({"a": {"liver": 0.9, "tumour": math.nan}, "b": {"liver": 0.8, "tumour": 0.4},
                            "c": {"liver": math.nan, "tumour": math.nan}})
    assert means["a"] == pytest.approx(0.9) and means["b"] == pytest.approx(0.6) and math.isnan(means["c"])
