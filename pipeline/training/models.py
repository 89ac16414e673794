"""Teachers, students and distillation on soft labels.

Distillation trains the student with the teacher's class probabilities as targets, over the
training rows and many synthetic rows near them (MUNGE) that the teacher labels: the student
learns the teacher's function where the data lives, not only at the training points. For learners
that minimise log loss this is exact with scikit-learn's own ``fit``: each row is repeated once
per class with ``sample_weight`` = the teacher's probability of that class, so the student's loss
is the cross-entropy against the soft label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
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
TEMPERATURES = (1.0, 2.0)  # tried on the validation split (higher ones lost on every set measured)
LABEL_WEIGHTS = (0.0, 0.5)  # the training rows' own labels mixed into their soft targets
MAX_SYNTHETIC_ROWS = 200_000  # teacher-labelled synthetic rows at most (large tables need few)
MUNGE_SOURCE_ROWS = 50_000  # rows the synthetic ones start from (the neighbour search grows with them)
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


def _numeric(col: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col))


def _neighbour_space(X: pd.DataFrame) -> np.ndarray:
    """Rows as points for the nearest-neighbour search: numbers standardised (a null at the median),
    categories one-hot at 1/sqrt(2), so that a different category counts as one standard deviation."""
    parts = []
    for name in X.columns:
        col = X[name]
        if _numeric(col):
            values = col.to_numpy(dtype=float)
            filled = np.where(np.isnan(values), np.nanmedian(values) if np.isfinite(values).any() else 0.0, values)
            parts.append(((filled - filled.mean()) / (filled.std() or 1.0))[:, None])
        else:
            codes = pd.factorize(col.astype(object).where(col.notna(), MISSING_CATEGORY))[0]
            parts.append(np.eye(codes.max() + 1)[codes] / np.sqrt(2.0))
    return np.hstack(parts) if parts else np.zeros((len(X), 1))


def munge(X: pd.DataFrame, rows: int, *, p: float = 0.5, s: float = 1.0, seed: int = 0,
          max_source_rows: int = MUNGE_SOURCE_ROWS) -> pd.DataFrame:
    """``rows`` synthetic rows near the data, for the teacher to label (MUNGE, Bucila et al. 2006).

    Each synthetic row starts from a training row; each of its features, with probability ``p``,
    takes the value of the row's nearest neighbour, a number jittered by a Gaussian whose scale is
    the distance between the two values over ``s`` (the local scale), a category as it is. The
    other features keep the row's own value. Values therefore stay where the data lives: a category
    is always one the column holds, a number near two neighbouring ones. Deterministic from ``seed``."""
    if rows <= 0 or len(X) < 2:
        return X.iloc[:0]
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    source = X if len(X) <= max_source_rows else X.sample(max_source_rows, random_state=seed)
    source = source.reset_index(drop=True)
    space = _neighbour_space(source)
    neighbour = NearestNeighbors(n_neighbors=2).fit(space).kneighbors(space, return_distance=False)[:, 1]
    base = rng.integers(0, len(source), rows)
    other = neighbour[base]
    fake = source.iloc[base].reset_index(drop=True)
    for name in source.columns:
        take = rng.random(rows) < p
        own, near = source[name].to_numpy()[base], source[name].to_numpy()[other]
        if _numeric(source[name]):
            own, near = own.astype(float), near.astype(float)
            scale = np.nan_to_num(np.abs(own - near) / s)
            jittered = near + rng.normal(0.0, 1.0, rows) * scale
            values = np.where(take, jittered, own)
            fake[name] = values.astype(source[name].dtype) if source[name].dtype.kind == "f" else values
        else:
            fake[name] = pd.Series(np.where(take, near, own), dtype=source[name].dtype)
    return fake


@dataclass(frozen=True)
class Targets:
    """The rows a student learns from (training rows, then synthetic ones) and what it learns:
    the teacher's probabilities (classification) or predictions (regression), and the labels of
    the training rows."""

    X: pd.DataFrame
    teacher: np.ndarray
    labels: pd.Series | None
    classes: np.ndarray | None


def teacher_targets(teacher: Any, X: pd.DataFrame, task: str, *, y: pd.Series | None = None,
                    synthetic: float = 0.0, max_synthetic: int = MAX_SYNTHETIC_ROWS, seed: int = 0) -> Targets:
    """Label the training rows and ``synthetic`` MUNGE rows per training row (at most
    ``max_synthetic``) with the teacher, once: every temperature tried reuses them."""
    rows = int(min(round(synthetic * len(X)), max_synthetic))
    X_all = pd.concat([X, munge(X, rows, seed=seed)], ignore_index=True)
    if task == "regression":
        return Targets(X_all, np.asarray(teacher.predict(X_all), dtype=float), y, None)
    return Targets(X_all, np.asarray(teacher.predict_proba(X_all), dtype=float), y, np.asarray(teacher.classes_))


def fit_student(student: Pipeline, targets: Targets, *, temperature: float = 1.0,
                label_weight: float = 0.0) -> Pipeline:
    """Fit ``student`` on soft targets: the teacher's probabilities at ``temperature``, mixed on the
    training rows with their own labels at ``label_weight`` (0: the teacher's alone)."""
    X_all = targets.X
    if targets.classes is None:
        return student.fit(X_all, targets.teacher)  # the teacher's predictions are the soft targets
    soft = soften(targets.teacher, temperature)
    if label_weight > 0 and targets.labels is not None:
        n = len(targets.labels)
        hard = (targets.labels.to_numpy(dtype=object)[:, None] == targets.classes.astype(object)[None, :])
        soft = soft.copy()
        soft[:n] = (1 - label_weight) * soft[:n] + label_weight * hard
    keep = soft > 1e-4  # rows of a class the teacher rules out add nothing
    rows = np.concatenate([np.flatnonzero(keep[:, j]) for j in range(len(targets.classes))])
    labels = np.concatenate([np.full(int(keep[:, j].sum()), j) for j in range(len(targets.classes))])
    # Preprocessing learns from the rows as they are (not from the per-class copies); only the
    # final estimator sees the weighted copies.
    features = student[:-1].fit_transform(X_all) if len(student.steps) > 1 else X_all
    student.steps[-1][1].fit(features[rows] if isinstance(features, np.ndarray) else features.iloc[rows],
                             targets.classes[labels], sample_weight=soft[rows, labels])
    return student


def distil(teacher: Any, student: Pipeline, X: pd.DataFrame, task: str, *, y: pd.Series | None = None,
           temperature: float = 1.0, synthetic: float = 0.0, label_weight: float = 0.0,
           seed: int = 0) -> dict[str, Any]:
    """Fit ``student`` on the teacher's soft labels over X plus ``synthetic`` MUNGE rows per row."""
    started = time.perf_counter()
    targets = teacher_targets(teacher, X, task, y=y, synthetic=synthetic, seed=seed)
    fit_student(student, targets, temperature=temperature, label_weight=label_weight)
    return {"rows": len(targets.X), "seconds": time.perf_counter() - started}


def validation_score(student: Any, validation: tuple[pd.DataFrame, pd.Series], regression: bool) -> tuple[float, ...]:
    """What tuning maximises on the validation split: accuracy, then -log loss; -RMSE for regression."""
    from functions.common import metrics as m

    X_val, y_val = validation
    if regression:
        return (-m.rmse(y_val.to_numpy(dtype=float), student.predict(X_val)),)
    truth = y_val.to_numpy(dtype=object)
    proba = student.predict_proba(X_val)
    labels = np.asarray(student.classes_, dtype=object)[proba.argmax(axis=1)]
    return (m.accuracy(truth, labels), -m.log_loss(truth, proba, list(student.classes_)))


def distilled_student(make: Callable[[], Pipeline], targets: Targets,
                      validation: tuple[pd.DataFrame, pd.Series] | None,
                      temperatures: tuple[float, ...] = TEMPERATURES,
                      label_weights: tuple[float, ...] = LABEL_WEIGHTS) -> tuple[Pipeline, dict[str, Any]]:
    """The student fitted on soft targets at each temperature and label weight, kept where the validation
    split scores best (see ``validation_score``). Without a validation split: the first setting."""
    regression = targets.classes is None
    grid = [(1.0, 0.0)] if regression else [(t, w) for t in temperatures for w in label_weights]
    grid = grid if validation is not None else grid[:1]
    best: tuple[Any, ...] | None = None
    tried = []
    for temperature, weight in grid:
        student = fit_student(make(), targets, temperature=temperature, label_weight=weight)
        score = (0.0,) if validation is None else validation_score(student, validation, regression)
        tried.append({"temperature": temperature, "label_weight": weight,
                      "validation": [round(float(v), 6) for v in score]})
        if best is None or score > best[0]:
            best = (score, student, temperature, weight)
    assert best is not None
    return best[1], {"temperature": best[2], "label_weight": best[3], "grid": tried,
                     "validation": [round(float(v), 6) for v in best[0]]}


def hard_label_student(make: Callable[[], Pipeline], targets: Targets) -> Pipeline | None:
    """The same student fitted on the training rows' own labels (None when the targets carry none)."""
    if targets.labels is None:
        return None
    return make().fit(targets.X.iloc[:len(targets.labels)], targets.labels)


def tuned_student(make: Callable[[], Pipeline], targets: Targets, validation: tuple[pd.DataFrame, pd.Series] | None,
                  temperatures: tuple[float, ...] = TEMPERATURES,
                  label_weights: tuple[float, ...] = LABEL_WEIGHTS) -> tuple[Pipeline, dict[str, Any]]:
    """The distilled student (tuned as in ``distilled_student``) or the same student on hard labels,
    the hard-label one only where it is clearly better on the validation split (``clearly_better``:
    beyond one standard error of the paired difference, so one row of a small split does not decide),
    so distillation never ships a clear loss there. The info's ``targets`` says which was kept, beside
    both scores. Without a validation split: the distilled student at the first setting."""
    distilled, tuning = distilled_student(make, targets, validation, temperatures, label_weights)
    hard = None if validation is None else hard_label_student(make, targets)
    if hard is None or validation is None:
        return distilled, {**tuning, "targets": "distilled"}
    regression = targets.classes is None
    hard_score = validation_score(hard, validation, regression)
    rounded = [round(float(v), 6) for v in hard_score]
    X_val, y_val = validation
    truth = y_val.to_numpy(dtype=float if regression else object)
    keep_hard = clearly_better(truth, distilled.predict(X_val), hard.predict(X_val), regression)
    return (hard if keep_hard else distilled), {**tuning, "targets": "hard-label" if keep_hard else "distilled",
                                                "hard_label_validation": rounded}


def clearly_better(truth: np.ndarray, base: np.ndarray, other: np.ndarray, regression: bool) -> bool:
    """Whether ``other``'s predictions beat ``base``'s on the same rows by more than one standard error
    of the paired difference: rows only ``other`` gets right minus rows only ``base`` gets right against
    the square root of their sum (McNemar's), or the mean drop in squared error against its standard
    error (regression)."""
    if regression:
        gain = (np.asarray(base, dtype=float) - truth) ** 2 - (np.asarray(other, dtype=float) - truth) ** 2
        if len(gain) < 2:
            return False
        spread = float(np.std(gain, ddof=1)) / math.sqrt(len(gain))
        return float(gain.mean()) > spread
    base_right = np.asarray(base, dtype=object) == truth
    other_right = np.asarray(other, dtype=object) == truth
    only_other = int((other_right & ~base_right).sum())
    only_base = int((base_right & ~other_right).sum())
    return only_other - only_base > math.sqrt(only_other + only_base)
