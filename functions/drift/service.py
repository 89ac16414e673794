"""Drift of one model: its captured traffic over a window against the champion's feature profile.

Reads `capture/<model>/<version>/<hour>/` objects of the champion and canary (inputs are one population
whatever role answered them); a corrupt object is skipped and counted, never fatal. Below the minimum
sample size nothing is published: a thin window is noise, and a missing datapoint leaves the alarms
where they are. Otherwise one EMF record per feature (DriftPsi, DriftKs, NullRateDelta; dimensions
model_name, feature) unless PER_FEATURE_METRICS is false, one per model (DriftPsiMax, DriftKsMax,
PredictionPsi, DriftRows, CaptureObjectsCorrupt; model_name: what the alarms read) and the canary's own
PredictionPsi (model_name, model_role). Per-feature metrics are most of the monitoring bill (one custom metric
each); with them off the per-feature figures stay in the run's log line (`DriftReport.summary`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..common import aws
from ..common.bundle import read_manifest, reader_for_uri
from ..common.layout import capture_model_prefix
from ..common.manifest import CategoryProfile, FeatureProfile, Manifest, NumericProfile, PredictionProfile
from ..common.registry import Routing
from ..common.routing import emit_metric_record
from ..common.settings import METRICS_NAMESPACE, DriftSettings
from .stats import Comparison, compare_categories, compare_numeric

MAX_OBJECT_BYTES = 64 * 1024 * 1024  # decompressed: a larger capture object is refused as corrupt
HASHED_PREFIX = "sha256:"  # a column hashed at capture: its values cannot be compared with the profile
MODEL_DIMENSIONS, FEATURE_DIMENSIONS, ROLE_DIMENSIONS = ["model_name"], ["model_name", "feature"], [
    "model_name", "model_role"]


COUNTS = frozenset({"DriftRows", "CaptureObjectsCorrupt"})


class CorruptCapture(ValueError):
    """A capture object that is not gzip of JSON Lines records with a `row` and a `prediction`."""


@dataclass
class Captured:
    """The rows of one window: inputs of every role, predictions per version."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, list[Any]] = field(default_factory=dict)
    objects: int = 0
    corrupt: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class DriftReport:
    model: str
    version: str
    rows: int
    objects: int
    corrupt: int
    published: bool
    reason: str
    features: dict[str, Comparison]
    skipped: dict[str, str]
    prediction: Comparison | None = None
    canary_prediction: Comparison | None = None

    @property
    def psi_max(self) -> float:
        return max((c.psi for c in self.features.values()), default=0.0)

    @property
    def ks_max(self) -> float:
        return max((c.ks for c in self.features.values() if c.ks is not None), default=0.0)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "rows": self.rows, "objects": self.objects,
                "corrupt_objects": self.corrupt, "published": self.published, "reason": self.reason,
                "psi_max": round(self.psi_max, 6), "ks_max": round(self.ks_max, 6),
                "prediction_psi": None if self.prediction is None else round(self.prediction.psi, 6),
                "features": {name: _figures(c) for name, c in self.features.items()}, "skipped": self.skipped}


def _figures(comparison: Comparison) -> dict[str, float | None]:
    """One feature's figures as the log line carries them (the per-feature metrics' values)."""
    return {"psi": round(comparison.psi, 6), "ks": None if comparison.ks is None else round(comparison.ks, 6),
            "null_rate_delta": round(comparison.null_rate_delta, 6)}


# -- reading captures -------------------------------------------------------------------------------

