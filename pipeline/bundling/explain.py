"""The bundle's explanation files: what functions/common/explain.py needs to explain a served row.

``explain.json`` holds a linear model's coefficients, or each tree's children, split features,
thresholds, missing-value directions, leaf values and covers (scikit-learn's weighted samples per
node; HistGradientBoosting keeps unweighted counts only) -- the ONNX tree attributes carry no
covers. ``explain.onnx`` is the served graph cut just before the estimator: it turns a request's
feeds into the columns the estimator reads. Which request feature each column is made from is
found by changing one feature at a time on sample rows; a column made from two features
(polynomial features, PCA) leaves the bundle without explanations, as do models other than linear
ones and tree ensembles. Everything is checked before it is written: contributions plus the base
value must give scikit-learn's own raw output on the sample rows, else no file is written.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.ensemble._forest import BaseForest
from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
from sklearn.pipeline import Pipeline
from sklearn.tree import BaseDecisionTree

from functions.common.bundle import Model
from functions.common.errors import SlimserveError
from functions.common.explain import EXPLAIN_FILE, EXPLAIN_FORMAT, EXPLAIN_GRAPH_FILE, Explainer
from functions.common.manifest import Manifest
from functions.common.schema import RowSchema

CHECK_ROWS = 256  # sample rows the contributions are checked on before the files are written
PERTURBED_ROWS = 64  # sample rows each feature is changed on to find the columns made from it
MAX_CATEGORIES_TRIED = 64


def explanation_files(estimator: Any, manifest: Manifest, onnx_bytes: bytes, X_all: pd.DataFrame,
                      background: pd.DataFrame, rows: list[list[Any]],
                      tolerance: float) -> tuple[dict[str, bytes], str]:
    """The files to add to the bundle (none when the model cannot be explained) and why."""
    final, pre = _split(estimator)
    kind = _kind(final)
    if kind is None:
        return {}, f"{type(final).__name__} has no exact explanation: linear models and tree ensembles only"
    X_sk = X_all.head(CHECK_ROWS)
    columns = _transformed(pre, X_sk)
    groups, why = _groups(pre, manifest, X_all.head(PERTURBED_ROWS), _transformed(pre, background))
    if groups is None:
        return {}, why
    files: dict[str, bytes] = {}
    document: dict[str, Any] = {"format": EXPLAIN_FORMAT, "features": manifest.feature_names, "groups": groups,
                                "transform_output": None}
    if pre is not None:
        cut = _cut_before_estimator(onnx_bytes, manifest, rows[:CHECK_ROWS], columns)
        if cut is None:
            return {}, "no tensor in the ONNX graph matches the preprocessed rows the estimator reads"
        files[EXPLAIN_GRAPH_FILE], document["transform_output"] = cut
    classes = list(manifest.classes) if manifest.classes is not None else None
    raw = _sklearn_raw(final, kind, columns)
    document.update(_linear(final, classes, _transformed(pre, background)) if kind == "linear"
                    else _trees(final, classes, raw.shape[1]))
    if kind == "trees":  # the boosted models' starting score (a prior): what the trees leave unexplained
        unexplained = raw - Explainer(document, None, manifest.feature_names, classes).raw(columns)
        document["offset"] = np.median(unexplained, axis=0).tolist()  # a row on a float32 boundary is no guide
    files[EXPLAIN_FILE] = json.dumps(document, separators=(",", ":")).encode()
    try:
        explainer = Explainer.from_bytes(files[EXPLAIN_FILE], files.get(EXPLAIN_GRAPH_FILE),
                                         manifest.feature_names, classes)
        model = Model(manifest, onnx_bytes, max_rows=max(len(rows), 1))
        feeds = model.schema.to_feeds(rows[:CHECK_ROWS])
        explained = _as_served(explainer.raw(explainer.columns(feeds)), document["output"])
    except SlimserveError as exc:
        return {}, f"the explanation files cannot be read back: {exc.message}"
    served_predictions, served_probabilities = model.score(feeds)
    served = (served_predictions.reshape(-1, 1) if served_probabilities is None else served_probabilities)
    diff = float(np.abs(explained - served).max())
    if diff > tolerance * max(1.0, float(np.abs(served).max())):
        return {}, f"base value plus contributions miss the served answers by {diff:.3g} on the sample rows"
    return files, f"{kind} contributions, checked against the served answers on {len(served)} sample rows " \
                  f"(max abs difference {diff:.3g})"


def _as_served(raw: np.ndarray, output: str) -> np.ndarray:
    """Raw outputs as the bundle serves them: probabilities of every class, or the predicted value."""
    if output == "log_odds":
        positive = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.column_stack([1.0 - positive, positive])
    if output == "margin":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return raw


def _split(estimator: Any) -> tuple[Any, Any]:
    if isinstance(estimator, Pipeline):
        return estimator.steps[-1][1], (estimator[:-1] if len(estimator.steps) > 1 else None)
    return estimator, None


def _kind(final: Any) -> str | None:
    if isinstance(final, (LinearModel, LinearClassifierMixin)) and hasattr(final, "coef_"):
        return "linear"
    if isinstance(final, (BaseDecisionTree, BaseForest, GradientBoostingClassifier, GradientBoostingRegressor)):
        return "trees"
    if isinstance(final, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        return None if getattr(final, "is_categorical_", None) is not None else "trees"
    return None


def _transformed(pre: Any, X: pd.DataFrame) -> np.ndarray:
    out = X.to_numpy(dtype=np.float64) if pre is None else pre.transform(X)
    return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)


def _sklearn_raw(final: Any, kind: str, columns: np.ndarray) -> np.ndarray:
    """What the contributions sum to: probabilities of a tree classifier, margins of the other
    classifiers, the predicted value of a regressor; (rows, outputs)."""
    frame = _named(final, columns)
    if kind == "trees" and isinstance(final, (BaseDecisionTree, BaseForest)) and hasattr(final, "predict_proba"):
        return np.asarray(final.predict_proba(frame), dtype=np.float64)
    if hasattr(final, "decision_function") and hasattr(final, "classes_"):
        return np.asarray(final.decision_function(frame), dtype=np.float64).reshape(len(columns), -1)
    return np.asarray(final.predict(frame), dtype=np.float64).reshape(len(columns), -1)


def _named(final: Any, columns: np.ndarray) -> Any:
    names = getattr(final, "feature_names_in_", None)
    return columns if names is None else pd.DataFrame(columns, columns=list(names))


# -- which request feature each column comes from -------------------------------------------------

def _groups(pre: Any, manifest: Manifest, X: pd.DataFrame, background: np.ndarray) -> tuple[list[int] | None, str]:
    if pre is None:
        return list(range(len(manifest.features))), ""
    base = _transformed(pre, X)
    made_from = np.zeros((base.shape[1], len(manifest.features)), dtype=bool)
    for j, feature in enumerate(manifest.features):
        for changed in _variants(X, feature):
            other = _transformed(pre, changed)
            made_from[:, j] |= ~((other == base) | (np.isnan(other) & np.isnan(base))).all(axis=0)
    groups = []
    for c, sources in enumerate(made_from):
        names = [manifest.features[j].name for j in np.flatnonzero(sources)]
        if len(names) > 1:
            return None, f"preprocessed column {c} is made from several features ({', '.join(names[:4])})"
        if not names and np.ptp(background[:, c]) > 0:
            return None, f"preprocessed column {c} varies but no single feature changes it"
        groups.append(manifest.feature_names.index(names[0]) if names else -1)
    return groups, ""


def _variants(X: pd.DataFrame, feature: Any) -> list[pd.DataFrame]:
    """Copies of ``X`` with one feature changed: every known category, or other numbers (and null)."""
    name = feature.name
    if feature.type == "category":
        values: list[Any] = list((feature.categories or [])[:MAX_CATEGORIES_TRIED])
        values += [None] if feature.nullable else []
    else:
        column = X[name].astype(np.float64)
        values = [np.roll(column.to_numpy(), 1), column.to_numpy() + 1.0, 0.0]
        values += [np.nan] if feature.nullable else []
    out = []
    for value in values:
        changed = X.copy()
        if feature.type == "category":
            changed[name] = changed[name].astype(object)
        else:
            changed[name] = changed[name].astype(np.float64)
        changed[name] = value
        out.append(changed)
    return out


# -- the served graph, cut before the estimator --------------------------------------------------

def _cut_before_estimator(onnx_bytes: bytes, manifest: Manifest, rows: list[list[Any]],
                          columns: np.ndarray) -> tuple[bytes, str] | None:
    """The part of the served graph that computes the estimator's input, with that tensor as its
    only output: the tensor whose values on the sample rows are scikit-learn's preprocessed ones."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    # Every tensor the graph computes, as an output of unstated type (shape inference skips ai.onnx.ml ops).
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for node in model.graph.node for o in node.output)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [(o.name, o.type) for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]
    schema = RowSchema(manifest.features, manifest.onnx, max(len(rows), 1), manifest.ignored_columns)
    values = session.run([name for name, _ in outputs], schema.to_feeds(rows))
    scale = max(1.0, float(np.abs(columns).max()))
    best: tuple[float, str, str] | None = None
    for (name, kind), value in zip(outputs, values, strict=True):
        value = np.asarray(value, dtype=np.float64)
        if value.shape != columns.shape:
            continue
        diff = float(np.nanmax(np.abs(value - columns), initial=0.0))
        if diff <= 1e-4 * scale and (best is None or diff <= best[0]):
            best = (diff, name, kind)
    if best is None:
        return None
    _, chosen, kind = best
    needed, nodes = {chosen}, []
    for node in reversed(model.graph.node):
        if needed & set(node.output):
            nodes.append(node)
            needed.update(node.input)
    graph = helper.make_graph(list(reversed(nodes)), "explain_preprocessing",
                              [i for i in model.graph.input if i.name in needed],
                              [helper.make_tensor_value_info(chosen, TensorProto.FLOAT if kind == "tensor(float)"
                                                             else TensorProto.DOUBLE, [None, columns.shape[1]])],
                              [t for t in model.graph.initializer if t.name in needed])
    cut = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return cut.SerializeToString(), chosen


