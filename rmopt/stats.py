"""Standard errors: every number rmopt reports carries one (pure functions, no I/O).

A curve point's standard error is over prompts: the per-prompt value (best-of-n: the per-prompt
estimator; PPO: the mean over that prompt's answers), std with ddof=1 over prompts, divided by
sqrt(P). Across replicates the same formula runs over the replicates' values. A 95% interval is
+-1.96 SE over prompts (hundreds of them); over K replicates it is +-t SE with t the 97.5% quantile of
Student's t with K - 1 degrees of freedom (4.30 for K = 3), since that SE itself rests on K values.
A difference is a finding only when its interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.96
# 97.5% quantiles of Student's t by degrees of freedom (1..30); beyond, the normal's 1.96 is within 2%
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The multiplier of a 95% interval from a standard error with ``df`` degrees of freedom."""
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else Z95


def standard_error(values, axis: int = 0):
    """Standard error of the mean along ``axis``: std (ddof=1) / sqrt(n); NaN where n < 2."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[axis] if x.ndim else 1
    if n < 2:
        out = np.full(np.delete(x.shape, axis) if x.ndim else (), np.nan)
        return float(out) if out.ndim == 0 else out
    se = x.std(axis=axis, ddof=1) / math.sqrt(n)
    return float(se) if np.ndim(se) == 0 else se


def group_means(values: Sequence[float], groups: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The mean of ``values`` within each group (e.g. a prompt's answers): (groups in first-seen order, means)."""
    totals: dict[int, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        totals.setdefault(int(g), []).append(float(v))
    return list(totals), np.array([math.fsum(v) / len(v) for v in totals.values()])


def mean_and_se(values) -> tuple[float, float]:
    """(mean, standard error) of per-prompt (or per-replicate) values."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), standard_error(x)


def ratio_and_se(numerator, denominator) -> tuple[float, float]:
    """A ratio of two means over the same prompts, mean(a) / mean(b), and its delta-method standard error:
    SE of the per-prompt residuals a - r b over |mean(b)| (paired, so the two means' covariance counts)."""
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    mb = b.mean()
    if mb == 0:
        return math.nan, math.nan
    r = float(a.mean() / mb)
    return r, standard_error(a - r * b) / abs(float(mb))


def interval(mean: float, se: float, z: float = Z95) -> tuple[float, float]:
    """The +-z SE interval around ``mean`` (95% by default)."""
    return mean - z * se, mean + z * se


def excludes_zero(mean: float, se: float, z: float = Z95) -> bool:
    """Whether the +-z SE interval of a difference lies wholly above or below zero (NaN SE: no)."""
    lo, hi = interval(mean, se, z)
    return bool(lo > 0 or hi < 0)