def parse_capture(body: bytes) -> list[dict[str, Any]]:
    """The records of one capture object, or CorruptCapture (bad gzip, too large, a bad line)."""
    try:
        inflater = zlib.decompressobj(wbits=31)
        text = inflater.decompress(body, MAX_OBJECT_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise CorruptCapture("truncated, or larger than the decompressed limit")
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (zlib.error, ValueError) as exc:
        raise CorruptCapture(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("row"), dict) or "prediction" not in record:
            raise CorruptCapture("a line without a row object and a prediction")
    return records


def window_hours(now: dt.datetime, hours: int) -> list[dt.datetime]:
    """The UTC hour partitions a window of ``hours`` ending at ``now`` touches, oldest first."""
    end = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return [end - dt.timedelta(hours=i) for i in range(hours, -1, -1)]


def capture_keys(s3: Any, bucket: str, model: str, version: str, now: dt.datetime, hours: int) -> Iterator[str]:
    """Keys of the version's capture objects flushed within the window (their names carry epoch ms)."""
    start_ms = int((now - dt.timedelta(hours=hours)).timestamp() * 1000)
    end_ms = int(now.timestamp() * 1000)
    paginator = s3.get_paginator("list_objects_v2")
    for hour in window_hours(now, hours):
        prefix = f"{capture_model_prefix(model)}{version}/{hour:%Y/%m/%d/%H}/"
        with aws.translated(f"listing s3://{bucket}/{prefix}"):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    stamp = item["Key"].rsplit("/", 1)[-1].split("-", 1)[0]
                    if stamp.isdigit() and start_ms <= int(stamp) <= end_ms:
                        yield item["Key"]


def read_window(s3: Any, bucket: str, model: str, versions: list[str], now: dt.datetime, hours: int,
                max_rows: int, on_corrupt: Callable[[str, str], None] | None = None) -> Captured:
    captured = Captured()
    for version in versions:
        predictions = captured.predictions.setdefault(version, [])
        for key in capture_keys(s3, bucket, model, version, now, hours):
            if len(captured.rows) >= max_rows:
                captured.truncated = True
                return captured
            with aws.translated(f"reading s3://{bucket}/{key}"):
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            captured.objects += 1
            try:
                records = parse_capture(body)
            except CorruptCapture as exc:
                captured.corrupt += 1
                if on_corrupt is not None:
                    on_corrupt(key, str(exc))
                continue
            captured.rows.extend(r["row"] for r in records)
            predictions.extend(r["prediction"] for r in records)
    return captured


def read_profile(uri: str, manifest_sha256: str, s3_factory: Callable[[], Any] | None = None) -> Manifest:
    """The bundle's manifest, checked against the routing item's sha256 pin."""
    manifest, _ = read_manifest(reader_for_uri(uri, s3_factory), manifest_sha256 or None)
    return manifest


# -- comparing ----------------------------------------------------------------------------------------

def _is_null(value: Any, markers: frozenset[str]) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value in markers)


def _numbers(values: list[Any], markers: frozenset[str]) -> tuple[np.ndarray, int]:
    out: list[float] = []
    for value in values:
        if _is_null(value, markers):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue  # serving refused it: not a row the model answered
        if math.isfinite(number):
            out.append(number)
    return np.asarray(out, dtype=float), len(values) - len(out)


def compare_feature(profile: NumericProfile | CategoryProfile, values: list[Any],
                    markers: frozenset[str]) -> Comparison:
    if isinstance(profile, NumericProfile):
        numbers, nulls = _numbers(values, markers)
        return compare_numeric(profile.quantiles, profile.null_rate, numbers, nulls)
    present = [str(v) for v in values if not _is_null(v, markers)]
    return compare_categories(profile.shares, profile.null_rate, present, len(values) - len(present))


def compare_predictions(profile: PredictionProfile, predictions: list[Any]) -> Comparison:
    if profile.class_shares is not None:
        return compare_categories(profile.class_shares, 0.0, [str(p) for p in predictions if p is not None],
                                  sum(p is None for p in predictions))
    numbers, nulls = _numbers(predictions, frozenset())
    return compare_numeric(profile.score_quantiles, 0.0, numbers, nulls)


def compare(profile: FeatureProfile, rows: list[dict[str, Any]], markers: frozenset[str]
            ) -> tuple[dict[str, Comparison], dict[str, str]]:
    """Every profiled feature's comparison, and the features left out with why."""
    features: dict[str, Comparison] = {}
    skipped: dict[str, str] = {}
    for name, feature in profile.features.items():
        values = [row.get(name) for row in rows]
        if not any(name in row for row in rows):
            skipped[name] = "not captured (dropped at capture)"
        elif any(isinstance(v, str) and v.startswith(HASHED_PREFIX) for v in values):
            skipped[name] = "hashed at capture"
        else:
            features[name] = compare_feature(feature, values, markers)
    return features, skipped


