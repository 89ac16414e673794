"""Routing inside one function, like SageMaker production variants: the registry's routing item
names a champion and perhaps a canary with its weight; every execution environment reads it (a
read is trusted for ROUTING_TTL_SECONDS), keeps the bundles it names loaded, and sends each
request to one of them by a hash of its request id. Per-role metrics leave as EMF records.
A shadow named there is drawn for its share of requests by another hash of the request id, so
which requests it sees does not depend on which ones the canary answers (functions/common/shadow.py).

Alias `live` belongs to code deployments; models never move it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .bundle import Model, load_model, reader_for_uri
from .errors import ModelUnavailable, SlimserveError
from .holder import UNAVAILABLE_MESSAGE, Log
from .registry import Routing
from .settings import METRICS_NAMESPACE, ModelSettings

ROLES = ("champion", "canary")
ROLE_DIMENSIONS = ["model_name", "model_role"]  # what alarms watch: versions do not exist at synth time
VERSION_DIMENSIONS = ["model_name", "model_role", "model_version"]  # what a release compares
PREDICTION_BINS = 10


@dataclass(frozen=True)
class Routed:
    """The model that answers one request and the role it plays."""

    model: Model
    role: str

    @property
    def version(self) -> str:
        return self.model.version


def traffic_slot(request_id: str) -> int:
    """A request's slot in 0..99, the same for the same request id in every environment."""
    return int.from_bytes(hashlib.sha256(request_id.encode("utf-8")).digest()[:8], "big") % 100


def role_for(request_id: str, canary_weight: int) -> str:
    return "canary" if traffic_slot(request_id) < canary_weight else "champion"


def shadow_slot(request_id: str) -> int:
    """A request's shadow slot in 0..99: a hash of its own, independent of the canary's draw."""
    return traffic_slot("shadow:" + request_id)


@dataclass(frozen=True)
class ShadowDraw:
    """The shadow one request runs: its version, and its model (None: the bundle would not load)."""

    version: str
    model: Model | None


