"""The population stability index, one definition for every comparison the project makes: a live feature
or prediction distribution against a bundle's profile (`functions.drift`), and a canary's predictions
against the champion's during a release (`functions.release`).

PSI = sum over bins of (a - e) * ln(a / e), live share a against reference share e, over the same bins.
Each side is normalized to shares first (counts are accepted), then ε-smoothed: each share s of a k-bin
distribution becomes (s + ε) / (1 + k ε) with ε = 1e-4, so the smoothed shares still sum to 1 and an
empty bin on either side costs a bounded amount instead of an infinite one (a bin holding 10% of the
reference and none of the live values adds 0.1 * ln(0.1 / 1e-4) ≈ 0.69).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EPSILON = 1e-4


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        epsilon: float = EPSILON) -> float:
    """PSI of ``actual`` against ``expected``, two distributions over the same bins (shares or counts)."""
    e, a = _smoothed(expected, epsilon), _smoothed(actual, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_by_name(expected: Mapping[str, float], actual: Mapping[str, float], epsilon: float = EPSILON) -> float:
    """PSI over named bins (counts per class or bin): a name only one side holds is an empty bin on the
    other. With nothing counted on either side there is nothing to compare: 0."""
    if not sum(expected.values()) or not sum(actual.values()):
        return 0.0
    names = sorted(set(expected) | set(actual))
    return psi([expected.get(n, 0.0) for n in names], [actual.get(n, 0.0) for n in names], epsilon)


def _smoothed(shares: Sequence[float] | np.ndarray, epsilon: float) -> np.ndarray:
    values = np.asarray(shares, dtype=float)
    total = values.sum()
    values = values / total if total > 0 else np.zeros_like(values)
    return (values + epsilon) / (1.0 + len(values) * epsilon)
