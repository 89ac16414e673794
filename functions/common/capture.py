"""Request capture: a sampled share of the rows served and their answers, to S3 under capture/.

Lambda freezes an execution environment between requests, so nothing flushes in the background.
The request path appends one tuple per sampled request to a list; serialising (JSON Lines), gzip and
the PUT happen inline, in the request that fills the buffer to CAPTURE_MAX_RECORDS rows or finds its
oldest row older than CAPTURE_MAX_SECONDS, and once more on SIGTERM at shutdown. Lambda sends the
runtime SIGTERM only when an extension is registered: ``install_shutdown_flush`` registers an internal
extension (no events) through the Extensions API from the runtime itself, so no layer is needed.

What can be lost: the rows buffered when an environment dies without SIGTERM (a timeout, an
out-of-memory kill, a crash) -- at most CAPTURE_MAX_RECORDS rows or CAPTURE_MAX_SECONDS of traffic
of that environment -- and the rows of a flush whose PUT fails (logged, counted in
CaptureRowsLost). A failed capture never fails a request.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import secrets
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from . import aws
from .layout import capture_key
from .settings import METRICS_NAMESPACE, InferenceSettings

EXTENSION_NAME = "slimserve-capture"
EXTENSIONS_API = "2020-01-01/extension"

Put = Callable[[str, bytes], None]  # (key, gzip body): raises on failure
Emit = Callable[[dict[str, Any]], None]  # one EMF record
# One sampled request: (epoch s, request id, model, version, role, feature names, rows, predictions,
# probabilities, prediction ids, shadow run or None). Kept as given: the work of shaping it is paid at flush.
Pending = tuple[float, str, str, str, str, Sequence[str], Sequence[Any], Any, Any, Any, Any]


def columns(text: str | None) -> frozenset[str]:
    """A comma list setting as a set of names ('' and None: none)."""
    return frozenset(name.strip() for name in (text or "").split(",") if name.strip())


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is captured: the same answer for the same request id, everywhere."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def hashed(value: Any) -> str:
    """A PII column's stand-in: equal values stay equal (joins, counts), the value is not kept."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def print_emf(record: dict[str, Any]) -> None:
    """On Lambda, CloudWatch reads EMF records from standard output."""
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true"):
        print(json.dumps(record, separators=(",", ":")), flush=True)


def s3_put(bucket: str) -> Put:
    def put(key: str, body: bytes) -> None:
        with aws.translated(f"s3://{bucket}/{key}"):
            aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")

    return put


