"""The drift function on the emulated account: captured traffic of the window against the champion's
profile, nothing published below the minimum sample, corrupt capture objects skipped and counted."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pandas as pd
import pytest

from cdk.constructs.alarms import DRIFT_KS_MAX, DRIFT_PSI_MAX, PREDICTION_PSI
from functions.common.bundle import directory_reader, load_model
from functions.common.layout import capture_key
from functions.common.manifest import sha256_file
from functions.common.registry import ROUTING_ITEM, Routing
from functions.common.settings import DriftSettings
from functions.drift.service import parse_capture, read_profile, run_drift
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import MODEL_BUCKET, create_registry_table, emulated_account, upload_bundle
from pipeline.local.server import load_function
from tests.conftest import mixed_frame

MODEL, VERSION, TABLE = "churn", "v1", "slimserve-registry-drift"
NOW = dt.datetime(2026, 6, 1, 12, 30, tzinfo=dt.UTC)
SETTINGS = DriftSettings(registry_table=TABLE, model_name=MODEL, model_bucket=MODEL_BUCKET, min_samples=200)
FEATURES = ["age", "plan", "income", "region"]


@pytest.fixture
def account(mixed_bundle: Path) -> Iterator[dict[str, Any]]:
    with emulated_account():
        s3 = boto3.client("s3", region_name="us-east-1")
        uri = upload_bundle(s3, mixed_bundle)
        routing = Routing(model=MODEL, champion_version=VERSION, champion_uri=uri,
                          champion_sha256=sha256_file(mixed_bundle / "manifest.json"))
        yield {"s3": s3, "routing": routing, "model": load_model(directory_reader(mixed_bundle))}



def records_of(model: Any, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Capture lines as the inference function writes them: the row, the label it answered, its score."""
    part = frame[FEATURES].astype(object)
    rows = part.where(part.notna(), None).to_dict("records")
    answer = model.predict(rows)
    return [{"ts": NOW.isoformat(), "request_id": f"r{i}", "model": MODEL, "version": VERSION, "role": "champion",
             "row": row, "prediction": p, "score": None, "prediction_id": None}
            for i, (row, p) in enumerate(zip(rows, answer.predictions, strict=True))]


def put_capture(s3: Any, records: list[dict[str, Any]], when: dt.datetime = NOW, suffix: str = "a" * 12,
                body: bytes | None = None) -> str:
    key = capture_key(MODEL, VERSION, when, suffix)
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()) if body is None else body
    s3.put_object(Bucket=MODEL_BUCKET, Key=key, Body=data)
    return key


def run(account: dict[str, Any]) -> Any:
    return run_drift(SETTINGS, account["routing"], account["s3"], NOW, read_profile)


