"""Per-feature contributions for a served row: exact for linear models, TreeSHAP for tree ensembles.

numpy (and onnxruntime for the preprocessing graph) only: no scikit-learn at serving.

The bundle's ``explain.json`` holds what the model computes after its preprocessing: a linear
model's coefficients, or every tree's children, split features, thresholds, leaf values and
covers. The preprocessed row comes from ``explain.onnx``, the served graph cut just before the
estimator, so contributions are computed on exactly the columns the estimator reads; the
contributions of the columns made from one request feature (one-hot groups, a missing-value
indicator) are then summed into that feature.

Contributions are on the model's raw output, named in each answer's ``output``:
``value`` (a regressor), ``log_odds`` (a binary logistic or boosted classifier, of the second
class), ``margin`` (a multi-class one, the predicted class's score before the softmax) or
``probability`` (a tree or forest classifier, averaged over the trees). ``base_value`` plus the
contributions equals that output to rounding (relative 1e-9); the served probabilities of the
same row differ from it only by the bundle's parity with scikit-learn.

Tree ensembles use path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2): the value of a
set of features is the tree's output with the other features integrated out along the covers
(training samples per node). Each leaf contributes on its own: with ``z`` the cover fraction and
``o`` the row's indicator for every distinct feature on its path, the Shapley weight of feature
``i`` is ``(o_i - z_i) * sum_k q_k k! (D-1-k)! / D!``, ``q`` the coefficients of
``prod_{j != i} (z_j + o_j t)``. Leaves are grouped by ``D`` and computed for all rows at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError

EXPLAIN_FILE = "explain.json"
EXPLAIN_GRAPH_FILE = "explain.onnx"
EXPLAIN_FORMAT = 1
MAX_EXPLAIN_ROWS = 100
SUM_TOLERANCE = 1e-9  # relative: base_value + contributions against the raw output computed here
_CHUNK_ELEMENTS = 1 << 21  # rows x leaves x D x D per step: bounds memory whatever the forest


@dataclass(frozen=True)
class Explanations:
    """Per row: the base value, per-feature contributions, and which output they explain."""

    base_values: np.ndarray  # (rows,)
    contributions: np.ndarray  # (rows, features)
    output: str
    classes: list[Any] | None  # the class each row's output belongs to (classifiers)

    def as_json(self, feature_names: list[str]) -> list[dict[str, Any]]:
        rows = []
        for i, base in enumerate(self.base_values.tolist()):
            row: dict[str, Any] = {"base_value": base, "output": self.output,
                                   "contributions": dict(zip(feature_names, self.contributions[i].tolist(),
                                                             strict=True))}
            if self.classes is not None:
                row["class"] = self.classes[i]
            rows.append(row)
        return rows


class Explainer:
    """Contributions per request feature from the preprocessed rows (see the module docstring)."""

    def __init__(self, document: dict[str, Any], graph: bytes | None, feature_names: list[str],
                 classes: list[Any] | None) -> None:
        if document.get("format") != EXPLAIN_FORMAT:
            raise BundleError(f"{EXPLAIN_FILE} format {document.get('format')!r} is not one this loader reads")
        if document["features"] != feature_names:
            raise BundleError(f"{EXPLAIN_FILE} names other features than the manifest")
        self.output: str = document["output"]
        self._groups = _group_matrix(np.asarray(document["groups"], dtype=np.int64), len(feature_names))
        self._output_classes = document.get("output_classes")
        self._classes = classes
        self._transform = _Transform(graph, document.get("transform_output"))
        if document["kind"] == "linear":
            self._model: _Linear | _Trees = _Linear(document)
        elif document["kind"] == "trees":
            self._model = _Trees(document)
        else:
            raise BundleError(f"{EXPLAIN_FILE} has an unknown kind {document['kind']!r}")

    @classmethod
    def from_bytes(cls, raw: bytes, graph: bytes | None, feature_names: list[str],
                   classes: list[Any] | None) -> Explainer:
        try:
            document = json.loads(raw)
            return cls(document, graph, feature_names, classes)
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{EXPLAIN_FILE} is not a valid explanation file: {exc}") from None

    def columns(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The preprocessed rows the estimator reads (float64)."""
        return self._transform(feeds)

    def raw(self, columns: np.ndarray) -> np.ndarray:
        """The raw output (rows, outputs) recomputed here, for checks: what base + contributions sum to."""
        base, phi = self._model.contributions(columns)
        return base[None, :] + phi.sum(axis=1)

    def explain(self, feeds: dict[str, np.ndarray], predictions: list[Any] | None = None) -> Explanations:
        columns = self.columns(feeds)
        base, phi = self._model.contributions(columns)  # (outputs,), (rows, columns, outputs)
        per_feature = np.einsum("rco,cf->rfo", phi, self._groups)
        chosen = self._chosen_outputs(base[None, :] + phi.sum(axis=1), predictions)
        rows = np.arange(len(columns))
        classes = None if self._output_classes is None else [self._output_classes[k] for k in chosen.tolist()]
        return Explanations(base[chosen], per_feature[rows, :, chosen], self.output, classes)

    def _chosen_outputs(self, raw: np.ndarray, predictions: list[Any] | None) -> np.ndarray:
        """One output per row: the only one, the second class of a binary classifier, else the predicted class."""
        rows, outputs = raw.shape
        if outputs == 1:
            return np.zeros(rows, dtype=np.int64)
        if self._output_classes is not None and len(self._output_classes) == 2:
            return np.ones(rows, dtype=np.int64)
        if predictions is not None and self._output_classes is not None:
            index = {c: k for k, c in enumerate(self._output_classes)}
            if all(p in index for p in predictions):
                return np.array([index[p] for p in predictions], dtype=np.int64)
        return np.argmax(raw, axis=1)


