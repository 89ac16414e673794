"""Teachers, students and distillation on soft labels.

Distillation trains the student with the teacher's class probabilities as targets. For learners
that minimise log loss this is exact with scikit-learn's own ``fit``: each row is repeated once
per class with ``sample_weight`` = the teacher's probability of that class, so the student's loss
is the cross-entropy against the soft label.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

TEACHERS = ("hgb", "xgboost", "mlp")
STUDENTS = ("hgb", "logreg", "tree", "mlp")
AUTO_STUDENTS = ("logreg", "mlp", "hgb")  # smallest and fastest first


def with_preprocessing(frame: pd.DataFrame, scale: bool, estimator: Any) -> Pipeline:
    """Numeric-only tables get a plain (tensor-input) pipeline; categories add a ColumnTransformer."""
    from sklearn.impute import SimpleImputer

    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric]
    scaling = [SimpleImputer(), StandardScaler()] if scale else []
    if not categorical:
        return make_pipeline(*scaling, estimator)
    numeric_steps: Any = make_pipeline(*scaling) if scaling else "passthrough"
    pre = ColumnTransformer([("num", numeric_steps, numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)])
    return make_pipeline(pre, estimator)


def gpu_available() -> bool:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def make_teacher(kind: str, task: str, X: pd.DataFrame, seed: int, params: dict[str, Any]) -> tuple[Any, str]:
    """A large model. XGBoost runs on the GPU when there is one; the others run on the CPU."""
    classification = task == "classification"
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        est = cls(max_iter=params.get("max_iter", 400), max_leaf_nodes=params.get("max_leaf_nodes", 63),
                  learning_rate=params.get("learning_rate", 0.05), early_stopping=False, random_state=seed)
        return with_preprocessing(X, False, est), "cpu"
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if classification else MLPRegressor  # type: ignore[assignment]
        est = cls(hidden_layer_sizes=params.get("hidden", (256, 128)), max_iter=params.get("max_iter", 300),
                  early_stopping=True, random_state=seed)
        return with_preprocessing(X, True, est), "cpu"
    if kind == "xgboost":
        try:
            import xgboost as xgb
        except ImportError:
            raise SystemExit("the xgboost teacher needs xgboost: pip install xgboost (the SageMaker XGBoost "
                             "image has it)") from None

        device = "cuda" if gpu_available() else "cpu"
        cls = xgb.XGBClassifier if classification else xgb.XGBRegressor
        est = cls(n_estimators=params.get("max_iter", 600), max_depth=params.get("max_depth", 8),
                  learning_rate=params.get("learning_rate", 0.05), tree_method="hist", device=device,
                  random_state=seed)
        return with_preprocessing(X, False, est), device
    raise SystemExit(f"unknown teacher {kind!r}: choose one of {TEACHERS}")


def make_student(kind: str, task: str, X: pd.DataFrame, seed: int, params: dict[str, Any]) -> Pipeline:
    """A small, fast scikit-learn model that converts to ONNX."""
    classification = task == "classification"
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        est: Any = cls(max_iter=params.get("student_iter", 60), max_depth=params.get("student_depth", 4),
                       learning_rate=0.1, early_stopping=False, random_state=seed)
        return with_preprocessing(X, False, est)
    if kind == "tree":
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        cls = DecisionTreeClassifier if classification else DecisionTreeRegressor  # type: ignore[assignment]
        est = cls(max_depth=params.get("student_depth", 6), min_samples_leaf=5, random_state=seed)
        return with_preprocessing(X, False, est)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression, Ridge

        est = LogisticRegression(max_iter=2000) if classification else Ridge()
        return with_preprocessing(X, True, est)
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if classification else MLPRegressor  # type: ignore[assignment]
        est = cls(hidden_layer_sizes=(32,), max_iter=200, early_stopping=True, random_state=seed)
        return with_preprocessing(X, True, est)
    raise SystemExit(f"unknown student {kind!r}: choose one of {STUDENTS}")


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Teacher probabilities at temperature T (T > 1 spreads mass to the runner-up classes)."""
    if temperature == 1.0:
        return proba
    logits = np.log(np.clip(proba, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def augment(X: pd.DataFrame, copies: int, scale: float, seed: int) -> pd.DataFrame:
    """Rows near the training data (numeric features jittered by ``scale`` standard deviations,
    categories resampled from their column), for the teacher to label."""
    if copies <= 0:
        return X.iloc[:0]
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(copies):
        fake = X.copy()
        for name in X.columns:
            col = X[name]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                std = float(np.nanstd(col.to_numpy(dtype=float))) or 1.0
                fake[name] = col + rng.normal(0.0, scale * std, len(col))
            else:
                fake[name] = rng.choice(col.dropna().to_numpy(), len(col)) if col.notna().any() else col
        parts.append(fake)
    return pd.concat(parts, ignore_index=True)


def distil(teacher: Any, student: Pipeline, X: pd.DataFrame, task: str, *, temperature: float = 1.0,
           augment_copies: int = 0, augment_scale: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Fit ``student`` on the teacher's soft labels over X (plus augmented rows)."""
    started = time.perf_counter()
    X_all = pd.concat([X, augment(X, augment_copies, augment_scale, seed)], ignore_index=True)
    if task == "regression":
        student.fit(X_all, teacher.predict(X_all))  # the teacher's predictions are the soft targets
        return {"rows": len(X_all), "seconds": time.perf_counter() - started}
    classes = teacher.classes_
    soft = soften(teacher.predict_proba(X_all), temperature)
    keep = soft > 1e-4  # rows of a class the teacher rules out add nothing
    rows = np.concatenate([np.flatnonzero(keep[:, j]) for j in range(len(classes))])
    labels = np.concatenate([np.full(int(keep[:, j].sum()), j) for j in range(len(classes))])
    weights = soft[rows, labels]
    # Preprocessing learns from the rows as they are (not from the per-class copies); only the
    # final estimator sees the weighted copies.
    features = student[:-1].fit_transform(X_all) if len(student.steps) > 1 else X_all
    student.steps[-1][1].fit(features[rows] if isinstance(features, np.ndarray) else features.iloc[rows],
                             np.asarray(classes)[labels], sample_weight=weights)
    return {"rows": len(X_all), "weighted_rows": len(rows), "seconds": time.perf_counter() - started}
