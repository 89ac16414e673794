"""Refusals a user can act on: the step at fault and a fix, never a converter's internals."""

from __future__ import annotations

import re
from typing import Any

from functions.common.errors import InvalidInput
from functions.common.manifest import Manifest

from .columns import leaf_steps

SUPPORTED = "the README lists the supported steps"
# Fixes for steps users often reach for that an ONNX graph cannot hold as fitted.
FIXES = {
    "FunctionTransformer": "it runs Python code, which an ONNX graph cannot hold: apply the function to the data "
                           "before training (a new column), or use a built-in transformer",
    "SVC": "use SVC(probability=True) inside CalibratedClassifierCV, or LogisticRegression, so that the served "
           "label is the most probable class",
    "NuSVC": "use NuSVC(probability=True) inside CalibratedClassifierCV, or LogisticRegression",
    "SplineTransformer": "use PolynomialFeatures or KBinsDiscretizer, which convert",
}
# Lines converters add that are about their own project, not the user's model.
_NOISE = re.compile(r"raise an issue|github\.com|https?://", re.IGNORECASE)


def step_fix(step: Any) -> str:
    """How to get past a step that has no converter."""
    name = type(step).__name__
    return FIXES.get(name, f"replace it with a supported step ({SUPPORTED}) or register a converter with skl2onnx")


def conversion_refusal(exc: BaseException, estimator: Any) -> str:
    """The converter's complaint without its boilerplate, the step it is about and a fix."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip() and not _NOISE.search(s)]
    said = " ".join(sentences)[:300] or type(exc).__name__
    culprit = next(((path, step) for path, step in leaf_steps(estimator) if type(step).__name__ in said), None)
    if culprit is None:
        return f"{said}; {SUPPORTED}"
    path, step = culprit
    return f"step '{path}' ({type(step).__name__}): {said.rstrip('.')}; {step_fix(step)}"


def sample_refusal(exc: InvalidInput, manifest: Manifest) -> str:
    """Why a sample row fails the bundle's schema, and what to change."""
    base = f"sample row refused by the bundle's own schema: {exc.message} ({exc.field})"
    if exc.code == "null_value":
        return (f"{base}: no step of the pipeline handles a null in this column, so scikit-learn cannot predict "
                "such a row either; impute the column (SimpleImputer in the pipeline) or leave those rows out")
    if exc.code == "unknown_category":
        return (f"{base}: the encoder that reads it refuses unseen categories; fit on data holding it or use "
                "OneHotEncoder(handle_unknown='ignore')")
    return base


def label_disagreement(estimator: Any, diff: float, tolerance: float, agreement: float, wrong: int,
                       rows: int) -> str:
    """Probabilities agree yet labels do not: the model's predict is not the most probable class."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    name = type(final).__name__
    why = (f"{name}'s predict is not the most probable class of its predict_proba (it decides from its decision "
           "function), while the bundle serves the most probable class")
    fix = FIXES.get(name, "use a classifier whose predict is the argmax of predict_proba")
    return (f"scikit-learn and ONNX disagree on {wrong} of {rows} labels although probabilities agree (max abs "
            f"difference {diff:.3g}, tolerance {tolerance:g}; label agreement {agreement:.4%}): {why}; {fix}")
