"""Data checks and the deterministic train / validation / holdout split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SPLIT = (0.70, 0.15, 0.15)
# A text column is ID-like (an ID, a timestamp, free text) and dropped when over half of its values are
# distinct (and there are over ID_MIN_DISTINCT of them), or when it has over MAX_CATEGORIES values: a
# model cannot learn from values it will not see again, and one-hot encoding them is slow and huge.
ID_DISTINCT_SHARE = 0.5
ID_MIN_DISTINCT = 50
MAX_CATEGORIES = 1000


class DataRefused(Exception):
    """Fatal data problems: training would be meaningless or misleading."""


def infer_task(y: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    distinct = y.dropna().unique()
    integral = np.all(np.equal(np.mod(distinct, 1), 0))
    return "classification" if integral and len(distinct) <= 20 else "regression"


def validate_data(frame: pd.DataFrame, target: str, task: str | None = None) -> dict[str, Any]:
    """A report of the table; ``fatal`` lists what refuses training."""
    fatal: list[str] = []
    warnings: list[str] = []
    if target not in frame.columns:
        raise DataRefused(f"target column {target!r} is not in the data (columns: {list(frame.columns)[:30]})")
    if len(frame) == 0:
        raise DataRefused("the data has no rows")
    y = frame[target]
    task = task or infer_task(y)
    features = [c for c in frame.columns if c != target]
    columns: dict[str, Any] = {}
    for name in features:
        col = frame[name]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        info: dict[str, Any] = {"type": "number" if numeric else "category", "missing": float(col.isna().mean()),
                                "distinct": int(col.nunique(dropna=True))}
        if info["distinct"] <= 1:
            warnings.append(f"{name!r} is constant: it carries no information (dropped)")
            info["dropped"] = "constant"
        elif not numeric and (why := id_like(col)):
            warnings.append(f"{name!r} looks like an ID, a date or free text: {why} (dropped; convert it to "
                            "numbers or coarser categories to use it)")
            info["dropped"] = "id_like"
        if info["missing"] > 0.5:
            warnings.append(f"{name!r} is {info['missing']:.0%} missing")
        leak = _leak(col, y, task, numeric)
        if leak:
            fatal.append(f"{name!r} leaks the target: {leak}")
        columns[name] = info
    labels: dict[str, Any] = {"missing": int(y.isna().sum())}
    if labels["missing"]:
        warnings.append(f"{labels['missing']} rows have no target (dropped)")
    if task == "classification":
        counts = y.dropna().astype(str).value_counts()
        labels["classes"] = {str(k): int(v) for k, v in counts.items()}
        if len(counts) < 2:
            fatal.append("the target has fewer than two classes")
        elif counts.min() < 10:
            fatal.append(f"class {counts.idxmin()!r} has only {counts.min()} rows: too few to train and evaluate")
        elif counts.min() / counts.sum() < 0.01:
            warnings.append(f"class imbalance: {counts.idxmin()!r} is {counts.min() / counts.sum():.2%} of rows")
    if len(frame) < 50:
        fatal.append(f"only {len(frame)} rows: too few for a train / validation / holdout split")
    return {"rows": len(frame), "task": task, "target": target, "columns": columns, "labels": labels,
            "warnings": warnings, "fatal": fatal}


def id_like(col: pd.Series) -> str | None:
    """Why a text column is too close to unique to learn from, or None (see ID_DISTINCT_SHARE)."""
    present = col.dropna()
    distinct = int(present.nunique())
    if distinct > ID_MIN_DISTINCT and distinct > ID_DISTINCT_SHARE * len(present):
        return f"{distinct / max(len(present), 1):.0%} of its {len(present)} values are distinct"
    if distinct > MAX_CATEGORIES:
        return f"{distinct} distinct values (over {MAX_CATEGORIES})"
    return None


def _leak(col: pd.Series, y: pd.Series, task: str, numeric: bool) -> str | None:
    both = pd.concat([col, y], axis=1).dropna()
    if len(both) < 20 or col.nunique() <= 1:
        return None
    x, t = both.iloc[:, 0], both.iloc[:, 1]
    if x.equals(t) or (x.astype(str) == t.astype(str)).all():
        return "it is a copy of the target"
    if task == "regression" and numeric:
        corr = float(np.corrcoef(x.astype(float), t.astype(float))[0, 1])
        return f"correlation {corr:.4f} with the target" if abs(corr) > 0.999 else None
    if task == "classification" and x.nunique() < len(x) * 0.5:
        purity = both.groupby(both.columns[0])[both.columns[1]].nunique()
        if (purity == 1).all() and x.nunique() <= 2 * t.nunique():
            return "each of its values maps to exactly one class"
    return None


def usable(frame: pd.DataFrame, report: dict[str, Any]) -> pd.DataFrame:
    dropped = [c for c, info in report["columns"].items() if info.get("dropped")]
    return frame.drop(columns=dropped).dropna(subset=[report["target"]])


def split(frame: pd.DataFrame, target: str, task: str, seed: int) -> dict[str, pd.DataFrame]:
    """Deterministic from the seed, stratified for classification."""
    from sklearn.model_selection import train_test_split

    strat = frame[target].astype(str) if task == "classification" else None
    train, rest = train_test_split(frame, test_size=SPLIT[1] + SPLIT[2], random_state=seed, stratify=strat)
    strat_rest = rest[target].astype(str) if task == "classification" else None
    validation, holdout = train_test_split(rest, test_size=SPLIT[2] / (SPLIT[1] + SPLIT[2]), random_state=seed,
                                           stratify=strat_rest)
    return {"train": train, "validation": validation, "holdout": holdout}
