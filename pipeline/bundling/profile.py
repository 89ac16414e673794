"""The bundle's feature profile: what drift compares live traffic with.

Numbers keep their quantiles at every percent (the CDF, for KS and PSI), categories their shares, every
feature its null rate; the prediction distribution is measured on rows the model never saw (the holdout).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from functions.common.manifest import (
    PROFILE_QUANTILES,
    CategoryProfile,
    Feature,
    FeatureProfile,
    NumericProfile,
    PredictionProfile,
)

SHARE_DIGITS = 6


def feature_profile(estimator: Any, features: list[Feature], data: pd.DataFrame,
                    holdout: pd.DataFrame | None = None, *, task: str) -> FeatureProfile:
    """Profile each feature on ``data`` (training rows) and the model's answers on ``holdout``
    (``data`` when there is none). Both frames hold the features; other columns are ignored."""
    return profile_features(features, data).model_copy(update={
        "prediction": _predictions(estimator, features, data if holdout is None else holdout, task)})


def profile_features(features: list[Feature], data: pd.DataFrame) -> FeatureProfile:
    """The profile of the features alone (no prediction distribution)."""
    return FeatureProfile(rows=len(data), features={f.name: _feature(f, data[f.name]) for f in features})


def quantiles(values: np.ndarray, points: int = PROFILE_QUANTILES) -> list[float]:
    return [float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, points))]


def _feature(feature: Feature, column: pd.Series) -> NumericProfile | CategoryProfile:
    present = column.dropna()
    null_rate = round(1.0 - len(present) / max(len(column), 1), SHARE_DIGITS)
    if feature.type == "number":
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            values = np.zeros(1)  # an all-null column: a degenerate profile rather than none
        return NumericProfile(count=max(len(values), 1), null_rate=null_rate, quantiles=quantiles(values))
    shares = present.astype(str).value_counts(normalize=True) if len(present) else pd.Series({"": 1.0})
    return CategoryProfile(count=max(len(present), 1), null_rate=null_rate,
                           shares={str(k): round(float(v), SHARE_DIGITS) for k, v in shares.items()})


def _predictions(estimator: Any, features: list[Feature], rows: pd.DataFrame, task: str) -> PredictionProfile | None:
    columns = [str(n) for n in getattr(estimator, "feature_names_in_", [f.name for f in features])]
    if len(rows) == 0 or any(c not in rows.columns for c in columns):
        return None
    X = rows[columns]
    if task == "regression":
        return PredictionProfile(count=len(X), score_quantiles=quantiles(np.asarray(estimator.predict(X), dtype=float)))
    proba = np.asarray(estimator.predict_proba(X), dtype=float)
    labels = pd.Series(np.asarray(estimator.classes_, dtype=object)[proba.argmax(axis=1)]).astype(str)
    return PredictionProfile(count=len(X), score_quantiles=quantiles(proba.max(axis=1)),
                             class_shares={str(k): round(float(v), SHARE_DIGITS)
                                           for k, v in labels.value_counts(normalize=True).items()})
