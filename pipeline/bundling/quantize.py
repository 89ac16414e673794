"""An int8 (dynamic) variant of a bundle's graph, kept only when it answers like the float graph.

onnxruntime's dynamic quantizer stores MatMul/Gemm weights as int8 and quantizes activations per
call: it applies to MLPs. The linear and tree ONNX-ML operators (LinearClassifier,
LinearRegressor, TreeEnsemble*) have no int8 form, so a logistic regression, a ridge or a tree
ensemble stays as it is. Quantization happens here, at export; serving only runs the graph
(MatMulInteger and DynamicQuantizeLinear are standard onnxruntime kernels).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from functions.common import metrics as m
from functions.common.bundle import Model
from functions.common.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, Parity, Quantization, sha256_hex

QUANTIZED_OPS = ("MatMul", "Gemm")
NOT_QUANTIZABLE = ("quantization does not apply: onnxruntime quantizes MatMul/Gemm weights (MLP students and "
                   "teachers); the linear and tree ONNX-ML operators (LinearClassifier, LinearRegressor, "
                   "TreeEnsemble*) are not quantizable")
QUANTIZED_TOLERANCE = 0.05  # max abs probability (or relative prediction) difference from the float graph
MIN_LABEL_AGREEMENT = 0.99  # share of rows whose label the int8 graph keeps
METRIC_TOLERANCE = 0.005  # accuracy and primary-metric loss on the holdout (relative RMSE for regression)


@dataclass(frozen=True)
class QuantizeOutcome:
    """What ``--quantize`` did: ``kept`` the int8 graph (now the bundle's model.onnx), or why not."""

    kept: bool
    reason: str
    float_bytes: int
    int8_bytes: int | None = None
    parity: Parity | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def quantizable(onnx_bytes: bytes) -> bool:
    import onnx

    return any(node.op_type in QUANTIZED_OPS for node in onnx.load_from_string(onnx_bytes).graph.node)


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs advice on the root logger at WARNING level; it is no news to the user."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """The graph with its MatMul/Gemm weights in int8 (onnxruntime's dynamic quantization)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="slimserve-quantize-") as work, _quiet():
        out = Path(work) / "int8.onnx"
        quantize_dynamic(onnx.load_from_string(onnx_bytes), out, op_types_to_quantize=list(QUANTIZED_OPS),
                         weight_type=QuantType.QInt8)
        return out.read_bytes()


def _answers(manifest: Manifest, onnx_bytes: bytes, rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores (probabilities, or predictions for regression) through the serving code."""
    result = Model(manifest, onnx_bytes, max_rows=max(len(rows), 1)).predict(rows)
    scores = result.probabilities if manifest.task == "classification" else result.predictions
    return np.asarray(result.predictions, dtype=object), np.asarray(scores, dtype=np.float64)


def _metrics(manifest: Manifest, truth: pd.Series, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    if manifest.task == "regression":
        return m.regression_metrics(truth.to_numpy(dtype=float), scores)
    return m.classification_metrics(truth.to_numpy(dtype=object), labels, scores, list(manifest.classes or []))


def _metric_losses(manifest: Manifest, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How much worse each figure the gate may judge became (positive: worse)."""
    if manifest.task == "regression":
        return {"rmse": (after["rmse"] - before["rmse"]) / max(before["rmse"], 1e-12)}
    primary = "roc_auc" if len(manifest.classes or []) == 2 else "macro_f1"
    return {name: before[name] - after[name] for name in ("accuracy", primary)}


def quantize_bundle(bundle: str | Path, rows: pd.DataFrame, target: str | None = None, *,
                    tolerance: float = QUANTIZED_TOLERANCE, min_agreement: float = MIN_LABEL_AGREEMENT,
                    metric_tolerance: float = METRIC_TOLERANCE) -> QuantizeOutcome:
    """Quantize the bundle's graph and keep the int8 one (model.onnx and the manifest rewritten) only
    when, on ``rows`` (holdout rows; with ``target``, their labels judge the metrics), it stays
    within ``tolerance`` of the float graph, keeps ``min_agreement`` of its labels, loses at most
    ``metric_tolerance`` of accuracy and the primary metric, and is smaller. Else the bundle is
    left as it is."""
    from .. import bundler

    folder = Path(bundle)
    manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_bytes())
    float_bytes = (folder / MODEL_FILE).read_bytes()
    if manifest.quantization is not None:
        return QuantizeOutcome(False, "the bundle is already quantized", len(float_bytes))
    if not quantizable(float_bytes):
        return QuantizeOutcome(False, NOT_QUANTIZABLE, len(float_bytes))
    if manifest.onnx.input_dtype != "float32":
        return QuantizeOutcome(False, "quantization does not apply: the graph computes in float64 (int8 "
                               "activations are quantized from float32)", len(float_bytes))
    int8 = quantize_int8(float_bytes)
    instances = bundler.sample_instances(rows[manifest.feature_names])
    float_labels, float_scores = _answers(manifest, float_bytes, instances)
    int8_labels, int8_scores = _answers(manifest, int8, instances)
    diff = float(np.abs(float_scores - int8_scores).max())
    if manifest.task == "regression":
        diff /= max(1.0, float(np.abs(float_scores).max()))
    agreement = float(np.mean(float_labels == int8_labels)) if manifest.task == "classification" else None
    parity = Parity(rows=len(instances), max_abs_diff=diff, tolerance=tolerance, label_agreement=agreement)
    metrics: dict[str, dict[str, float]] = {}
    losses: dict[str, float] = {}
    if target is not None and target in rows.columns:
        metrics = {"float": _metrics(manifest, rows[target], float_labels, float_scores),
                   "int8": _metrics(manifest, rows[target], int8_labels, int8_scores)}
        losses = _metric_losses(manifest, metrics["float"], metrics["int8"])
    refusals = [f"max abs difference from the float graph {diff:.3g} over {tolerance:g}"] if diff > tolerance else []
    if agreement is not None and agreement < min_agreement:
        refusals.append(f"label agreement {agreement:.2%} under {min_agreement:.0%}")
    refusals += [f"{name} {loss:+.4f} worse (tolerance {metric_tolerance:g})" for name, loss in losses.items()
                 if loss > metric_tolerance]
    if len(int8) >= len(float_bytes):
        refusals.append(f"the int8 graph ({len(int8):,} bytes) is no smaller than the float one "
                        f"({len(float_bytes):,} bytes)")
    if refusals:
        return QuantizeOutcome(False, "kept the float graph: " + "; ".join(refusals), len(float_bytes), len(int8),
                               parity, metrics)
    record = Quantization(float_sha256=sha256_hex(float_bytes), float_bytes=len(float_bytes), parity=parity,
                          metric_losses=losses)
    quantized = manifest.model_copy(update={"quantization": record, "files": {**manifest.files,
                                                                                MODEL_FILE: sha256_hex(int8)},
                                            "sizes": {**manifest.sizes, MODEL_FILE: len(int8)}})
    quantized = Manifest.model_validate(quantized.model_dump())
    (folder / MODEL_FILE).write_bytes(int8)
    (folder / MANIFEST_FILE).write_text(quantized.model_dump_json(indent=2) + "\n")
    return QuantizeOutcome(True, f"int8 graph kept: {len(int8):,} bytes (float {len(float_bytes):,}), max abs "
                           f"difference {diff:.3g}" + (f", labels agree {agreement:.2%}" if agreement is not None
                                                       else ""), len(float_bytes), len(int8), parity, metrics)
