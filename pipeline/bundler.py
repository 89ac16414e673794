"""Write a model bundle: scikit-learn estimator -> model.onnx + manifest.json, refused on bad parity.

Parity is measured through the serving code path itself (the same row validation and
onnxruntime session the Lambda uses), so a bundle that passes here behaves the same there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
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
from functions.common.manifest import MANIFEST_FILE, MODEL_FILE, Feature, Manifest, OnnxSignature, Parity, sha256_hex

DEFAULT_TOLERANCE = 1e-4
TENSOR_INPUT = "X"


@dataclass(frozen=True)
class BundleResult:
    manifest: Manifest
    path: Path


def build_bundle(estimator: Any, sample: pd.DataFrame, out_dir: str | Path, *, name: str = "model",
                 version: str | None = None, target: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 lineage: dict[str, str] | None = None) -> BundleResult:
    """Convert, check parity on ``sample`` and write the bundle to ``out_dir``."""
    task = _task(estimator)
    y = sample[target] if target is not None and target in sample.columns else None
    X = sample.drop(columns=[target]) if y is not None else sample
    features = _features(estimator, X)
    X = X[[f.name for f in features]]
    if len(X) == 0:
        raise BundleBuildError("the sample has no rows: parity needs data", code="empty_sample")
    mode = "columns" if _needs_columns(estimator, features) else "tensor"
    classes = [_native(c) for c in estimator.classes_] if task == "classification" else None
    failures = []
    # float32 first (what most converters and runtimes are tuned for); float64 when rounding in
    # float32 upstream of a tree (e.g. a scaler) moves rows across split thresholds.
    for dtype in ("float32", "float64"):
        try:
            onnx_bytes, signature = _convert(estimator, features, mode, task, dtype)
            draft = _manifest(name, version or _default_version(onnx_bytes), task, estimator, features, classes,
                              signature, onnx_bytes, Parity(rows=len(X), max_abs_diff=0.0, tolerance=tolerance), {},
                              lineage)
            parity, onnx_scores = _parity(estimator, draft, onnx_bytes, X, tolerance)
            break
        except BundleBuildError as exc:
            if exc.code not in ("parity_failed", "conversion_failed"):
                raise
            failures.append(f"{dtype}: {exc.message}")
    else:
        code = "parity_failed" if any("disagree" in f for f in failures) else "conversion_failed"
        raise BundleBuildError("bundle refused; " + "; ".join(failures), code=code)
    metrics = {"sample": _metrics(task, y, onnx_scores, classes)} if y is not None else {}
    manifest = draft.model_copy(update={"parity": parity, "metrics": metrics, "target": target})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(onnx_bytes)
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return BundleResult(manifest=manifest, path=out)


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
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise BundleBuildError(f"{type(estimator).__name__} is neither a classifier nor a regressor",
                           code="unsupported_step")


def _steps(estimator: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf step of nested Pipelines and ColumnTransformers, with a readable path."""
    if isinstance(estimator, Pipeline):
        for step_name, step in estimator.steps:
            yield from _steps(step, f"{path}{step_name}/")
    elif isinstance(estimator, ColumnTransformer):
        for step_name, step, _cols in estimator.transformers_:
            if isinstance(step, str):  # 'drop' or 'passthrough'
                continue
            yield from _steps(step, f"{path}{step_name}/")
    else:
        yield path.rstrip("/") or type(estimator).__name__, estimator


def _check_supported(estimator: Any) -> None:
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for path, step in _steps(estimator):
        if type(step) not in sklearn_operator_name_map:
            raise BundleBuildError(f"step '{path}' ({type(step).__module__}.{type(step).__name__}) has no ONNX "
                                   "converter: replace it or register a converter with skl2onnx",
                                   code="unsupported_step", field=path)


def _features(estimator: Any, X: pd.DataFrame) -> list[Feature]:
    names = [str(n) for n in getattr(estimator, "feature_names_in_", X.columns)]
    missing = [n for n in names if n not in X.columns]
    if missing:
        raise BundleBuildError(f"sample data lacks the model's features {missing}", code="sample_mismatch")
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise BundleBuildError(f"the model takes {n_in} features; the sample has {len(names)} columns",
                               code="sample_mismatch")
    known = _encoder_categories(estimator)
    features = []
    for n in names:
        col = X[n]
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            cats = known.get(n) or sorted(str(v) for v in col.dropna().unique())
            features.append(Feature(name=n, type="category", categories=[str(c) for c in cats]))
        else:
            finite = col[np.isfinite(col.astype(float))]
            features.append(Feature(name=n, type="number", nullable=bool(col.isna().any()),
                                    minimum=float(finite.min()) if len(finite) else None,
                                    maximum=float(finite.max()) if len(finite) else None))
    return features


