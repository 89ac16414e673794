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
MISSING_CATEGORY = "(missing)"  # what a null category is read as: a category of its own
EARLY_STOPPING_ROUNDS = 20  # boosting stops when the validation loss has not improved for this many rounds


def student_label(kind: str, task: str) -> str:
    """The name a student is reported under: the linear student is a Ridge for regression."""
    return "ridge" if kind == "logreg" and task == "regression" else kind


def teacher_size(rows: int) -> dict[str, Any]:
    """The default boosted teacher sized to the data: fewer, larger leaves and more regularisation on
    small tables, where 63 leaves overfit (a few hundred rows per class)."""
    return {"max_leaf_nodes": int(np.clip(rows // 60, 8, 63)), "min_samples_leaf": int(np.clip(rows // 100, 10, 40)),
            "l2_regularization": 1.0 if rows < 5000 else 0.0}


def with_preprocessing(frame: pd.DataFrame, scale: bool, estimator: Any) -> Pipeline:
    """Numeric-only tables get a plain (tensor-input) pipeline; categories add a ColumnTransformer."""
    from sklearn.impute import SimpleImputer

    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    flags = [c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric and c not in flags]
    scaling = [SimpleImputer(), StandardScaler()] if scale else []
    if not categorical and not flags:
        return make_pipeline(*scaling, estimator)
    numeric_steps: Any = make_pipeline(*scaling) if scaling else "passthrough"
    encode = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    # A null category is a category of its own, so a row with one is served, not refused.
    parts: list[tuple[str, Any, list[str]]] = [("num", numeric_steps, numeric)]
    if categorical:
        parts.append(("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
                                           encode), categorical))
    if flags:
        parts.append(("flag", OneHotEncoder(handle_unknown="ignore", sparse_output=False), flags))
    return make_pipeline(ColumnTransformer(parts), estimator)


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
        size = {**teacher_size(len(X)), **{k: params[k] for k in ("max_leaf_nodes",) if k in params}}
        # Early stopping on the validation split when fit_teacher is given one (else on 10% of the rows).
        est = cls(max_iter=params.get("max_iter", 400), learning_rate=params.get("learning_rate", 0.05),
                  early_stopping=True, n_iter_no_change=EARLY_STOPPING_ROUNDS, random_state=seed, **size)
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


def fit_teacher(teacher: Pipeline, X: pd.DataFrame, y: pd.Series, X_val: pd.DataFrame | None = None,
                y_val: pd.Series | None = None) -> dict[str, Any]:
    """Fit the teacher; a boosted one stops early on the validation split when there is one.
    Returns how many rounds it kept."""
    final = teacher.steps[-1][1]
    if X_val is None or y_val is None or not hasattr(final, "n_iter_no_change"):
        teacher.fit(X, y)
    else:
        pre = teacher[:-1]
        features = pre.fit_transform(X, y) if len(teacher.steps) > 1 else X
        held = pre.transform(X_val) if len(teacher.steps) > 1 else X_val
        final.fit(features, y, X_val=held, y_val=y_val)
    rounds = getattr(final, "n_iter_", None)
    return {} if rounds is None else {"rounds": int(np.max(rounds)), "max_rounds": int(final.max_iter),
                                      "stopped_early": bool(np.max(rounds) < final.max_iter)}


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
