"""Real-shaped tabular data made here: the shapes public data sets arrive in, not scikit-learn's tidy ones.

Every frame has mixed types, missing strings and numbers, an ID column (unique per row), a date
column (near-unique strings), odd category values, and one of three targets: string class labels,
integer classes stored as floats (as pandas writes a column that once held NaN), or a regression.
Deterministic from the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ["basic", "plus", "pro", "team"]
CITIES = ["Lyon", "Oslo", "Porto", "Turku", "Graz"]
NUMERIC = ["age", "income", "visits"]
CATEGORICAL = ["plan", "city"]
ID_COLUMN, DATE_COLUMN = "customer_id", "signup_date"


def features(n: int, seed: int, missing: float = 0.05) -> pd.DataFrame:
    """The feature columns: three numbers and two categories (each with ``missing`` of its cells
    empty), an ID and a date."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        ID_COLUMN: [f"C{seed:02d}-{i:06d}" for i in range(n)],
        DATE_COLUMN: (pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
                      + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
        "age": rng.integers(18, 90, n).astype(float),
        "income": rng.lognormal(10.5, 0.5, n).round(2),
        "visits": rng.poisson(4, n).astype(float),
        "plan": rng.choice(PLANS, n, p=[0.4, 0.3, 0.2, 0.1]).astype(object),
        "city": rng.choice(CITIES, n).astype(object),
    })
    for name in [*NUMERIC, *CATEGORICAL]:
        frame.loc[rng.random(n) < missing, name] = np.nan
    return frame


def _signal(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    age = frame["age"].fillna(50.0)
    income = np.log(frame["income"].fillna(36_000.0))
    plan = frame["plan"].map({"basic": 0.0, "plus": 0.6, "pro": 1.2, "team": 1.5}).fillna(0.3)
    return np.asarray((age - 50) / 15 + (income - 10.5) * 1.5 + plan + 0.1 * frame["visits"].fillna(4.0)
                      + rng.normal(0, 0.5, len(frame)))


def string_labels(n: int, seed: int) -> pd.DataFrame:
    """Three string classes: 'low', 'mid', 'high'."""
    frame = features(n, seed)
    score = _signal(frame, np.random.default_rng(seed + 1))
    frame["segment"] = np.where(score < -0.5, "low", np.where(score < 1.0, "mid", "high"))
    return frame


def float_coded_classes(n: int, seed: int) -> pd.DataFrame:
    """Integer quality grades 4..7 in a float column (``6.0`` in the CSV), as pandas writes them."""
    frame = features(n, seed)
    score = _signal(frame, np.random.default_rng(seed + 2))
    frame["quality"] = np.clip(np.round(score + 5.0), 4, 7).astype(float)
    return frame


def regression(n: int, seed: int) -> pd.DataFrame:
    """A continuous target (monthly spend)."""
    frame = features(n, seed)
    frame["spend"] = (_signal(frame, np.random.default_rng(seed + 3)) * 40 + 200).round(2)
    return frame


def na_csv(frame: pd.DataFrame, marker: str = "NA") -> bytes:
    """The frame as R or pandas (``na_rep``) writes it: missing cells as ``marker``."""
    return frame.to_csv(index=False, na_rep=marker).encode()
