"""Write a model bundle: scikit-learn estimator -> model.onnx + manifest.json, refused on bad parity.

Parity is measured through the serving code path itself (the same row validation and
onnxruntime session the Lambda uses), so a bundle that passes here behaves the same there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from functions.common.bundle import Model, first_max
from functions.common.errors import BundleBuildError, InvalidInput
from functions.common.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    PANDAS_MISSING_MARKERS,
    Feature,
    Manifest,
    OnnxSignature,
    Parity,
    sha256_hex,
)

from .bundling.columns import (
    category_facts,
    leaf_steps,
    number_nullable_reason,
    routes,
    string_imputers_reading_numbers,
    without_string_imputers,
)
from .bundling.explain import CHECK_ROWS, explanation_files
from .bundling.messages import conversion_refusal, label_disagreement, sample_refusal, step_fix
from .bundling.profile import feature_profile

DEFAULT_TOLERANCE = 1e-4
TENSOR_INPUT = "X"
PROBE_ROWS = 16  # sample rows replayed with a null or an unseen category in one feature
UNSEEN_CATEGORY = "\x00unseen category"


@dataclass(frozen=True)
class BundleResult:
    manifest: Manifest
    path: Path
    explanations: str = ""  # what explain.json holds, or why the bundle has none


def build_bundle(estimator: Any, sample: pd.DataFrame, out_dir: str | Path, *, name: str = "model",
                 version: str | None = None, target: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 lineage: dict[str, str] | None = None,
                 missing_markers: list[str] | None = None, profile_data: pd.DataFrame | None = None,
                 holdout: pd.DataFrame | None = None) -> BundleResult:
    """Convert, check parity on ``sample`` and write the bundle to ``out_dir``.

    ``missing_markers`` are the strings read as missing when ``sample`` and the training data
    were read (pandas' defaults unless given); batch scoring reads text files with the same list.
    The feature profile drift reads is taken on ``profile_data`` (the training rows; default ``sample``)
    and the prediction distribution on ``holdout`` (default: the profiled rows)."""
    task = _task(estimator)
    y = sample[target] if target is not None and target in sample.columns else None
    X_all = sample.drop(columns=[target]) if y is not None else sample
    features, ignored = _features(estimator, X_all)
    X_all = X_all[[n for n, _ in _fitted_columns(estimator, X_all, features)]]  # what scikit-learn was fitted on
    X = X_all[[f.name for f in features]]
    if len(X) == 0:
        raise BundleBuildError("the sample has no rows: parity needs data", code="empty_sample")
    mode = "columns" if _needs_columns(estimator, features) else "tensor"
    classes = [_native(c) for c in estimator.classes_] if task == "classification" else None
    failures = []
    # float32 first (what most converters and runtimes are tuned for); float64 when rounding in
    # float32 upstream of a tree (e.g. a scaler) moves rows across split thresholds.
    columns = _fitted_columns(estimator, X_all, features)
    for dtype in ("float32", "float64"):
        try:
            onnx_bytes, signature = _convert(estimator, features, columns, mode, task, dtype)
            draft = _manifest(name, version or _default_version(onnx_bytes), task, estimator, features, classes,
                              signature, onnx_bytes, Parity(rows=len(X), max_abs_diff=0.0, tolerance=tolerance), {},
                              lineage)
            draft = draft.model_copy(update={"ignored_columns": ignored, "missing_markers": list(
                PANDAS_MISSING_MARKERS if missing_markers is None else missing_markers)})
            parity, onnx_scores = _parity(estimator, draft, onnx_bytes, X_all, tolerance)
            draft = _probed(estimator, draft, onnx_bytes, X_all, tolerance)
            break
        except BundleBuildError as exc:
            if exc.code not in ("parity_failed", "conversion_failed"):
                raise
            failures.append((dtype, exc.message))
    else:
        code = "parity_failed" if any("disagree" in m for _, m in failures) else "conversion_failed"
        if len({re.sub(r"\d[\d.e+-]*", "#", m) for _, m in failures}) == 1:  # the same refusal, other figures
            raise BundleBuildError(f"bundle refused (float32 and float64): {failures[-1][1]}", code=code)
        raise BundleBuildError("bundle refused; " + "; ".join(f"{d}: {m}" for d, m in failures), code=code)
    metrics = {"sample": _metrics(task, y, onnx_scores, classes)} if y is not None else {}
    profile = feature_profile(estimator, features, X_all if profile_data is None else profile_data, holdout,
                              task=task)
    manifest = draft.model_copy(update={"parity": parity, "metrics": metrics, "target": target, "profile": profile})
    extra, explained = _explanations(estimator, manifest, onnx_bytes, X_all, profile_data, tolerance)
    manifest = manifest.model_copy(update={"files": {**manifest.files, **{n: sha256_hex(b) for n, b in extra.items()}},
                                           "sizes": {**manifest.sizes, **{n: len(b) for n, b in extra.items()}}})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(onnx_bytes)
    for file_name, data in extra.items():
        (out / file_name).write_bytes(data)
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return BundleResult(manifest=manifest, path=out, explanations=explained)


def _explanations(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X_all: pd.DataFrame,
                  profile_data: pd.DataFrame | None, tolerance: float) -> tuple[dict[str, bytes], str]:
    """explain.json (and explain.onnx) when the model can be explained exactly; never a reason to refuse."""
    background = X_all if profile_data is None or not set(X_all.columns) <= set(profile_data.columns) \
        else profile_data[list(X_all.columns)]
    rows = sample_instances(X_all[manifest.feature_names].head(CHECK_ROWS))
    try:
        return explanation_files(estimator, manifest, onnx_bytes, X_all, background, rows, tolerance)
    except Exception as exc:  # an explanation is extra: whatever fails here leaves the bundle without one
        return {}, f"no explanations: {type(exc).__name__}: {str(exc)[:200]}"


# -- estimator inspection --------------------------------------------------------------------

def _task(estimator: Any) -> str:
    if not isinstance(estimator, BaseEstimator):
        raise BundleBuildError(f"expected a fitted scikit-learn estimator or Pipeline, got {type(estimator).__name__}",
                               code="not_an_estimator")
    try:
        check_is_fitted(estimator)
    except Exception:
        raise BundleBuildError(f"{type(estimator).__name__} is not fitted: fit it before bundling",
                               code="not_fitted") from None
    _check_supported(estimator)
    if is_classifier(estimator):
        if not hasattr(estimator, "predict_proba"):
            final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
            raise BundleBuildError(f"{type(final).__name__} gives no class probabilities, which the bundle serves: "
                                   f"{step_fix(final)}", code="unsupported_step")
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise BundleBuildError(f"{type(estimator).__name__} is neither a classifier nor a regressor",
                           code="unsupported_step")


def _check_supported(estimator: Any) -> None:
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for path, step in leaf_steps(estimator):
        if type(step) not in sklearn_operator_name_map:
            raise BundleBuildError(f"step '{path}' ({type(step).__module__}.{type(step).__name__}) has no ONNX "
                                   f"converter: {step_fix(step)}", code="unsupported_step", field=path)


def _features(estimator: Any, X: pd.DataFrame) -> tuple[list[Feature], list[str]]:
    """The columns the fitted pipeline reads, as features, and the columns it was fitted with but ignores."""
    names = [str(n) for n in getattr(estimator, "feature_names_in_", X.columns)]
    missing = [n for n in names if n not in X.columns]
    if missing:
        raise BundleBuildError(f"sample data lacks the model's features {missing}", code="sample_mismatch")
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise BundleBuildError(f"the model takes {n_in} features; the sample has {len(names)} columns",
                               code="sample_mismatch")
    read = routes(estimator, names)
    numeric = {n for n in names if not _is_text(X[n])}
    for column, path in string_imputers_reading_numbers(read, numeric)[:1]:
        raise BundleBuildError(f"step '{path}' imputes text and also reads the numeric column {column!r}: give it "
                               "the text columns only (a ColumnTransformer) and numbers their own imputer",
                               code="unsupported_step", field=path)
    features = [_feature(n, X[n], read[n]) for n in names if n in read]
    return features, [n for n in names if n not in read]


def _feature(name: str, col: pd.Series, route: Any) -> Feature:
    if _is_text(col):
        facts = category_facts(route, name)
        cats = facts.categories or sorted(str(v) for v in col.dropna().unique())
        return Feature(name=name, type="category", categories=cats,
                       unknown_categories="accept" if facts.accepts_unknown else "refuse",
                       categories_reason=facts.categories_reason, nullable=facts.missing_category is not None,
                       nullable_reason=facts.nullable_reason, missing_category=facts.missing_category)
    reason = number_nullable_reason(route)
    finite = col[np.isfinite(col.astype(float))]
    return Feature(name=name, type="number", nullable=reason is not None, nullable_reason=reason,
                   minimum=float(finite.min()) if len(finite) else None,
                   maximum=float(finite.max()) if len(finite) else None)


def _is_text(col: pd.Series) -> bool:
    return bool(pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col))


def _fitted_columns(estimator: Any, X: pd.DataFrame, features: list[Feature]) -> list[tuple[str, str]]:
    """Every column the model was fitted with, in its order, with how the converter types it
    (ignored ones included, so that column positions in a ColumnTransformer still hold)."""
    kinds = {f.name: f.type for f in features}
    names = [str(n) for n in getattr(estimator, "feature_names_in_", X.columns)]
    return [(n, kinds.get(n) or ("category" if _is_text(X[n]) else "number")) for n in names]


def _column_transformers(estimator: Any) -> Iterator[ColumnTransformer]:
    if isinstance(estimator, ColumnTransformer):
        yield estimator
    elif isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            yield from _column_transformers(step)


def _needs_columns(estimator: Any, features: list[Feature]) -> bool:
    return any(f.type == "category" for f in features) or any(True for _ in _column_transformers(estimator))


# -- conversion --------------------------------------------------------------------------------

@contextlib.contextmanager
def _histgradientboosting_fix() -> Iterator[None]:
    """skl2onnx 1.20 passes numpy integers and Python booleans (HistGradientBoosting's
    ``missing_go_to_left``) into integer ONNX attributes, which onnx refuses. Coerce them."""
    import skl2onnx.common.tree_ensemble as tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        args = tuple(int(a) if isinstance(a, (bool, np.bool_, np.integer)) else a for a in args)
        kwargs = {k: int(v) if isinstance(v, (bool, np.bool_, np.integer)) else v for k, v in kwargs.items()}
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def _imputer_statistics(estimator: Any) -> list[np.ndarray]:
    return [np.asarray(step.statistics_, dtype=np.float64) for _, step in leaf_steps(estimator)
            if hasattr(step, "statistics_") and np.asarray(step.statistics_).dtype.kind == "f"]


def _imputers_as_where(onx: Any, exact_fills: list[np.ndarray]) -> None:
    """onnxruntime's Imputer has no float64 kernel: express it as Where(IsNaN(x), fill, x).

    The ONNX attribute holds the fill values in float32; the fitted imputer whose statistics
    round to them supplies the float64 values scikit-learn really uses."""
    from onnx import TensorProto, helper

    nodes = []
    for node in onx.graph.node:
        if node.op_type != "Imputer" or node.domain != "ai.onnx.ml":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        replaced = float(attrs.get("replaced_value_float", float("nan")))
        fill = [float(v) for v in attrs.get("imputed_value_floats", [])]
        fill = next((exact.tolist() for exact in exact_fills if len(exact) == len(fill)
                     and np.array_equal(exact.astype(np.float32), np.asarray(fill, dtype=np.float32))), fill)
        if not fill or not np.isnan(replaced):
            nodes.append(node)  # only the NaN-filling form that SimpleImputer produces is rewritten
            continue
        fill_name, mask_name = f"{node.name}__fill", f"{node.name}__isnan"
        onx.graph.initializer.append(helper.make_tensor(fill_name, TensorProto.DOUBLE, [len(fill)], fill))
        nodes.append(helper.make_node("IsNaN", [node.input[0]], [mask_name], name=f"{node.name}__mask"))
        nodes.append(helper.make_node("Where", [mask_name, fill_name, node.input[0]], [node.output[0]],
                                      name=f"{node.name}__where"))
    del onx.graph.node[:]
    onx.graph.node.extend(nodes)


def _trees_in_float32(onx: Any) -> None:
    """In a float64 graph, run tree ensembles on float32 inputs and widen their scores back.

    scikit-learn's trees compare float32 features with float32 thresholds after float64
    preprocessing; onnxruntime's tree operators emit float32 scores only. Casting around each
    tree node reproduces scikit-learn exactly and keeps the graph's types consistent."""
    from onnx import TensorProto, helper

    float_outputs = {o.name for o in onx.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    nodes = []
    for node in onx.graph.node:
        if node.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor"):
            narrowed = f"{node.input[0]}__float32"
            nodes.append(helper.make_node("Cast", [node.input[0]], [narrowed], to=TensorProto.FLOAT,
                                          name=f"{node.name}__narrow"))
            node.input[0] = narrowed
            nodes.append(node)
            scores = 1 if node.op_type == "TreeEnsembleClassifier" else 0
            widened = node.output[scores]
            if widened in float_outputs:  # the graph already declares float32 scores here
                continue
            node.output[scores] = f"{widened}__float32"
            nodes.append(helper.make_node("Cast", [node.output[scores]], [widened], to=TensorProto.DOUBLE,
                                          name=f"{node.name}__widen"))
        else:
            nodes.append(node)
    del onx.graph.node[:]
    onx.graph.node.extend(nodes)


def _convert(estimator: Any, features: list[Feature], columns: list[tuple[str, str]], mode: str, task: str,
             dtype: str) -> tuple[bytes, OnnxSignature]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = FloatTensorType if dtype == "float32" else DoubleTensorType
    if mode == "tensor":
        initial_types = [(TENSOR_INPUT, number([None, len(features)]))]
    else:
        initial_types = [(n, StringTensorType([None, 1]) if kind == "category" else number([None, 1]))
                         for n, kind in columns]
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    options = {id(final): {"zipmap": False}} if task == "classification" else None
    converted = without_string_imputers(estimator)
    try:
        with _histgradientboosting_fix():
            onx = convert_sklearn(converted, initial_types=initial_types, options=options)
        if dtype == "float64":
            _imputers_as_where(onx, _imputer_statistics(converted))
            _trees_in_float32(onx)
        inputs = _feature_inputs(onx, [n for n, _ in initial_types], [f.name for f in features])
        onnx_bytes = onx.SerializeToString()
        Model.check_loadable(onnx_bytes)
    except BundleBuildError:
        raise
    except Exception as exc:
        raise BundleBuildError(f"ONNX conversion failed: {conversion_refusal(exc, estimator)}",
                               code="conversion_failed") from None
    outputs = [o.name for o in onx.graph.output]
    probability = outputs[1] if task == "classification" else None
    signature = OnnxSignature(input_mode=mode, input_dtype=dtype,  # type: ignore[arg-type]
                              inputs=inputs, prediction_output=outputs[0], probability_output=probability)
    return onnx_bytes, signature


def _feature_inputs(onx: Any, declared: list[str], features: list[str]) -> list[str]:
    """The graph's own input names for ``features`` (the converter sanitizes names such as
    'od280/od315'), with the inputs of ignored columns taken out of the graph."""
    graph_inputs = list(onx.graph.input)
    if len(graph_inputs) != len(declared):
        raise BundleBuildError(f"the converted graph has {len(graph_inputs)} inputs for {len(declared)} columns",
                               code="conversion_failed")
    if declared == [TENSOR_INPUT]:
        return [graph_inputs[0].name]
    by_column = dict(zip(declared, graph_inputs, strict=True))
    wanted = set(features)
    consumed = {name for node in onx.graph.node for name in node.input}
    for column, graph_input in by_column.items():
        if column not in wanted and graph_input.name in consumed:
            raise BundleBuildError(f"column {column!r} is read by the converted graph but by no step of the "
                                   "fitted pipeline", code="conversion_failed")
    del onx.graph.input[:]
    onx.graph.input.extend(by_column[c] for c in declared if c in wanted)
    return [by_column[f].name for f in features]


# -- parity ------------------------------------------------------------------------------------

def sample_instances(X: pd.DataFrame) -> list[list[Any]]:
    """Rows exactly as a JSON client would send them (NaN becomes null)."""
    return json.loads(X.to_json(orient="values", double_precision=15))


def _parity(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X_all: pd.DataFrame,
            tolerance: float) -> tuple[Parity, np.ndarray]:
    """Served answers on the sample's rows (feature columns only) against scikit-learn's on the
    same rows (every column it was fitted with)."""
    X = X_all[manifest.feature_names]
    model = Model(manifest, onnx_bytes, max_rows=max(len(X), 1))
    try:
        result = model.predict(sample_instances(X))
    except InvalidInput as exc:
        raise BundleBuildError(sample_refusal(exc, manifest), code="sample_invalid", field=exc.field) from None
    except Exception as exc:  # onnxruntime raises several private types for a failing kernel
        raise BundleBuildError(f"onnxruntime cannot score the sample: {conversion_refusal(exc, estimator)}",
                               code="conversion_failed") from None
    X_sk = X_all if hasattr(estimator, "feature_names_in_") else X.to_numpy()
    if manifest.task == "classification":
        ref = np.asarray(estimator.predict_proba(X_sk), dtype=np.float64)
        got = np.asarray(result.probabilities, dtype=np.float64)
        diff = float(np.abs(ref - got).max())
        sk_labels = np.asarray(estimator.predict(X_sk), dtype=object)
        agree = sk_labels == np.asarray(result.predictions, dtype=object)
        ordered = np.sort(ref, axis=1)
        genuine = (ordered[:, -1] - ordered[:, -2]) > 2 * tolerance  # rows that are not near-ties
        agreement = float(agree.mean())
        if diff > tolerance:
            raise BundleBuildError(f"scikit-learn and ONNX disagree: max abs probability difference {diff:.3g} "
                                   f"(tolerance {tolerance:g}), label agreement {agreement:.4%}",
                                   code="parity_failed")
        if not agree[genuine].all():
            raise BundleBuildError(label_disagreement(estimator, diff, tolerance, agreement, int((~agree).sum()),
                                                      len(agree)), code="parity_failed")
        return Parity(rows=len(X), max_abs_diff=diff, tolerance=tolerance, label_agreement=agreement), got
    ref = np.asarray(estimator.predict(X_sk), dtype=np.float64).reshape(-1)
    got = np.asarray(result.predictions, dtype=np.float64)
    diff = float(np.abs(ref - got).max())
    scale = max(1.0, float(np.abs(ref).max()))
    if diff > tolerance * scale:
        raise BundleBuildError(f"scikit-learn and ONNX disagree: max abs difference {diff:.3g} "
                               f"(tolerance {tolerance:g} x scale {scale:.3g})", code="parity_failed")
    return Parity(rows=len(X), max_abs_diff=diff, tolerance=tolerance), got


def _probed(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X_all: pd.DataFrame,
            tolerance: float) -> Manifest:
    """Replay sample rows with a null, then an unseen category, in each feature that the schema
    will let through; a feature whose served answers then differ from scikit-learn's is closed
    again, with the reason, so that the schema refuses what the bundle cannot serve exactly."""
    features = []
    for feature in manifest.features:
        if feature.nullable and _probe_fails(estimator, manifest, onnx_bytes, X_all, feature.name, np.nan,
                                             tolerance):
            feature = feature.model_copy(update={
                "nullable": False, "missing_category": None,
                "nullable_reason": f"refused: {feature.nullable_reason}, but ONNX disagrees with scikit-learn there"})
        if feature.unknown_categories == "accept" and _probe_fails(estimator, manifest, onnx_bytes, X_all,
                                                                   feature.name, UNSEEN_CATEGORY, tolerance):
            feature = feature.model_copy(update={
                "unknown_categories": "refuse",
                "categories_reason": f"refused: {feature.categories_reason}, but ONNX disagrees with scikit-learn"})
        features.append(feature)
    return manifest.model_copy(update={"features": features})


def _probe_fails(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X_all: pd.DataFrame, column: str,
                 value: Any, tolerance: float) -> bool:
    probe = X_all.head(PROBE_ROWS).copy()
    if value is UNSEEN_CATEGORY or not pd.api.types.is_numeric_dtype(probe[column]):
        probe[column] = probe[column].astype(object)
    probe[column] = value
    try:
        _parity(estimator, manifest, onnx_bytes, probe, tolerance)
    except BundleBuildError:
        return True
    except Exception:  # scikit-learn itself cannot predict such a row
        return True
    return False


def _metrics(task: str, y: pd.Series, scores: np.ndarray, classes: list[Any] | None) -> dict[str, float]:
    from sklearn import metrics as skm

    if task == "regression":
        return {"rmse": float(np.sqrt(skm.mean_squared_error(y, scores))),
                "mae": float(skm.mean_absolute_error(y, scores)),
                "r2": float(skm.r2_score(y, scores))}
    assert classes is not None
    labels = np.asarray(classes, dtype=object)[first_max(scores)]
    out = {"accuracy": float(np.mean(labels == y.to_numpy(dtype=object)))}
    if len(classes) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y == classes[1], scores[:, 1]))
    return out


# -- manifest ----------------------------------------------------------------------------------

def _manifest(name: str, version: str, task: str, estimator: Any, features: list[Feature],
              classes: list[Any] | None, signature: OnnxSignature, onnx_bytes: bytes, parity: Parity,
              metrics: dict[str, dict[str, float]], lineage: dict[str, str] | None) -> Manifest:
    return Manifest(name=name, version=version, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    task=task, estimator=_describe(estimator), features=features, classes=classes,  # type: ignore[arg-type]
                    onnx=signature, files={MODEL_FILE: sha256_hex(onnx_bytes)}, sizes={MODEL_FILE: len(onnx_bytes)},
                    parity=parity, metrics=metrics, lineage=lineage or {})


def _describe(estimator: Any) -> str:
    return " > ".join(f"{path}:{type(step).__name__}" for path, step in leaf_steps(estimator))


def _default_version(onnx_bytes: bytes) -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + sha256_hex(onnx_bytes)[:8]


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


