"""Model-quality metrics in numpy alone (the validation Lambda carries no scikit-learn).

Each matches scikit-learn's definition; the tests compare them to 1e-9 on random data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EPS = np.finfo(np.float64).eps


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred (F1 = 0 where
    precision and recall are both undefined), as scikit-learn's f1_score(average="macro")."""
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    classes = _labels(y_true, y_pred) if labels is None else list(labels)
    scores = []
    for c in classes:
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        fp = float(np.sum((y_true != c) & (y_pred == c)))
        fn = float(np.sum((y_true == c) & (y_pred != c)))
        denominator = 2 * tp + fp + fn
        scores.append(0.0 if denominator == 0 else 2 * tp / denominator)
    return float(np.mean(scores))


def roc_auc(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float:
    """Binary: AUC of the positive (second) class. Multiclass: macro one-vs-rest. Ties count half."""
    y_true = np.asarray(y_true, dtype=object)
    proba = np.asarray(proba, dtype=np.float64)
    if len(classes) == 2:
        return _binary_auc(y_true == classes[1], proba[:, 1])
    return float(np.mean([_binary_auc(y_true == c, proba[:, j]) for j, c in enumerate(classes)]))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")  # undefined with one class present
    ranks = _average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (Mann-Whitney U)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    ranks = np.empty(len(values), dtype=np.float64)
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def log_loss(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped to [eps, 1 - eps]
    (scikit-learn >= 1.5: clipped, not renormalised)."""
    proba = np.clip(np.asarray(proba, dtype=np.float64), EPS, 1 - EPS)
    index = {c: j for j, c in enumerate(classes)}
    cols = np.array([index[v] for v in np.asarray(y_true, dtype=object).tolist()])
    return float(-np.mean(np.log(proba[np.arange(len(cols)), cols])))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    residual = float(np.sum((y_true - y_pred) ** 2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0  # scikit-learn's convention for a constant target
    return 1 - residual / total


def classification_metrics(y_true: np.ndarray, labels: np.ndarray, proba: np.ndarray,
                           classes: Sequence[Any]) -> dict[str, float]:
    return {"accuracy": accuracy(y_true, labels), "macro_f1": macro_f1(y_true, labels),
            "roc_auc": roc_auc(y_true, proba, classes), "log_loss": log_loss(y_true, proba, classes)}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"rmse": rmse(y_true, y_pred), "mae": mae(y_true, y_pred), "r2": r2(y_true, y_pred)}


# Larger is better except for these.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})


def _labels(*arrays: np.ndarray) -> list[Any]:
    seen = {v for a in arrays for v in a.tolist()}
    return sorted(seen, key=lambda v: (str(type(v)), v))
