"""Holdout metrics (teacher, student, trivial baseline); the drift profile is written by pipeline.bundling.profile."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from functions.common import metrics as m


def holdout_metrics(task: str, holdout: pd.DataFrame, target: str, **models: Any) -> dict[str, dict[str, float]]:
    X, y = holdout.drop(columns=[target]), holdout[target]
    out: dict[str, dict[str, float]] = {}
    if task == "regression":
        truth = y.to_numpy(dtype=float)
        for name, model in models.items():
            out[f"holdout_{name}"] = m.regression_metrics(truth, np.asarray(model.predict(X), dtype=float))
        out["holdout_baseline"] = m.regression_metrics(truth, np.full(len(truth), truth.mean()))
        return out
    truth = y.to_numpy(dtype=object)
    classes = list(next(iter(models.values())).classes_)
    for name, model in models.items():
        proba = model.predict_proba(X)
        labels = np.asarray(model.classes_, dtype=object)[proba.argmax(axis=1)]
        out[f"holdout_{name}"] = m.classification_metrics(truth, labels, proba, classes)
    prior = np.array([np.mean(truth == c) for c in classes])
    labels = np.array([classes[int(prior.argmax())]] * len(truth), dtype=object)
    out["holdout_baseline"] = m.classification_metrics(truth, labels, np.tile(prior, (len(truth), 1)), classes)
    return out


def student_gap(task: str, validation: pd.DataFrame, target: str, teacher: Any, student: Any) -> float:
    """How far the student falls behind the teacher on validation rows: accuracy points for
    classification, relative RMSE for regression (0 or less: as good)."""
    X, y = validation.drop(columns=[target]), validation[target]
    if task == "regression":
        truth = y.to_numpy(dtype=float)
        teacher_rmse = m.rmse(truth, teacher.predict(X))
        return (m.rmse(truth, student.predict(X)) - teacher_rmse) / max(teacher_rmse, 1e-12)
    truth = y.to_numpy(dtype=object)
    return m.accuracy(truth, teacher.predict(X)) - m.accuracy(truth, student.predict(X))


def teacher_warnings(task: str, metrics: dict[str, dict[str, float]]) -> list[str]:
    """What a user must hear about the holdout figures: a teacher no better than the trivial baseline
    (the data carries little signal, or the teacher overfits), a student better than its teacher."""
    key = "rmse" if task == "regression" else "log_loss"
    teacher, student, base = (metrics.get(f"holdout_{who}", {}).get(key) for who in ("teacher", "student", "baseline"))
    found: list[str] = []
    if teacher is not None and base is not None and teacher >= base:
        found.append(f"the teacher is no better than the trivial baseline on the holdout ({key} {teacher:.4f} vs "
                     f"{base:.4f}): the features may not predict the target, or the data is too small")
    if teacher is not None and student is not None and student < teacher:
        found.append(f"the student beats the teacher on the holdout ({key} {student:.4f} vs {teacher:.4f}): "
                     "the teacher overfits; more data or a smaller teacher would help")
    return found