# -- model documents ------------------------------------------------------------------------------

def _linear(final: Any, classes: list[Any] | None, background: np.ndarray) -> dict[str, Any]:
    coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))
    output, output_classes = _output(classes, len(coef), probability=False)
    return {"kind": "linear", "output": output, "output_classes": output_classes, "coef": coef.tolist(),
            "intercept": intercept.tolist(), "mean": np.nanmean(background, axis=0).tolist()}


def _output(classes: list[Any] | None, outputs: int, probability: bool) -> tuple[str, list[Any] | None]:
    if classes is None:
        return "value", None
    if probability:
        return "probability", classes
    return ("log_odds", [classes[1]]) if outputs == 1 else ("margin", classes)


def _trees(final: Any, classes: list[Any] | None, outputs: int) -> dict[str, Any]:
    probability = classes is not None and isinstance(final, (BaseDecisionTree, BaseForest))
    if isinstance(final, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        trees = [_hist_tree(predictor, k, outputs) for stage in final._predictors for k, predictor in enumerate(stage)]
        float32 = True
    elif isinstance(final, (GradientBoostingClassifier, GradientBoostingRegressor)):
        trees = [_sklearn_tree(tree.tree_, outputs, final.learning_rate, k)
                 for stage in final.estimators_ for k, tree in enumerate(stage)]
        float32 = True
    else:
        members = final.estimators_ if isinstance(final, BaseForest) else [final]
        trees = [_sklearn_tree(m.tree_, outputs, 1.0 / len(members), None, probability) for m in members]
        float32 = True
    output, output_classes = _output(classes, outputs, probability)
    return {"kind": "trees", "output": output, "output_classes": output_classes, "float32": float32,
            "offset": [0.0] * outputs, "trees": trees}


def _sklearn_tree(tree: Any, outputs: int, weight: float, output: int | None,
                  probability: bool = False) -> dict[str, Any]:
    value = np.asarray(tree.value[:, 0, :], dtype=np.float64)
    if probability:
        value = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
    if output is not None:
        placed = np.zeros((len(value), outputs))
        placed[:, output] = value[:, 0]
        value = placed
    return {"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
            "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(),
            "missing_left": np.asarray(tree.missing_go_to_left, dtype=bool).tolist(),
            "cover": tree.weighted_n_node_samples.tolist(), "value": (value * weight).tolist()}


def _hist_tree(predictor: Any, output: int, outputs: int) -> dict[str, Any]:
    nodes = predictor.nodes
    leaf = nodes["is_leaf"].astype(bool)
    value = np.zeros((len(nodes), outputs))
    value[:, output] = np.where(leaf, nodes["value"], 0.0)
    return {"left": np.where(leaf, -1, nodes["left"].astype(np.int64)).tolist(),
            "right": np.where(leaf, -1, nodes["right"].astype(np.int64)).tolist(),
            "feature": np.where(leaf, -2, nodes["feature_idx"]).tolist(),
            # The served graph compares in float32 on both sides (ONNX tree thresholds are float32).
            "threshold": nodes["num_threshold"].astype(np.float32).astype(np.float64).tolist(),
            "missing_left": nodes["missing_go_to_left"].astype(bool).tolist(),
            "cover": nodes["count"].astype(np.float64).tolist(), "value": value.tolist()}