class RoutingSource:
    """The models of one execution environment, as the registry's routing item names them.

    The routing item is read at most once per ``ttl_seconds``; a failed read keeps the last good
    routing. A bundle that fails to load is remembered and retried after ``retry_load_seconds``:
    a canary that cannot load leaves its traffic to the champion; no champion answers 503.
    """

    def __init__(self, read_routing: Callable[[], Routing], load_bundle: Callable[[str, str], Model], *,
                 ttl_seconds: float = 15.0, retry_load_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, logger: Log | None = None,
                 description: str = "the registry's routing item") -> None:
        self._read_routing, self.load_bundle = read_routing, load_bundle
        self.ttl_seconds, self.retry_load_seconds, self.clock = ttl_seconds, retry_load_seconds, clock
        self.log: Log = logger or logging.getLogger("slimserve.routing")
        self._description = description
        self._routing: Routing | None = None
        self._read_at = -math.inf
        self._models: dict[tuple[str, str], Model] = {}  # (bundle uri, manifest sha256) -> model
        self._failures: dict[tuple[str, str], tuple[SlimserveError, float]] = {}
        self._error: SlimserveError | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ModelSettings, read_routing: Callable[[], Routing], *,
                      clock: Callable[[], float] = time.monotonic, logger: Log | None = None) -> RoutingSource:
        def load_bundle(uri: str, manifest_sha256: str) -> Model:
            return load_model(reader_for_uri(uri), expected_manifest_sha256=manifest_sha256 or None,
                              max_rows=settings.max_rows, threads=settings.ort_threads, defer_explanations=True)

        return cls(read_routing, load_bundle, ttl_seconds=settings.routing_ttl_seconds,
                   retry_load_seconds=settings.retry_load_seconds, clock=clock, logger=logger,
                   description=f"registry {settings.registry_table}, model {settings.model_name}")

    def describe(self) -> str:
        return self._description

    # -- what handlers call -----------------------------------------------------------------------

    def route(self, request_id: str | None) -> Routed:
        """The model that answers this request: the canary for its weight's share of request ids."""
        routing = self.routing()
        if routing.canary_version and routing.canary_weight > 0:
            role = role_for(request_id or uuid.uuid4().hex, routing.canary_weight)
            if role == "canary":
                canary = self._model(routing.canary_uri, routing.canary_sha256, "canary")
                if canary is not None:
                    return Routed(canary, "canary")
        return Routed(self.load(), "champion")

    def shadow_for(self, request_id: str | None, served_version: str) -> ShadowDraw | None:
        """The shadow this request also runs, when the routing names one and the request falls in its
        share; never the version that answered it."""
        routing = self.routing()
        if not routing.shadow_version or routing.shadow_share <= 0 or routing.shadow_version == served_version:
            return None
        if shadow_slot(request_id or uuid.uuid4().hex) >= routing.shadow_share:
            return None
        return ShadowDraw(routing.shadow_version, self._model(routing.shadow_uri, routing.shadow_sha256, "shadow"))

    def load(self) -> Model:
        """The champion (health checks and documents describe it); ModelUnavailable when none serves."""
        routing = self.routing()
        if routing.champion_version is None:
            raise ModelUnavailable(UNAVAILABLE_MESSAGE)
        model = self._model(routing.champion_uri, routing.champion_sha256, "champion")
        if model is None:
            raise ModelUnavailable(UNAVAILABLE_MESSAGE)
        return model

    def preload(self) -> None:
        """Load what the routing names at cold start; failures are remembered and logged, not raised."""
        try:
            routing = self.routing()
        except ModelUnavailable:
            return
        if routing.canary_version:
            self._model(routing.canary_uri, routing.canary_sha256, "canary")
        if routing.shadow_version and routing.shadow_share > 0:
            self._model(routing.shadow_uri, routing.shadow_sha256, "shadow")
        if routing.champion_version:
            self._model(routing.champion_uri, routing.champion_sha256, "champion")

    def reset(self) -> None:
        """Forget the routing read and every loaded bundle, as a fresh execution environment would."""
        with self._lock:
            self._routing, self._read_at, self._error = None, -math.inf, None
            self._models.clear()
            self._failures.clear()

    @property
    def last_error(self) -> SlimserveError | None:
        """The latest failure not yet recovered from: a bundle that would not load, or the first routing read."""
        if self._failures:
            return max(self._failures.values(), key=lambda failure: failure[1])[0]
        return self._error

    def routing(self) -> Routing:
        """The routing item as last read, read again once it is older than the TTL."""
        if self._routing is not None and self.clock() - self._read_at < self.ttl_seconds:
            return self._routing
        with self._lock:
            if self._routing is not None and self.clock() - self._read_at < self.ttl_seconds:
                return self._routing
            try:
                routing = self._read_routing()
            except SlimserveError as exc:
                self._read_at = self.clock()  # the next read waits a TTL too: no storm on a throttled table
                self.log.error("routing item could not be read; keeping the last one",
                               extra={"reason": exc.message, "code": exc.code, "model_source": self._description})
                if self._routing is None:
                    self._error = exc
                    raise ModelUnavailable(UNAVAILABLE_MESSAGE) from None
                return self._routing
            self._routing, self._read_at, self._error = routing, self.clock(), None
            self._forget_unnamed(routing)
            return routing

    # -- internals --------------------------------------------------------------------------------

    def _model(self, uri: str, manifest_sha256: str, role: str) -> Model | None:
        key = (uri, manifest_sha256)
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            if key in self._models:
                return self._models[key]
            failed = self._failures.get(key)
            if failed is not None and self.clock() - failed[1] < self.retry_load_seconds:
                return None
            try:
                model = self.load_bundle(uri, manifest_sha256)
            except SlimserveError as exc:
                self._failures[key] = (exc, self.clock())
                self.log.error(f"{role} failed to load; its traffic is not served by it",
                               extra={"reason": exc.message, "code": exc.code, "model_role": role,
                                      "model_source": self._description})
                return None
            self._models[key] = model
            self._failures.pop(key, None)
            return model

    def _forget_unnamed(self, routing: Routing) -> None:
        """Bundles the routing no longer names are dropped, so memory holds three models at most."""
        named = {(routing.champion_uri, routing.champion_sha256), (routing.canary_uri, routing.canary_sha256),
                 (routing.shadow_uri, routing.shadow_sha256)}
        for key in [k for k in self._models if k not in named]:
            del self._models[key]
        for key in [k for k in self._failures if k not in named]:
            del self._failures[key]


