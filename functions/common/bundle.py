"""Load a model bundle, verify every byte of it, and serve predictions with onnxruntime.

Only onnxruntime and numpy run here: no scikit-learn, no scipy, no pickle.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import onnxruntime as ort

from . import aws
from .errors import AwsError, BundleError, ExplainUnsupported, ModelUnavailable, ObjectMissing
from .explain import EXPLAIN_FILE, EXPLAIN_GRAPH_FILE, Explainer
from .manifest import FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE, Manifest, sha256_hex
from .schema import RowSchema

EXPLAIN_FILES = (EXPLAIN_FILE, EXPLAIN_GRAPH_FILE)
_log = logging.getLogger("slimserve.model")

# Probabilities closer than this count as a tie, broken towards the first class as scikit-learn does.
TIE_TOLERANCE = 1e-5
# Up to this many rows, labels are picked from Python lists: numpy's fixed cost per call dominates there.
SMALL_REQUEST_ROWS = 16

Reader = Callable[[str], bytes]


def directory_reader(path: str | Path) -> Reader:
    root = Path(path)

    def read(name: str) -> bytes:
        try:
            return (root / name).read_bytes()
        except FileNotFoundError:
            raise BundleError(f"bundle file {name!r} is missing from {root}") from None

    return read


def s3_reader(client: Any, bucket: str, prefix: str) -> Reader:
    prefix = prefix.strip("/")

    def read(name: str) -> bytes:
        key = f"{prefix}/{name}" if prefix else name
        missing = BundleError(f"bundle file s3://{bucket}/{key} is missing")
        with aws.translated(f"reading s3://{bucket}/{key}", {ObjectMissing: missing, AwsError: BundleError}):
            data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    return read


def reader_for_uri(uri: str, s3_client_factory: Callable[[], Any] | None = None) -> Reader:
    """``s3://bucket/prefix`` or a local folder (plain path or ``file://``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BundleError(f"model URI {uri!r} names no bucket")
        client = aws.client("s3") if s3_client_factory is None else s3_client_factory()
        return s3_reader(client, parsed.netloc, parsed.path)
    if parsed.scheme in ("", "file"):
        return directory_reader(parsed.path if parsed.scheme else uri)
    raise BundleError(f"unsupported model URI scheme {parsed.scheme!r}: use s3:// or a local folder")


def read_manifest(read: Reader, expected_manifest_sha256: str | None = None) -> tuple[Manifest, bytes]:
    raw = read(MANIFEST_FILE)
    if expected_manifest_sha256 and not hmac.compare_digest(sha256_hex(raw), expected_manifest_sha256.lower()):
        raise BundleError("manifest.json does not match the pinned sha256: refusing the bundle")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"manifest.json is not a valid manifest: {_first_line(exc)}") from None
    _check_format_version(document)
    try:
        return Manifest.model_validate(document), raw
    except ValueError as exc:  # RecordError: every problem, each with the field it is in
        raise BundleError(f"manifest.json is not a valid manifest: {_first_line(exc)}") from None


def _check_format_version(document: Any) -> None:
    """Every format up to this loader's own is read; a newer one is refused by name, never guessed at."""
    version = document.get("format_version", 1) if isinstance(document, dict) else None
    if type(version) is int and version > FORMAT_VERSION:
        raise BundleError(f"manifest format_version {version} is newer than this loader reads (up to "
                          f"{FORMAT_VERSION}): deploy the code that wrote the bundle",
                          code="unsupported_format_version")