def _encoder_categories(estimator: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for ct in _column_transformers(estimator):
        for _name, trans, cols in ct.transformers_:
            encoders = trans.steps if isinstance(trans, Pipeline) else [("", trans)]
            for _, step in encoders:
                cats = getattr(step, "categories_", None)
                if cats is not None and not isinstance(cols, slice) and len(cats) == len(cols):
                    for col, values in zip(cols, cats, strict=True):
                        if isinstance(col, str):
                            found[col] = [v for v in values.tolist() if not _is_missing(v)]
                    break
    return found


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
    return [np.asarray(step.statistics_, dtype=np.float64) for _, step in _steps(estimator)
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


def _convert(estimator: Any, features: list[Feature], mode: str, task: str,
             dtype: str) -> tuple[bytes, OnnxSignature]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = FloatTensorType if dtype == "float32" else DoubleTensorType
    if mode == "tensor":
        initial_types = [(TENSOR_INPUT, number([None, len(features)]))]
    else:
        initial_types = [(f.name, StringTensorType([None, 1]) if f.type == "category" else number([None, 1]))
                         for f in features]
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    options = {id(final): {"zipmap": False}} if task == "classification" else None
    try:
        with _histgradientboosting_fix():
            onx = convert_sklearn(estimator, initial_types=initial_types, options=options)
        if dtype == "float64":
            _imputers_as_where(onx, _imputer_statistics(estimator))
            _trees_in_float32(onx)
        onnx_bytes = onx.SerializeToString()
        Model.check_loadable(onnx_bytes)
    except Exception as exc:
        raise BundleBuildError(f"ONNX conversion of {type(estimator).__name__} failed: "
                               f"{str(exc).strip().splitlines()[0][:300]}", code="conversion_failed") from None
    outputs = [o.name for o in onx.graph.output]
    if task == "classification":
        signature = OnnxSignature(input_mode=mode, input_dtype=dtype,  # type: ignore[arg-type]
                                  inputs=[i[0] for i in initial_types], prediction_output=outputs[0],
                                  probability_output=outputs[1])
    else:
        signature = OnnxSignature(input_mode=mode, input_dtype=dtype,  # type: ignore[arg-type]
                                  inputs=[i[0] for i in initial_types], prediction_output=outputs[0])
    return onnx_bytes, signature


# -- parity ------------------------------------------------------------------------------------

def sample_instances(X: pd.DataFrame) -> list[list[Any]]:
    """Rows exactly as a JSON client would send them (NaN becomes null)."""
    return json.loads(X.to_json(orient="values", double_precision=15))


def _parity(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X: pd.DataFrame,
            tolerance: float) -> tuple[Parity, np.ndarray]:
    model = Model(manifest, onnx_bytes, max_rows=max(len(X), 1))
    try:
        result = model.predict(sample_instances(X))
    except InvalidInput as exc:
        raise BundleBuildError(f"sample row refused by the bundle's own schema: {exc.message} ({exc.field})",
                               code="sample_invalid", field=exc.field) from None
    X_sk = X if hasattr(estimator, "feature_names_in_") else X.to_numpy()
    if manifest.task == "classification":
        ref = np.asarray(estimator.predict_proba(X_sk), dtype=np.float64)
        got = np.asarray(result.probabilities, dtype=np.float64)
        diff = float(np.abs(ref - got).max())
        sk_labels = np.asarray(estimator.predict(X_sk), dtype=object)
        agree = sk_labels == np.asarray(result.predictions, dtype=object)
        ordered = np.sort(ref, axis=1)
        genuine = (ordered[:, -1] - ordered[:, -2]) > 2 * tolerance  # rows that are not near-ties
        agreement = float(agree.mean())
        if diff > tolerance or not agree[genuine].all():
            raise BundleBuildError(f"scikit-learn and ONNX disagree: max abs probability difference {diff:.3g} "
                                   f"(tolerance {tolerance:g}), label agreement {agreement:.4%}",
                                   code="parity_failed")
        return Parity(rows=len(X), max_abs_diff=diff, tolerance=tolerance, label_agreement=agreement), got
    ref = np.asarray(estimator.predict(X_sk), dtype=np.float64).reshape(-1)
    got = np.asarray(result.predictions, dtype=np.float64)
    diff = float(np.abs(ref - got).max())
    scale = max(1.0, float(np.abs(ref).max()))
    if diff > tolerance * scale:
        raise BundleBuildError(f"scikit-learn and ONNX disagree: max abs difference {diff:.3g} "
                               f"(tolerance {tolerance:g} x scale {scale:.3g})", code="parity_failed")
    return Parity(rows=len(X), max_abs_diff=diff, tolerance=tolerance), got


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
    return " > ".join(f"{path}:{type(step).__name__}" for path, step in _steps(estimator))


def _default_version(onnx_bytes: bytes) -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + sha256_hex(onnx_bytes)[:8]


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