# -- per-role metrics (EMF) ---------------------------------------------------------------------------

MetricSink = Callable[[dict[str, Any]], None]


def _print_record(record: dict[str, Any]) -> None:
    """On Lambda, CloudWatch reads EMF records from standard output."""
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() not in ("1", "true"):
        print(json.dumps(record, separators=(",", ":")), flush=True)


_sink: list[MetricSink] = [_print_record]


def set_metric_sink(sink: MetricSink | None) -> MetricSink:
    """Where EMF records go (None: standard output again); returns the previous sink."""
    previous = _sink[0]
    _sink[0] = sink or _print_record
    return previous


def emit_metric_record(record: dict[str, Any]) -> None:
    """One EMF record to the current sink (standard output on Lambda, a list in tests)."""
    _sink[0](record)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def metric_label(value: Any) -> str:
    """A class label as part of a metric name: letters, digits, '_', '.', '-' only, 64 at most."""
    return _UNSAFE.sub("_", str(value))[:64] or "_"


def prediction_counts(model: Model, predictions: Sequence[Any]) -> dict[str, int]:
    """The prediction distribution of one answer: a count per class, or per bin for a regressor."""
    counts: dict[str, int] = {}
    if model.manifest.classes:
        for p in predictions:
            name = f"Predictions_{metric_label(p)}"
            counts[name] = counts.get(name, 0) + 1
        return counts
    low, high = _prediction_range(model)
    for p in predictions:
        name = f"PredictionBin_{_bin(float(p), low, high)}"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _prediction_range(model: Model) -> tuple[float | None, float | None]:
    prediction = model.manifest.profile.prediction if model.manifest.profile is not None else None
    if prediction is None or prediction.class_shares is not None:
        return None, None
    low, high = prediction.score_quantiles[0], prediction.score_quantiles[-1]
    return (float(low), float(high)) if high > low else (None, None)


def _bin(value: float, low: float | None, high: float | None) -> int:
    if not math.isfinite(value):
        return PREDICTION_BINS - 1
    if low is None or high is None:  # no profiled range: log-scale bins of the magnitude
        return min(PREDICTION_BINS - 1, int(math.log2(1 + abs(value))))
    return min(PREDICTION_BINS - 1, max(0, int((value - low) / (high - low) * PREDICTION_BINS)))


def emit_request_metrics(model_name: str, role: str, version: str, *, status: int,
                         latency_ms: float | None = None, counts: dict[str, int] | None = None,
                         timestamp_ms: int | None = None,
                         function_metrics: tuple[dict[str, str], dict[str, tuple[float, str]]] | None = None
                         ) -> dict[str, Any]:
    """One EMF record for one request, under both dimension sets; returns the record.

    ``function_metrics`` (dimensions, then name -> (value, unit)) ride in the same record under
    their own dimension set: one line per request instead of a second record from Powertools."""
    values: dict[str, tuple[float, str]] = {
        "Requests": (1, "Count"), "Errors4xx": (int(400 <= status < 500), "Count"),
        "Errors5xx": (int(status >= 500), "Count")}
    if latency_ms is not None:
        values["ModelLatency"] = (latency_ms, "Milliseconds")
    for name, count in (counts or {}).items():
        values[name] = (count, "Count")
    record: dict[str, Any] = {
        "_aws": {"Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
                 "CloudWatchMetrics": [{"Namespace": METRICS_NAMESPACE,
                                        "Dimensions": [ROLE_DIMENSIONS, VERSION_DIMENSIONS],
                                        "Metrics": [{"Name": n, "Unit": u} for n, (_, u) in values.items()]}]},
        "model_name": model_name, "model_role": role, "model_version": version,
        **{n: v for n, (v, _) in values.items()}}
    if function_metrics is not None:
        dimensions, extra = function_metrics
        record["_aws"]["CloudWatchMetrics"].append({
            "Namespace": METRICS_NAMESPACE, "Dimensions": [list(dimensions)],
            "Metrics": [{"Name": n, "Unit": u} for n, (_, u) in extra.items()]})
        record.update(dimensions)
        record.update({n: v for n, (v, _) in extra.items()})
    _sink[0](record)
    return record