def drift_report(routing: Routing, champion: Manifest, canary: Manifest | None, captured: Captured,
                 min_samples: int) -> DriftReport:
    version = routing.champion_version or ""
    base = DriftReport(model=routing.model, version=version, rows=len(captured.rows), objects=captured.objects,
                       corrupt=captured.corrupt, published=False, reason="", features={}, skipped={})
    if champion.profile is None:
        return replace(base, reason=f"bundle {version} has no feature profile (manifest format "
                                    f"{champion.format_version}): export it again to monitor drift")
    if len(captured.rows) < min_samples:
        return replace(base, reason=f"{len(captured.rows)} captured rows in the window, fewer than {min_samples}")
    markers = frozenset(champion.missing_markers)
    features, skipped = compare(champion.profile, captured.rows, markers)
    champion_predictions = captured.predictions.get(version, [])
    prediction = (compare_predictions(champion.profile.prediction, champion_predictions)
                  if champion.profile.prediction is not None and len(champion_predictions) >= min_samples else None)
    canary_predictions = captured.predictions.get(routing.canary_version or "", [])
    canary_prediction = (compare_predictions(canary.profile.prediction, canary_predictions)
                         if canary is not None and canary.profile is not None and canary.profile.prediction
                         is not None and len(canary_predictions) >= min_samples else None)
    return replace(base, published=True, reason="compared", features=features, skipped=skipped,
                   prediction=prediction, canary_prediction=canary_prediction)


# -- publishing ---------------------------------------------------------------------------------------

def _record(dimensions: list[str], values: dict[str, Any], metrics: dict[str, float], timestamp_ms: int,
            unit: str = "None") -> dict[str, Any]:
    return {"_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": [{
        "Namespace": METRICS_NAMESPACE, "Dimensions": [dimensions],
        "Metrics": [{"Name": name, "Unit": "Count" if name in COUNTS else unit} for name in metrics]}]},
        **values, **metrics}


def metric_records(report: DriftReport, timestamp_ms: int | None = None, *,
                   per_feature: bool = True) -> list[dict[str, Any]]:
    """The EMF records of a published report (none when it was not published); without ``per_feature``,
    only the model's and the canary's (the maxima and prediction PSI the alarms read)."""
    if not report.published:
        return []
    stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    model = {"model_name": report.model}
    records = [_record(FEATURE_DIMENSIONS, {**model, "feature": name},
                       {"DriftPsi": c.psi, **({"DriftKs": c.ks} if c.ks is not None else {}),
                        "NullRateDelta": c.null_rate_delta}, stamp)
               for name, c in report.features.items()] if per_feature else []
    summary = {"DriftPsiMax": report.psi_max, "DriftKsMax": report.ks_max, "DriftRows": float(report.rows),
               "CaptureObjectsCorrupt": float(report.corrupt)}
    if report.prediction is not None:
        summary["PredictionPsi"] = report.prediction.psi
    records.append(_record(MODEL_DIMENSIONS, model, summary, stamp))
    if report.canary_prediction is not None:
        records.append(_record(ROLE_DIMENSIONS, {**model, "model_role": "canary"},
                               {"PredictionPsi": report.canary_prediction.psi}, stamp))
    return records


def run_drift(settings: DriftSettings, routing: Routing, s3: Any, now: dt.datetime,
              manifest_of: Callable[[str, str], Manifest],
              on_corrupt: Callable[[str, str], None] | None = None) -> DriftReport:
    """Read the window, compare it with the champion's profile and publish (or say why not)."""
    report = measure_drift(settings, routing, s3, now, manifest_of, on_corrupt)
    for record in metric_records(report, int(now.timestamp() * 1000), per_feature=settings.per_feature_metrics):
        emit_metric_record(record)
    return report


def measure_drift(settings: DriftSettings, routing: Routing, s3: Any, now: dt.datetime,
                  manifest_of: Callable[[str, str], Manifest],
                  on_corrupt: Callable[[str, str], None] | None = None) -> DriftReport:
    """Read the window and compare it with the champion's profile; publishes nothing."""
    if routing.champion_version is None:
        return DriftReport(model=routing.model, version="", rows=0, objects=0, corrupt=0, published=False,
                           reason="no champion serves this model yet", features={}, skipped={})
    champion = manifest_of(routing.champion_uri, routing.champion_sha256)
    canary = (manifest_of(routing.canary_uri, routing.canary_sha256)
              if routing.canary_version and routing.canary_uri else None)
    versions = [routing.champion_version] + ([routing.canary_version] if canary is not None and
                                             routing.canary_version else [])
    captured = read_window(s3, settings.model_bucket, routing.model, versions, now, settings.window_hours,
                           settings.max_rows, on_corrupt)
    return drift_report(routing, champion, canary, captured, settings.min_samples)