def by_name(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Model-level metrics by name, and per-feature ones as `Name/feature`."""
    out: dict[str, Any] = {}
    for record in records:
        for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            name = metric["Name"] + (f"/{record['feature']}" if "feature" in record else "")
            out[name + ("/canary" if record.get("model_role") == "canary" else "")] = record[metric["Name"]]
    return out


def test_unshifted_traffic_publishes_metrics_below_every_alarm(account: dict[str, Any],
                                                               metric_records: list[dict[str, Any]]) -> None:
    put_capture(account["s3"], records_of(account["model"], mixed_frame(400)))
    report = run(account)
    figures = by_name(metric_records)
    assert report.published and report.rows == 400 and report.corrupt == 0
    assert {f"DriftPsi/{n}" for n in FEATURES} <= set(figures) and "DriftKs/age" in figures
    assert "DriftKs/plan" not in figures and "NullRateDelta/income" in figures
    assert figures["DriftPsiMax"] < DRIFT_PSI_MAX.threshold and figures["DriftKsMax"] < DRIFT_KS_MAX.threshold
    assert figures["PredictionPsi"] < PREDICTION_PSI.threshold
    assert all(r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Slimserve" for r in metric_records)


def test_shifted_inputs_raise_feature_drift_and_prediction_drift(account: dict[str, Any],
                                                                 metric_records: list[dict[str, Any]]) -> None:
    frame = mixed_frame(400)
    frame["age"] = frame["age"] + 25  # older customers: the model answers "yes" far more often
    put_capture(account["s3"], records_of(account["model"], frame))
    run(account)
    figures = by_name(metric_records)
    assert figures["DriftKs/age"] > DRIFT_KS_MAX.threshold and figures["DriftPsi/age"] > DRIFT_PSI_MAX.threshold
    assert figures["DriftPsiMax"] == figures["DriftPsi/age"] and figures["DriftPsi/plan"] < 0.05
    assert figures["PredictionPsi"] > PREDICTION_PSI.threshold


def test_a_window_below_the_minimum_sample_publishes_nothing(account: dict[str, Any],
                                                            metric_records: list[dict[str, Any]]) -> None:
    put_capture(account["s3"], records_of(account["model"], mixed_frame(400).head(199)))
    report = run(account)
    assert not report.published and metric_records == []
    assert "199 captured rows" in report.reason and "200" in report.reason


def test_corrupt_capture_objects_are_skipped_and_counted(account: dict[str, Any],
                                                         metric_records: list[dict[str, Any]]) -> None:
    s3, records = account["s3"], records_of(account["model"], mixed_frame(400))
    good = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    put_capture(s3, records)
    put_capture(s3, [], suffix="b" * 12, body=b"not gzip at all")
    put_capture(s3, [], suffix="c" * 12, body=good[: len(good) // 2])  # a flush cut short
    put_capture(s3, [], suffix="d" * 12, body=gzip.compress(b'{"row": {"age": 1}, "prediction": "no"}\n{oops\n'))
    put_capture(s3, [], suffix="e" * 12, body=gzip.compress(b'[1, 2]\n'))
    report = run(account)
    assert report.objects == 5 and report.corrupt == 4 and report.rows == 400 and report.published
    assert by_name(metric_records)["DriftRows"] == 400 and by_name(metric_records)["CaptureObjectsCorrupt"] == 4


def test_only_objects_flushed_within_the_window_are_read(account: dict[str, Any],
                                                         metric_records: list[dict[str, Any]]) -> None:
    s3, records = account["s3"], records_of(account["model"], mixed_frame(400))
    put_capture(s3, records[:300], when=NOW - dt.timedelta(hours=2))
    put_capture(s3, records, when=NOW - dt.timedelta(hours=SETTINGS.window_hours, minutes=5), suffix="f" * 12)
    put_capture(s3, records, when=NOW + dt.timedelta(minutes=5), suffix="9" * 12)  # a clock ahead: not yet
    assert run(account).rows == 300


def test_hashed_and_dropped_columns_are_left_out_with_the_reason(account: dict[str, Any],
                                                                 metric_records: list[dict[str, Any]]) -> None:
    records = records_of(account["model"], mixed_frame(400))
    for r in records:
        r["row"]["region"] = "sha256:0123456789abcdef"
        del r["row"]["plan"]
    put_capture(account["s3"], records)
    report = run(account)
    assert report.skipped == {"plan": "not captured (dropped at capture)", "region": "hashed at capture"}
    assert "DriftPsi/region" not in by_name(metric_records)


def test_a_bundle_without_a_typed_profile_is_reported_not_compared(account: dict[str, Any], mixed_bundle: Path,
                                                                   tmp_path: Path,
                                                                   metric_records: list[dict[str, Any]]) -> None:
    manifest = json.loads((mixed_bundle / "manifest.json").read_text())
    manifest.update(format_version=2, profile={"age": {"type": "number", "edges": [1.0], "proportions": [1.0]}},
                    files={"model.onnx": manifest["files"]["model.onnx"]})  # an older bundle: the model alone
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "model.onnx").write_bytes((mixed_bundle / "model.onnx").read_bytes())
    assert load_model(directory_reader(old)).manifest.profile is None  # a format 2 bundle still loads
    routing = Routing(model=MODEL, champion_version=VERSION, champion_uri=str(old))
    put_capture(account["s3"], records_of(account["model"], mixed_frame(400)))
    report = run_drift(SETTINGS, routing, account["s3"], NOW, read_profile)
    assert not report.published and "no feature profile" in report.reason and metric_records == []


def with_registry(account: dict[str, Any]) -> None:
    """The registry table with the model's routing item naming the champion."""
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    create_registry_table(dynamodb, TABLE)
    routing = account["routing"]
    dynamodb.put_item(TableName=TABLE, Item={
        "model": {"S": MODEL}, "version": {"S": ROUTING_ITEM}, "champion_version": {"S": VERSION},
        "champion_uri": {"S": routing.champion_uri}, "champion_sha256": {"S": routing.champion_sha256}})


def test_the_handler_follows_the_registry_champion(account: dict[str, Any],
                                                   metric_records: list[dict[str, Any]]) -> None:
    with_registry(account)
    put_capture(account["s3"], records_of(account["model"], mixed_frame(400)),
                when=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    handler = load_function("functions.drift.handler", "", **{k: v for k, v in SETTINGS.to_env().items()})
    answer = handler.lambda_handler({"source": "aws.events"}, LambdaContext(function_name="slimserve-drift"))
    assert answer["published"] and answer["rows"] == 400 and answer["version"] == VERSION
    assert by_name(metric_records)["DriftRows"] == 400


def test_per_feature_metrics_off_publishes_only_what_the_alarms_read_and_logs_every_feature(
        account: dict[str, Any], metric_records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    with_registry(account)
    frame = mixed_frame(400)
    frame["age"] = frame["age"] + 25
    put_capture(account["s3"], records_of(account["model"], frame),
                when=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    for name, value in SETTINGS.model_copy(update={"per_feature_metrics": False}).to_env().items():
        monkeypatch.setenv(name, value)  # put back after the test: later handlers publish them
    handler = load_function("functions.drift.handler", "")
    lines: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(handler, "logger", SimpleNamespace(info=lambda msg, extra: lines.append((msg, extra))))
    answer = handler.lambda_handler({"source": "aws.events"}, LambdaContext(function_name="slimserve-drift"))
    figures = by_name(metric_records)
    assert not [r for r in metric_records if "feature" in r]  # no per-feature metric at all
    assert figures["DriftPsiMax"] > DRIFT_PSI_MAX.threshold and figures["DriftKsMax"] > DRIFT_KS_MAX.threshold
    assert figures["PredictionPsi"] > PREDICTION_PSI.threshold  # every alarm still has its signal
    logged = json.loads(json.dumps(dict(lines)["drift run"]))  # the log line, as JSON carries it
    assert set(logged["features"]) == set(FEATURES) == set(answer["features"])
    assert logged["features"]["age"]["psi"] == pytest.approx(figures["DriftPsiMax"], abs=1e-6)
    assert logged["features"]["plan"]["ks"] is None and logged["features"]["age"]["ks"] > DRIFT_KS_MAX.threshold


def test_a_capture_line_without_a_row_is_corrupt() -> None:
    from functions.drift.service import CorruptCapture

    with pytest.raises(CorruptCapture):
        parse_capture(gzip.compress(b'{"prediction": 1}\n'))
    assert parse_capture(gzip.compress(b'\n{"row": {}, "prediction": 1}\n\n')) == [{"row": {}, "prediction": 1}]


def test_monitor_prints_each_feature_with_its_histogram_and_publishes_nothing(
        account: dict[str, Any], metric_records: list[dict[str, Any]]) -> None:
    from pipeline.monitor import drift_now, render

    with_registry(account)
    frame = mixed_frame(400)
    frame["age"] = frame["age"] + 25
    put_capture(account["s3"], records_of(account["model"], frame))
    report = drift_now({"table": TABLE, "model_bucket": MODEL_BUCKET}, MODEL, window_hours=24, min_samples=200,
                       now=NOW)
    text = render(report, {"psi": DRIFT_PSI_MAX.threshold, "ks": DRIFT_KS_MAX.threshold})
    rows: dict[str, str] = {}
    for line in text.splitlines():  # the table's row comes before the feature's histogram
        if line and line.split()[0] in FEATURES:
            rows.setdefault(line.split()[0], line)
    assert rows["age"].endswith("DRIFT") and not rows["plan"].endswith("DRIFT")
    assert "age  (# profile, = live)" in text and "(prediction)" in text and "(null)" in text
    assert metric_records == []
    thin = drift_now({"table": TABLE, "model_bucket": MODEL_BUCKET}, MODEL, window_hours=24, min_samples=1000, now=NOW)
    assert "nothing compared: 400 captured rows" in render(thin, {"psi": 0.2, "ks": 0.1})
