"""What a fitted pipeline reads, column by column: the steps each input column goes through.

The feature schema comes from these routes, not from the sample: a column no step reads is
not a feature; a column is nullable when an imputer or a NaN-aware model reads it; its
categories are open when the encoder that reads it encodes unseen ones itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
    TargetEncoder,
)

from functions.common.errors import BundleBuildError

# Steps that let a NaN through unchanged to the next step (their fitted statistics ignore NaN).
NAN_PRESERVING = (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler)
# Estimators whose ONNX form routes a NaN down a branch learned in training, as scikit-learn does.
NAN_AWARE = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


@dataclass(frozen=True)
class Route:
    """The leaf steps that read one input column, in order, and the column's place among
    its transformer's inputs (which statistic or category list of a step belongs to it)."""

    steps: tuple[tuple[str, Any], ...]
    position: int


@dataclass(frozen=True)
class CategoryFacts:
    categories: list[str] | None
    accepts_unknown: bool
    categories_reason: str | None
    missing_category: str | None
    nullable_reason: str | None


def leaf_steps(estimator: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf step of nested Pipelines and ColumnTransformers, with a readable path."""
    if isinstance(estimator, Pipeline):
        for step_name, step in estimator.steps:
            yield from leaf_steps(step, f"{path}{step_name}/")
    elif isinstance(estimator, ColumnTransformer):
        for step_name, step, _cols in estimator.transformers_:
            if isinstance(step, str):  # 'drop' or 'passthrough'
                continue
            yield from leaf_steps(step, f"{path}{step_name}/")
    elif estimator is not None and not isinstance(estimator, str):
        yield path.rstrip("/") or type(estimator).__name__, estimator


def routes(estimator: Any, names: Sequence[str]) -> dict[str, Route]:
    """Each input column the fitted estimator reads -> its route. Columns a leading
    ColumnTransformer drops are left out."""
    head_name, head, rest = _head(estimator)
    indices = getattr(head, "_transformer_to_input_indices", None)
    if not isinstance(head, ColumnTransformer) or indices is None:
        chain = tuple(leaf_steps(estimator))
        return {n: Route(chain, k) for k, n in enumerate(names)}
    found: dict[str, Route] = {}
    for step_name, trans, _cols in head.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        inner = () if isinstance(trans, str) else tuple(leaf_steps(trans, f"{head_name}{step_name}/"))
        for position, k in enumerate(indices.get(step_name, [])):
            found[names[k]] = Route(inner + rest, position)
    return found


def _head(estimator: Any) -> tuple[str, Any, tuple[tuple[str, Any], ...]]:
    """The first step, its path prefix and the leaf steps after it."""
    if isinstance(estimator, Pipeline):
        first_name, first = estimator.steps[0]
        rest = tuple(step for name, later in estimator.steps[1:] for step in leaf_steps(later, f"{name}/"))
        return f"{first_name}/", first, rest
    return "", estimator, ()


def number_nullable_reason(route: Route) -> str | None:
    """Why a null in this numeric column is servable, or None when no step handles it."""
    for path, step in route.steps:
        if isinstance(step, (SimpleImputer, KNNImputer)) and _missing_is_nan(step):
            return f"{describe(step)} in step {path} fills it"
        if isinstance(step, NAN_AWARE):
            return f"{type(step).__name__} in step {path} routes missing values"
        if not isinstance(step, NAN_PRESERVING) and not _identity(step):
            return None
    return None


def category_facts(route: Route, column: str) -> CategoryFacts:
    """Categories, openness and nullability of a text column, from the steps that read it."""
    fill = fill_reason = None
    for path, step in route.steps:
        if is_string_imputer(step):
            if not _missing_is_nan(step):
                raise BundleBuildError(
                    f"step '{path}' ({describe(step)}) marks missing strings as {step.missing_values!r}: bundling "
                    "reads missing text as null; use missing_values=np.nan and read the marker as missing "
                    "(pandas' na_values)", code="unsupported_step", field=path)
            fill = str(step.statistics_[route.position])
            fill_reason = f"{describe(step)} in step {path} fills it with {fill!r}"
            continue
        cats = getattr(step, "categories_", None)
        if cats is None or route.position >= len(cats):
            break
        known = [str(v) for v in np.asarray(cats[route.position], dtype=object).tolist() if not _is_missing(v)]
        accepts, reason = _unknown_rule(step, path)
        nullable = fill is not None and (accepts or fill in known)
        return CategoryFacts(known, accepts, reason, fill if nullable else None, fill_reason if nullable else None)
    if fill is not None:
        raise BundleBuildError(f"text column {column!r} is imputed but no encoder reads it: encode it "
                               "(OneHotEncoder, OrdinalEncoder, TargetEncoder) after the imputer",
                               code="unsupported_step", field=column)
    return CategoryFacts(None, False, None, None, None)


def _unknown_rule(encoder: Any, path: str) -> tuple[bool, str]:
    name = type(encoder).__name__
    if isinstance(encoder, TargetEncoder):
        return True, f"TargetEncoder in step {path} encodes an unseen category as the target mean"
    handle = getattr(encoder, "handle_unknown", "error")
    if isinstance(encoder, OneHotEncoder) and handle == "ignore":
        return True, f"OneHotEncoder(handle_unknown='ignore') in step {path} encodes an unseen category as zeros"
    if isinstance(encoder, OrdinalEncoder) and handle == "use_encoded_value":
        return True, (f"OrdinalEncoder(handle_unknown='use_encoded_value') in step {path} encodes an unseen "
                      f"category as {encoder.unknown_value}")
    if isinstance(encoder, OneHotEncoder) and handle == "infrequent_if_exist":
        return False, (f"OneHotEncoder(handle_unknown='infrequent_if_exist') in step {path}: its ONNX form has no "
                       "infrequent bucket, so unseen categories are refused; handle_unknown='ignore' accepts them")
    return False, f"{name}(handle_unknown={handle!r}) in step {path} refuses an unseen category"


def is_string_imputer(step: Any) -> bool:
    """A SimpleImputer fitted on text: its statistics are strings, which the ONNX converter refuses."""
    return isinstance(step, SimpleImputer) and np.asarray(step.statistics_).dtype.kind in "OUS"


def without_string_imputers(estimator: Any) -> Any:
    """The estimator to convert: text imputers taken out, their fill applied by the row schema
    (a null text cell is read as the imputer's fill value, exactly what the imputer does).
    The fitted steps are shared, never refitted; the user's estimator is left untouched."""
    if isinstance(estimator, Pipeline):
        kept = [(n, without_string_imputers(s)) for n, s in estimator.steps if not is_string_imputer(s)]
        if not kept:
            return "passthrough"
        if len(kept) == 1 and len(estimator.steps) > 1:
            return kept[0][1]
        if len(kept) == len(estimator.steps) and all(a[1] is b[1] for a, b in zip(kept, estimator.steps,
                                                                                     strict=True)):
            return estimator
        return Pipeline(kept)
    if isinstance(estimator, ColumnTransformer):
        rebuilt = [(n, t if isinstance(t, str) else without_string_imputers(t), c)
                   for n, t, c in estimator.transformers_]
        if all(a[1] is b[1] for a, b in zip(rebuilt, estimator.transformers_, strict=True)):
            return estimator
        clone = copy.copy(estimator)
        clone.transformers_ = rebuilt
        return clone
    if is_string_imputer(estimator):
        return "passthrough"
    return estimator


def string_imputers_reading_numbers(all_routes: dict[str, Route], numeric: set[str]) -> list[tuple[str, str]]:
    """(column, step path) where a text imputer also reads a numeric column: its fill is a string."""
    return [(col, path) for col, route in all_routes.items() if col in numeric
            for path, step in route.steps if is_string_imputer(step)]


def _identity(step: Any) -> bool:
    """A fitted ColumnTransformer holds 'passthrough' as a FunctionTransformer without a function."""
    return isinstance(step, FunctionTransformer) and step.func is None


def describe(step: Any) -> str:
    if isinstance(step, SimpleImputer):
        return f"SimpleImputer(strategy={step.strategy!r})"
    return type(step).__name__


def _missing_is_nan(imputer: Any) -> bool:
    return _is_missing(imputer.missing_values)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
