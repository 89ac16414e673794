"""Drift statistics of live values against a bundle's feature profile (numpy only: no scipy on Lambda).

The profile holds quantiles and shares, never training rows, so every statistic reads the profile:

- The profile CDF of a numeric feature: its quantiles sit at probabilities 0, 1/(m-1), ..., 1; between two
  distinct quantile values the CDF is linear, and where several quantiles share a value (a discrete
  feature) it jumps there, so an integer feature keeps its steps.
- KS: sup over x of |F_live(x) - F_profile(x)|, exact for that CDF (both one-sided limits are checked at
  every live value and every quantile). Against the raw training rows (`scipy.stats.ks_2samp`) it differs
  by at most 1/(m-1) + 1/n_train: the gap between the profile CDF and the training rows' own step CDF.
- PSI (`functions.common.psi`, ε-smoothed with ε = 1e-4, the one definition releases use too), live
  shares against the profile's. Numbers: the profile's deciles make 10 bins (fewer where deciles
  coincide), plus a null bin. Categories: one bin per profiled category, one for every category the
  profile never saw, plus a null bin.
- Null-rate change: live null rate minus the profile's (signed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..common.psi import psi

DECILE_BINS = 10
UNSEEN, NULL = "(unseen)", "(null)"


@dataclass(frozen=True)
class Comparison:
    """One distribution compared with its profile: the statistics and the bins behind the PSI."""

    psi: float
    ks: float | None
    """Numbers only: None for categories and class labels."""
    null_rate_delta: float
    count: int
    """Live values compared (nulls included)."""
    labels: tuple[str, ...]
    expected: tuple[float, ...]
    actual: tuple[float, ...]


def _knots(quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct quantile values and the CDF just below (left) and at (right) each of them."""
    q = np.asarray(quantiles, dtype=float)
    p = np.linspace(0.0, 1.0, len(q))
    values, first = np.unique(q, return_index=True)
    last = np.r_[first[1:] - 1, len(q) - 1]
    return values, p[first], p[last]


def profile_cdf(quantiles: Sequence[float], x: np.ndarray, *, left: bool = False) -> np.ndarray:
    """F_profile(x) (right-continuous), or its left limit F_profile(x-) with ``left``."""
    values, below, at = _knots(quantiles)
    x = np.asarray(x, dtype=float)
    k = np.searchsorted(values, x, side="right") - 1  # the largest knot <= x
    out = np.where(k < 0, 0.0, 1.0)
    inside = (k >= 0) & (k < len(values) - 1)
    ki = k[inside]
    span = values[ki + 1] - values[ki]
    out[inside] = at[ki] + (x[inside] - values[ki]) / span * (below[ki + 1] - at[ki])
    if left:  # at a knot the left limit is the share strictly below it
        hit = (k >= 0) & (values[np.clip(k, 0, None)] == x)
        out[hit] = below[k[hit]]
    return out


def ks_statistic(quantiles: Sequence[float], live: np.ndarray) -> float:
    """sup |F_live - F_profile| over the non-null live values (NaN when there are none)."""
    values = np.sort(np.asarray(live, dtype=float))
    if len(values) == 0:
        return float("nan")
    points = np.union1d(values, _knots(quantiles)[0])
    n = len(values)
    right = np.abs(np.searchsorted(values, points, side="right") / n - profile_cdf(quantiles, points))
    left = np.abs(np.searchsorted(values, points, side="left") / n - profile_cdf(quantiles, points, left=True))
    return float(max(right.max(), left.max()))


def decile_edges(quantiles: Sequence[float], bins: int = DECILE_BINS) -> np.ndarray:
    """The inner bin edges: the profile's quantiles at 1/bins, 2/bins, ... (distinct values only)."""
    q = np.asarray(quantiles, dtype=float)
    at = np.rint(np.linspace(0, len(q) - 1, bins + 1)[1:-1]).astype(int)
    return np.unique(q[at])


def compare_numeric(quantiles: Sequence[float], null_rate: float, live: np.ndarray, nulls: int) -> Comparison:
    """A numeric feature (or a regressor's predictions): PSI over decile bins and a null bin, KS, null rate.
    Bins are (-inf, e1], (e1, e2], ..., (em, inf), so a value on an edge falls where the CDF counts it."""
    values = np.asarray(live, dtype=float)
    edges = decile_edges(quantiles)
    cdf = np.r_[0.0, profile_cdf(quantiles, edges), 1.0]
    expected = np.r_[np.diff(cdf) * (1.0 - null_rate), null_rate]
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    actual = np.r_[counts, nulls].astype(float)
    total = len(values) + nulls
    labels = (*(f"<={e:.4g}" for e in edges), f">{edges[-1]:.4g}" if len(edges) else "all", NULL)
    return Comparison(psi=psi(expected, actual), ks=ks_statistic(quantiles, values) if len(values) else None,
                      null_rate_delta=nulls / total - null_rate if total else 0.0, count=total, labels=labels,
                      expected=tuple(expected.tolist()), actual=tuple((actual / max(total, 1)).tolist()))


def compare_categories(shares: dict[str, float], null_rate: float, live: Sequence[str], nulls: int) -> Comparison:
    """A categorical feature (or a classifier's labels): PSI over the profile's categories, one bin for
    every unseen category, and a null bin; null-rate change."""
    labels = list(shares)
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros(len(labels) + 2)
    for value in live:
        counts[index.get(value, len(labels))] += 1
    counts[-1] = nulls
    known = np.asarray([shares[label] for label in labels], dtype=float)
    known = known / known.sum() if known.sum() > 0 else known
    expected = np.r_[known * (1.0 - null_rate), 0.0, null_rate]
    total = len(live) + nulls
    return Comparison(psi=psi(expected, counts), ks=None,
                      null_rate_delta=nulls / total - null_rate if total else 0.0, count=total,
                      labels=(*labels, UNSEEN, NULL), expected=tuple(expected.tolist()),
                      actual=tuple((counts / max(total, 1)).tolist()))