class Capture:
    """The capture buffer of one execution environment."""

    def __init__(self, *, sample_rate: float, put: Put | None, max_records: int = 500, max_seconds: float = 60.0,
                 drop: Iterable[str] = (), hash_columns: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 emit: Emit = print_emf, logger: Any = None) -> None:
        self.sample_rate = sample_rate if put is not None else 0.0
        self.put, self.max_records, self.max_seconds = put, max_records, max_seconds
        self.drop, self.hash_columns = frozenset(drop), frozenset(hash_columns)
        self.clock, self.wall, self.emit = clock, wall, emit
        self.log = logger or logging.getLogger("slimserve.capture")
        self._pending: list[Pending] = []
        self._rows = 0
        self._oldest = 0.0  # clock() of the oldest pending row
        self._lock = threading.Lock()  # one flush at a time (a threaded local server)

    @classmethod
    def from_settings(cls, settings: InferenceSettings, **kwargs: Any) -> Capture:
        put = s3_put(settings.model_bucket) if settings.model_bucket and settings.capture_sample_rate > 0 else None
        return cls(sample_rate=settings.capture_sample_rate, put=put, max_records=settings.capture_max_records,
                   max_seconds=settings.capture_max_seconds, drop=columns(settings.capture_drop_columns),
                   hash_columns=columns(settings.capture_hash_columns), **kwargs)

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0

    @property
    def pending_rows(self) -> int:
        return self._rows

    # -- the request path -------------------------------------------------------------------------------

    def record(self, request_id: str | None, routed: Any, instances: Sequence[Any], result: Any,
               prediction_ids: Any = None, shadow: Any = None) -> None:
        """Keep one answered request if it is sampled; flush when the buffer is full or old.

        ``routed``: the Routed (model and role); ``result``: the Prediction; ``shadow``: the request's
        ShadowRun, when one was drawn (its version and answer join each row). Never raises."""
        if self.sample_rate <= 0:
            return
        request_id = request_id or uuid.uuid4().hex
        if self.sample_rate >= 1 or sampled(request_id, self.sample_rate):
            model = routed.model
            if not self._pending:
                self._oldest = self.clock()
            self._pending.append((self.wall(), request_id, model.manifest.name, model.version, routed.role,
                                  model.schema.names, instances, result.predictions, result.probabilities,
                                  prediction_ids, shadow))
            self._rows += len(instances)
        if self._rows >= self.max_records or (self._pending and self.clock() - self._oldest >= self.max_seconds):
            self.flush()

    # -- flush ------------------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every pending row, one object per model version; the rows written. Never raises."""
        with self._lock:
            pending, self._pending, self._rows = self._pending, [], 0
        if not pending or self.put is None:
            return 0
        written = 0
        for (model, version), group in _by_version(pending).items():
            rows = sum(len(item[6]) for item in group)
            try:
                text = "\n".join(self.lines(group)) + "\n"
                body = gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)
                self.put(capture_key(model, version, datetime.fromtimestamp(self.wall(), UTC),
                                     secrets.token_hex(6)), body)
            except Exception as exc:  # capture is best effort: a failed PUT never fails the request
                self.log.error("capture flush failed; its rows are lost",
                               extra={"reason": getattr(exc, "message", type(exc).__name__), "rows": rows,
                                      "model_version": version})
                self._metrics(model, {"CaptureFlushFailures": 1, "CaptureRowsLost": rows})
                continue
            written += rows
            self._metrics(model, {"CaptureRowsWritten": rows, "CaptureBytes": len(body)})
        return written

    def lines(self, group: Iterable[Pending]) -> Iterator[str]:
        """The JSON Lines of some pending requests: one line per row, after dropping and hashing."""
        dumps = json.JSONEncoder(separators=(",", ":"), default=_plain).encode
        for ts, request_id, model, version, role, names, instances, predictions, proba, ids, shadow in group:
            stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            predictions, proba, ids = _list(predictions) or [], _list(proba), _list(ids)
            shadowed = _shadow_columns(shadow, len(instances))
            for i, instance in enumerate(instances):
                prediction = predictions[i]
                line = {"ts": stamp, "request_id": request_id, "model": model, "version": version, "role": role,
                        "row": self.shaped_row(instance, names), "prediction": prediction,
                        "score": _score(prediction, proba[i] if proba else None),
                        "prediction_id": ids[i] if ids else None}
                yield dumps(line if shadowed is None else {**line, **shadowed[i]})

    def shaped_row(self, instance: Any, names: Sequence[str]) -> dict[str, Any]:
        row = instance if isinstance(instance, dict) else dict(zip(names, instance, strict=False))
        if not (self.drop or self.hash_columns):
            return row
        return {k: hashed(v) if k in self.hash_columns and v is not None else v
                for k, v in row.items() if k not in self.drop}

    def _metrics(self, model: str, values: dict[str, int]) -> None:
        try:
            self.emit({"_aws": {"Timestamp": int(self.wall() * 1000), "CloudWatchMetrics": [{
                "Namespace": METRICS_NAMESPACE, "Dimensions": [["model_name"]],
                "Metrics": [{"Name": name, "Unit": "Bytes" if name.endswith("Bytes") else "Count"}
                            for name in values]}]},
                "model_name": model, **values})
        except Exception:  # a metric that cannot be printed is not worth a failed request
            self.log.exception("capture metrics could not be emitted")

    # -- shutdown ---------------------------------------------------------------------------------------

    def on_sigterm(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        """A SIGTERM handler: flush, then do what the previous handler did (exit by default)."""

        def handle(signum: int, frame: FrameType | None) -> None:
            written = self.flush()
            self.log.info("capture flushed at shutdown", extra={"rows": written})
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(0)

        return handle

    def install_shutdown_flush(self, environ: Mapping[str, str] | None = None) -> bool:
        """On Lambda, with capture on: register the internal extension and flush on SIGTERM.

        Call from the main thread at init (module import). Elsewhere (tests, the local server) nothing is set."""
        env = os.environ if environ is None else environ
        api = env.get("AWS_LAMBDA_RUNTIME_API")
        if not (self.enabled and api) or threading.current_thread() is not threading.main_thread():
            return False
        try:
            register_internal_extension(api)
        except OSError as exc:  # no SIGTERM then: rows buffered at shutdown are lost, as on a crash
            self.log.error("capture extension not registered; no flush at shutdown", extra={"reason": str(exc)})
            return False
        signal.signal(signal.SIGTERM, self.on_sigterm(signal.getsignal(signal.SIGTERM)))
        return True


def register_internal_extension(api: str, name: str = EXTENSION_NAME, timeout: float = 2.0) -> threading.Thread:
    """Register an extension of no events, the condition for Lambda to send the runtime SIGTERM at shutdown.

    Lambda waits for every registered extension to ask for its next event before init ends, so a daemon
    thread asks once and waits: with no events subscribed, no answer comes until the environment goes."""
    request = urllib.request.Request(f"http://{api}/{EXTENSIONS_API}/register", data=b'{"events":[]}', method="POST",
                                     headers={"Lambda-Extension-Name": name, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        identifier = response.headers["Lambda-Extension-Identifier"]
    if not identifier:
        raise OSError("the Extensions API answered no Lambda-Extension-Identifier")
    thread = threading.Thread(target=_wait_for_events, args=(api, identifier), name=name, daemon=True)
    thread.start()
    return thread


def _wait_for_events(api: str, identifier: str) -> None:
    request = urllib.request.Request(f"http://{api}/{EXTENSIONS_API}/event/next",
                                     headers={"Lambda-Extension-Identifier": identifier})
    try:
        while True:  # no events were asked for; an answer (none is expected) is read and waited past
            with urllib.request.urlopen(request) as response:
                response.read()
    except OSError:
        return  # the Runtime API went away: the environment is shutting down


def _by_version(pending: Iterable[Pending]) -> dict[tuple[str, str], list[Pending]]:
    groups: dict[tuple[str, str], list[Pending]] = {}
    for item in pending:
        groups.setdefault((item[2], item[3]), []).append(item)
    return groups


def _list(values: Any) -> list[Any] | None:
    if values is None:
        return None
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _shadow_columns(shadow: Any, rows: int) -> list[dict[str, Any]] | None:
    """The keys a shadowed request adds to each of its rows: the shadow's version and its prediction and
    score (as the served answer's), or, when it failed, its error code. None: no shadow ran."""
    if shadow is None:
        return None
    if shadow.answer is None:
        return [{"shadow_version": shadow.version, "shadow_error": shadow.error}] * rows
    predictions, proba = _list(shadow.answer.predictions) or [], _list(shadow.answer.probabilities)
    return [{"shadow_version": shadow.version, "shadow_prediction": predictions[i],
             "shadow_score": _score(predictions[i], proba[i] if proba else None)} for i in range(rows)]


def _score(prediction: Any, probabilities: Sequence[float] | None) -> float | None:
    """The top class probability (classifiers) or the predicted value (regressors)."""
    if probabilities is not None:
        return float(max(probabilities))
    return float(prediction) if isinstance(prediction, (int, float)) and not isinstance(prediction, bool) else None


def _plain(value: Any) -> Any:
    """numpy scalars and anything else json cannot write, as plain values or text."""
    return value.item() if hasattr(value, "item") else str(value)
