"""Before any training: everything export would refuse, checked on a small sample with the very
students the run may choose, so that a refusal comes in seconds, not after the teacher's hours."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pandas as pd

from functions.common.errors import BundleBuildError

from .data import DataRefused
from .models import make_student, student_label

PREFLIGHT_ROWS = 300
TINY = {"student_iter": 3, "student_depth": 2}


def preflight_sample(frame: pd.DataFrame, target: str, task: str, seed: int) -> pd.DataFrame:
    """A few hundred rows holding every class and, for each column with nulls, some of those rows."""
    with_nulls = [frame[frame[c].isna()].head(20) for c in frame.columns if c != target and frame[c].isna().any()]
    if task == "classification":
        per_class = max(PREFLIGHT_ROWS // max(frame[target].nunique(), 1), 10)
        base = frame.groupby(frame[target].astype(str), group_keys=False).head(per_class)
    else:
        base = frame.sample(min(len(frame), PREFLIGHT_ROWS), random_state=seed)
    sample = pd.concat([base, *with_nulls])
    return sample[~sample.index.duplicated()]


def check_exportable(frame: pd.DataFrame, target: str, task: str, kinds: list[str], seed: int) -> dict[str, str]:
    """Fit each student kind briefly and bundle it. Returns why each kind that cannot be exported is
    refused; when none can, raises a DataRefused naming every cause."""
    from sklearn.exceptions import ConvergenceWarning

    from pipeline.bundler import build_bundle

    sample = preflight_sample(frame, target, task, seed)
    X, y = sample.drop(columns=[target]), sample[target]
    refused: dict[str, str] = {}
    for kind in kinds:
        model = make_student(kind, task, X, seed, TINY)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X, y)
        except (TypeError, ValueError) as exc:  # e.g. a column mixing numbers and strings
            refused[kind] = f"[fit_failed] scikit-learn cannot fit it: {str(exc).splitlines()[0]}"
            continue
        with tempfile.TemporaryDirectory(prefix="slimserve-preflight-") as out:
            try:
                build_bundle(model, sample, Path(out), name="preflight", version="preflight", target=target)
            except BundleBuildError as exc:
                refused[kind] = f"[{exc.code}] {exc.message}"
    if len(refused) == len(kinds):
        causes = "; ".join(f"a {student_label(k, task)} student: {why}" for k, why in refused.items())
        raise DataRefused(f"checked before training: no student on these columns could be exported ({causes})")
    return refused
