"""Paired statistics between two trainers scored on the same cases, as nnU-Net Revisited reports them.

Two trainers validated on the same cross-validation splits give one score per case each; the comparison is
over the per-case differences (other minus reference): their mean, a 95% percentile-bootstrap interval over
cases and a two-sided Wilcoxon signed-rank p-value. Pairing by case removes the case-to-case spread (some
cases are hard for every network), which an unpaired comparison of two means would count as noise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

#: at most this many resampled case indices are held at once (the bootstrap runs in chunks of resamples)
BOOTSTRAP_CHUNK_ELEMENTS = 1_000_000
#: how many missing case ids an error names before it says "and N more"
SHOWN_CASES = 5


@dataclass(frozen=True)
class PairedDifference:
    """``other - reference`` over the cases where both have a score.

    ``ci95`` is (nan, nan) and ``wilcoxon_p`` None with fewer than 2 cases: one case gives no interval (its
    bootstrap would be the single value, which reads as certainty). ``mean`` is nan with no case at all.
    """

    mean: float
    ci95: tuple[float, float]
    wilcoxon_p: float | None
    cases: int


def name_cases(cases, shown: int = SHOWN_CASES) -> str:
    """A few case ids for an error message, e.g. ``'case_01', 'case_02' and 3 more``."""
    cases = sorted(cases)
    text = ", ".join(repr(case) for case in cases[:shown])
    return text + (f" and {len(cases) - shown} more" if len(cases) > shown else "")


def mean_ignoring_nan(values) -> float:
    """The mean of ``values`` with NaN and None left out; nan when none is left (and no warning)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def case_mean_dice(case_dice: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per case, the mean Dice over its classes, classes with NaN (absent in reference and prediction) left out;
    nan for a case where every class is NaN."""
    return {case: mean_ignoring_nan(per_class.values()) for case, per_class in case_dice.items()}


def class_dice(case_dice: Mapping[str, Mapping[str, float]], class_name: str) -> dict[str, float]:
    """Per case, the Dice of one class; nan where a case has no score for it."""
    values = {case: per_class.get(class_name) for case, per_class in case_dice.items()}
    return {case: math.nan if value is None else float(value) for case, value in values.items()}


def bootstrap_mean_ci(differences: np.ndarray, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the mean of ``differences`` resampled with replacement ``resamples`` times.

    The indices come from ``numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))``; drawing them
    in chunks of rows gives the same indices (the generator's stream runs on) in bounded memory.
    """
    n = len(differences)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def wilcoxon_p_value(differences: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy's defaults: zero differences are
    dropped); 1.0 when every difference is zero (no evidence of any difference), None with fewer than 2."""
    if len(differences) < 2:
        return None
    if not np.any(differences):
        return 1.0  # scipy has no nonzero difference to rank and warns or raises here
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():  # ties and zeros switch scipy to its normal approximation, with a warning
        warnings.simplefilter("ignore")
        return float(wilcoxon(differences).pvalue)


def paired_difference(reference: Mapping[str, float], other: Mapping[str, float], resamples: int = 10000,
                      seed: int = 0) -> PairedDifference:
    """Mean, 95% bootstrap CI and Wilcoxon p-value of ``other - reference`` over cases (keyed by case id).

    Both must score the same cases. Cases where either value is NaN are left out and not counted. Cases are
    taken in sorted order of their ids, so the result does not depend on the mappings' order.
    """
    only_reference = set(reference) - set(other)
    only_other = set(other) - set(reference)
    if only_reference or only_other:
        sides = [f"the reference lacks {name_cases(only_other)}" if only_other else "",
                 f"the other lacks {name_cases(only_reference)}" if only_reference else ""]
        raise ValueError(f"paired scores need the same cases on both sides: {'; '.join(s for s in sides if s)}; "
                         f"score both on the same cross-validation splits")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: the bootstrap needs at least 1 resample (10000 is usual)")
    pairs = [(float(reference[case]), float(other[case])) for case in sorted(reference)]
    differences = np.array([b - a for a, b in pairs if not (math.isnan(a) or math.isnan(b))], dtype=float)
    cases = len(differences)
    mean = float(differences.mean()) if cases else math.nan
    ci95 = bootstrap_mean_ci(differences, resamples, seed) if cases >= 2 else (math.nan, math.nan)
    return PairedDifference(mean=mean, ci95=ci95, wilcoxon_p=wilcoxon_p_value(differences), cases=cases)