def _group_matrix(groups: np.ndarray, features: int) -> np.ndarray:
    """(columns, features): 1 where a preprocessed column is made from that request feature."""
    matrix = np.zeros((len(groups), features))
    used = groups >= 0
    matrix[np.flatnonzero(used), groups[used]] = 1.0
    return matrix


class _Transform:
    """Preprocessed rows: the served graph up to the estimator's input, or the feeds themselves."""

    def __init__(self, graph: bytes | None, output: str | None) -> None:
        self._output = output
        self._session = None
        if graph is not None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            try:
                self._session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises several private types for a corrupt graph
                raise BundleError(f"{EXPLAIN_GRAPH_FILE} cannot be loaded by onnxruntime: {exc}") from None
            self._inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._session is None:
            (matrix,) = feeds.values()
            return np.asarray(matrix, dtype=np.float64)
        (out,) = self._session.run([self._output], {name: feeds[name] for name in self._inputs})
        return np.asarray(out, dtype=np.float64)


class _Linear:
    """raw = coef . x + intercept; contribution of column c = coef_c * (x_c - mean_c) (exact)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.coef = np.asarray(document["coef"], dtype=np.float64)  # (outputs, columns)
        self.mean = np.asarray(document["mean"], dtype=np.float64)
        self.base = self.coef @ self.mean + np.asarray(document["intercept"], dtype=np.float64)

    def contributions(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.base, (columns - self.mean)[:, :, None] * self.coef.T[None, :, :]


@dataclass(frozen=True)
class _LeafGroup:
    """Every leaf (of every tree) with D distinct features on its path."""

    depth: int  # D
    path_nodes: np.ndarray  # (leaves, L): global node ids; padding = the always-true column
    path_left: np.ndarray  # (leaves, L): the direction taken at each node
    slots: np.ndarray  # (leaves, L, D + 1): one-hot of the distinct feature each node splits on
    cover_fraction: np.ndarray  # (leaves, D): z
    columns: np.ndarray  # (leaves, D): the preprocessed column of each distinct feature
    values: np.ndarray  # (leaves, outputs)
    weights: np.ndarray  # (D,): k! (D-1-k)! / D!


class _Trees:
    def __init__(self, document: dict[str, Any]) -> None:
        self.float32 = bool(document["float32"])
        offset = np.asarray(document["offset"], dtype=np.float64)
        features, thresholds, missing_left = [], [], []
        leaves: dict[int, list[tuple[list[int], list[bool], list[int], list[float], list[int], np.ndarray]]] = {}
        base = offset.copy()
        start = 0
        for tree in document["trees"]:
            feature = np.asarray(tree["feature"], dtype=np.int64)
            features.append(np.maximum(feature, 0))
            thresholds.append(np.asarray(tree["threshold"], dtype=np.float64))
            missing_left.append(np.asarray(tree["missing_left"], dtype=bool))
            for leaf in _leaf_paths(tree, start):
                leaves.setdefault(len(leaf[2]), []).append(leaf)
                base += leaf[5] * float(np.prod(leaf[3]))
            start += len(feature)
        self.base = base
        self.outputs = len(offset)
        self.feature = np.concatenate(features)
        self.threshold = np.concatenate(thresholds)
        self.missing_left = np.concatenate(missing_left)
        self.groups = [_leaf_group(depth, members, start) for depth, members in sorted(leaves.items()) if depth]

    def contributions(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = columns.astype(np.float32).astype(np.float64) if self.float32 else columns
        values = x[:, self.feature]
        with np.errstate(invalid="ignore"):
            left = np.where(np.isnan(values), self.missing_left, values <= self.threshold)
        left = np.concatenate([left, np.ones((len(x), 1), dtype=bool)], axis=1)  # padding: always satisfied
        phi = np.zeros((len(x), columns.shape[1], self.outputs))
        for group in self.groups:
            size = max(1, _CHUNK_ELEMENTS // (len(x) * group.depth * group.depth))
            for lo in range(0, len(group.values), size):
                _add_group(phi, left, group, slice(lo, lo + size))
        return self.base, phi


def _leaf_paths(tree: dict[str, Any], start: int) -> list[tuple[list[int], list[bool], list[int], list[float],
                                                                 list[int], np.ndarray]]:
    """Per leaf: path nodes (global ids), directions, the slot of each node's feature, each distinct
    feature's cover fraction, the distinct features, and the leaf's values."""
    left, right = tree["left"], tree["right"]
    feature, cover = tree["feature"], tree["cover"]
    values = np.asarray(tree["value"], dtype=np.float64)
    out = []
    stack: list[tuple[int, list[int], list[bool]]] = [(0, [], [])]
    while stack:
        node, nodes, directions = stack.pop()
        if left[node] < 0:
            distinct: list[int] = []
            fractions: list[float] = []
            slots = []
            for parent, went_left in zip(nodes, directions, strict=True):
                child = left[parent] if went_left else right[parent]
                f = feature[parent]
                if f not in distinct:
                    distinct.append(f)
                    fractions.append(1.0)
                k = distinct.index(f)
                fractions[k] *= cover[child] / cover[parent] if cover[parent] > 0 else 0.0
                slots.append(k)
            out.append(([start + n for n in nodes], directions, distinct, fractions, slots, values[node]))
            continue
        stack.append((left[node], [*nodes, node], [*directions, True]))
        stack.append((right[node], [*nodes, node], [*directions, False]))
    return out


def _leaf_group(depth: int, members: list[Any], padding: int) -> _LeafGroup:
    length = max(len(m[0]) for m in members)
    count = len(members)
    path_nodes = np.full((count, length), padding, dtype=np.int64)
    path_left = np.ones((count, length), dtype=bool)
    slots = np.zeros((count, length, depth + 1))
    slots[:, :, depth] = 1.0
    for i, (nodes, directions, _, _, node_slots, _) in enumerate(members):
        path_nodes[i, :len(nodes)] = nodes
        path_left[i, :len(nodes)] = directions
        slots[i, :len(nodes), depth] = 0.0
        slots[i, np.arange(len(nodes)), node_slots] = 1.0
    weights = np.array([math.factorial(k) * math.factorial(depth - 1 - k) / math.factorial(depth)
                        for k in range(depth)])
    return _LeafGroup(depth, path_nodes, path_left, slots,
                      np.array([m[3] for m in members], dtype=np.float64),
                      np.array([m[2] for m in members], dtype=np.int64),
                      np.array([m[5] for m in members], dtype=np.float64), weights)


def _add_group(phi: np.ndarray, left: np.ndarray, group: _LeafGroup, chunk: slice) -> None:
    """Add the Shapley weights of the leaves in ``chunk`` of ``group`` to ``phi`` for every row."""
    depth = group.depth
    failed = (left[:, group.path_nodes[chunk]] != group.path_left[chunk]).astype(np.float64)  # (r, l, L)
    misses = np.matmul(failed.transpose(1, 0, 2), group.slots[chunk]).transpose(1, 0, 2)  # (r, l, D + 1)
    o = (misses[:, :, :depth] == 0).astype(np.float64)  # the row satisfies every split on that feature
    z = np.broadcast_to(group.cover_fraction[chunk], o.shape)
    # Coefficients of prod_j (z_j + o_j t), lowest degree first.
    poly = np.zeros((*o.shape[:2], depth + 1))
    poly[:, :, 0] = 1.0
    for j in range(depth):
        poly[:, :, 1:] = poly[:, :, 1:] * z[:, :, j, None] + poly[:, :, :-1] * o[:, :, j, None]
        poly[:, :, 0] *= z[:, :, j]
    # Divided by each factor (z_i + o_i t): by z_i where o_i = 0, synthetic division from the top where o_i = 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        by_constant = np.where(z[..., None] > 0, poly[:, :, None, :depth] / z[..., None], 0.0)
    by_linear = np.empty_like(by_constant)
    by_linear[..., depth - 1] = poly[:, :, None, depth]
    for k in range(depth - 1, 0, -1):
        by_linear[..., k - 1] = poly[:, :, None, k] - z * by_linear[..., k]
    quotient = np.where(o[..., None] > 0, by_linear, by_constant)
    shares = (o - z) * (quotient @ group.weights)  # (r, l, D)
    rows = np.arange(phi.shape[0])[:, None, None]
    index = (rows * phi.shape[1] + group.columns[chunk][None]).ravel()
    flat = phi.reshape(-1, phi.shape[2])
    values = group.values[chunk]
    for k in range(phi.shape[2]):
        flat[:, k] += np.bincount(index, weights=(shares * values[None, :, None, k]).ravel(), minlength=len(flat))