def verified_files(read: Reader, manifest: Manifest, names: list[str] | None = None,
                   known: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The bundle's files (or those named), each checked against its sha256 in the manifest; ``known``
    holds bytes already read (still checked)."""
    files = {}
    for name in manifest.files if names is None else names:
        data = (known or {}).get(name)
        data = read(name) if data is None else data
        if not hmac.compare_digest(sha256_hex(data), manifest.files[name]):
            raise BundleError(f"{name} does not match its sha256 in the manifest: refusing the bundle")
        files[name] = data
    return files


@dataclass(frozen=True)
class Prediction:
    predictions: list[Any]
    probabilities: list[list[float]] | None


class Model:
    """A verified bundle ready to predict. Build it once per process with :func:`load_model`."""

    def __init__(self, manifest: Manifest, onnx_bytes: bytes, *, max_rows: int = 10_000, threads: int = 1,
                 explain_files: dict[str, bytes] | None = None, read: Reader | None = None) -> None:
        """``read``: the explanation files are read from the bundle on the first request that asks, and
        checked against the manifest then (``explain_files``: already read and checked)."""
        self.manifest = manifest
        self._explain_files = {n: b for n, b in (explain_files or {}).items() if n in EXPLAIN_FILES}
        self._read = read
        self._explainer: Explainer | None = None
        self._explain_refused: str | None = None  # a file that failed its sha256: refused from then on
        self._explainer_lock = threading.Lock()
        self.session = self.check_loadable(onnx_bytes, threads)
        self._check_signature()
        self.schema = RowSchema(manifest.features, manifest.onnx, max_rows, manifest.ignored_columns)
        self._classes = np.array(manifest.classes, dtype=object) if manifest.classes else None
        self._class_list = list(manifest.classes or ())
        sig = manifest.onnx
        self._outputs = [sig.probability_output if self._classes is not None else sig.prediction_output]

    @staticmethod
    def check_loadable(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private types for a corrupt graph
            raise BundleError(f"model.onnx cannot be loaded by onnxruntime: {_first_line(exc)}") from None

    @property
    def version(self) -> str:
        return self.manifest.version

    def _check_signature(self) -> None:
        sig = self.manifest.onnx
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != sig.inputs:
            raise BundleError(f"model.onnx inputs {inputs} do not match the manifest's {sig.inputs}")
        wanted = {sig.prediction_output} | ({sig.probability_output} if sig.probability_output else set())
        if not wanted <= outputs:
            raise BundleError(f"model.onnx lacks outputs {sorted(wanted - outputs)} named in the manifest")
        if sig.input_mode == "tensor" and len(self.manifest.features) != (self.session.get_inputs()[0].shape[1]):
            raise BundleError("model.onnx input width does not match the number of features")

    def predict(self, instances: Any) -> Prediction:
        return self.predict_feeds(self.schema.to_feeds(instances), rows=len(instances))

    def predict_feeds(self, feeds: dict[str, np.ndarray], rows: int | None = None) -> Prediction:
        """Labels and probabilities as lists (a float32 output's values are exact as Python floats)."""
        if (len(next(iter(feeds.values()))) if rows is None else rows) > SMALL_REQUEST_ROWS:
            predictions, proba = self.score(feeds)
            return Prediction(predictions.tolist(), None if proba is None else proba.tolist())
        (out,) = self.session.run(self._outputs, feeds)
        if self._classes is None:
            return Prediction(np.asarray(out, dtype=np.float64).reshape(-1).tolist(), None)
        probabilities = np.asarray(out).tolist()
        classes = self._class_list
        return Prediction([classes[first_max_row(row)] for row in probabilities], probabilities)

    @property
    def explainable(self) -> bool:
        return EXPLAIN_FILE in (self.manifest.files if self._read is not None else self._explain_files)

    def explain(self, instances: Any, predictions: list[Any] | None = None) -> list[dict[str, Any]]:
        """Per row: base value and per-feature contributions (functions/common/explain.py says of what)."""
        return self.explainer().explain(self.schema.to_feeds(instances), predictions).as_json(
            self.manifest.feature_names)

    def explainer(self) -> Explainer:
        """Built on the first request that asks (most never do), once, from the verified files."""
        if not self.explainable:
            raise ExplainUnsupported(f"model {self.manifest.name} {self.version} ({self.manifest.estimator}) carries "
                                     "no explanations: linear models and tree ensembles bundled by this version "
                                     "have them", field="explain")
        with self._explainer_lock:
            if self._explainer is None:
                files = self._explain_files if self._read is None else self._read_explain_files()
                self._explainer = Explainer.from_bytes(files[EXPLAIN_FILE], files.get(EXPLAIN_GRAPH_FILE),
                                                       self.manifest.feature_names, self.manifest.classes)
            return self._explainer

    def _read_explain_files(self) -> dict[str, bytes]:
        """Read and checked once; a file that fails its sha256 refuses every explanation from then on,
        a failed read is tried again by the next request. Callers see a fixed message; the log, the reason."""
        assert self._read is not None
        if self._explain_refused is None:
            names = [n for n in EXPLAIN_FILES if n in self.manifest.files]
            try:
                return verified_files(self._read, self.manifest, names)
            except BundleError as exc:
                if "sha256" in exc.message:
                    self._explain_refused = exc.message
                _log.error("explanation files unavailable", extra={"reason": exc.message, "code": exc.code})
        raise ModelUnavailable(f"explanations of model {self.manifest.name} {self.version} are unavailable; "
                               "predictions are not affected")

    def score(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (class labels or values) and class probabilities (classifiers) as arrays."""
        (out,) = self.session.run(self._outputs, feeds)
        if self._classes is None:
            return np.asarray(out, dtype=np.float64).reshape(-1), None
        proba = np.asarray(out, dtype=np.float64)
        return self._classes[first_max(proba)], proba


def first_max(proba: np.ndarray) -> np.ndarray:
    """Row-wise argmax where near-ties go to the first class, matching scikit-learn's argmax on
    exact ties even when float32 rounding in ONNX nudges one side up."""
    if 0 < proba.shape[1] <= 16:  # column by column: numpy's row-wise max over a few columns is 20x slower
        top = proba[:, 0]
        for j in range(1, proba.shape[1]):
            top = np.maximum(top, proba[:, j])
    else:
        top = proba.max(axis=1)
    return np.argmax(proba >= (top - TIE_TOLERANCE)[:, None], axis=1)


def first_max_row(row: list[float]) -> int:
    """:func:`first_max` of one row of Python floats, with the same answer (NaN anywhere: the first class)."""
    total = sum(row)
    if total != total:  # NaN: numpy's argmax over no candidates
        return 0
    floor = max(row) - TIE_TOLERANCE
    return next(i for i, p in enumerate(row) if p >= floor)


def load_model(read: Reader, *, expected_manifest_sha256: str | None = None, max_rows: int = 10_000,
               threads: int = 1, defer_explanations: bool = False) -> Model:
    """A verified model. Every file is read and checked here, unless ``defer_explanations`` (serving):
    the explanation files wait for the first request that asks, and model.onnx, whose name is fixed,
    is read while the manifest is (both are checked before either is used)."""
    if not defer_explanations:
        manifest, _ = read_manifest(read, expected_manifest_sha256)
        files = verified_files(read, manifest)
        return Model(manifest, files[MODEL_FILE], max_rows=max_rows, threads=threads, explain_files=files)
    onnx_read = _Background(read, MODEL_FILE)
    manifest, _ = read_manifest(read, expected_manifest_sha256)
    now = [n for n in manifest.files if n not in EXPLAIN_FILES]
    files = verified_files(read, manifest, now, known={MODEL_FILE: onnx_read.result()})
    return Model(manifest, files[MODEL_FILE], max_rows=max_rows, threads=threads, read=read)


class _Background:
    """One bundle file read on a thread of its own (S3 round trips overlap); result() waits for it."""

    def __init__(self, read: Reader, name: str) -> None:
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(read, name), daemon=True)
        self._thread.start()

    def _run(self, read: Reader, name: str) -> None:
        try:
            self._data = read(name)
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc

    def result(self) -> bytes:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
