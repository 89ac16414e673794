"""The model's dashboard and the alarm topic in the template: the dashboard draws what the functions publish
(read back from their own EMF records), and every alarm notifies the one alarm topic."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from synth_helpers import MODEL_CONTEXT, Synth, function_by_handler, resource_id

from cdk.app import STACK_ID
from cdk.constructs.alarms import SHADOW_AGREEMENT_THRESHOLD
from cdk.constructs.dashboard import BATCH_DIMENSIONS, BATCH_SERVICE
from cdk.constructs.drift import HANDLER as DRIFT_HANDLER
from functions.common.capture import Capture
from functions.common.routing import emit_request_metrics
from functions.common.settings import BatchSettings
from functions.common.shadow import emit_shadow_metrics
from functions.drift.service import DriftReport, metric_records
from functions.drift.stats import Comparison
from functions.feedback.labels import live_record

MODEL = "churn"
ALARM_TYPES = ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")


def token(value: Any) -> str:
    """A CloudFormation reference inside the body, as `<LogicalId>` (region, names)."""
    if "Ref" in value:
        return f"<{value['Ref']}>"
    return f"<{value['Fn::GetAtt'][0]}>"


def dashboard_body(synth: Synth) -> dict[str, Any]:
    """The DashboardBody's Fn::Join, joined with its references as `<LogicalId>`, parsed."""
    _, dashboard = synth.one("AWS::CloudWatch::Dashboard")
    separator, parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"]
    body: dict[str, Any] = json.loads(separator.join(p if isinstance(p, str) else token(p) for p in parts))
    return body


def drawn(synth: Synth) -> tuple[list[tuple[str, str, dict[str, str], str]], list[str]]:
    """(namespace, metric, dimensions, stat) of every plain metric drawn, and every expression drawn."""
    metrics, expressions = [], []
    for widget in dashboard_body(synth)["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            options = line[-1] if isinstance(line[-1], dict) else {}
            if "expression" in options:
                expressions.append(options["expression"])
                continue
            plain = [x for x in line if not isinstance(x, dict)]
            if plain[0] == ".":  # a metric of a math expression repeats nothing; CDK writes it in full
                continue
            namespace, name, *pairs = plain
            metrics.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True)),
                            options.get("stat", "")))
    return metrics, expressions


def published(records: list[dict[str, Any]]) -> set[tuple[str, tuple[str, ...]]]:
    """(metric, dimension names) of EMF records as the functions write them."""
    return {(m["Name"], tuple(sorted(dims))) for r in records for d in r["_aws"]["CloudWatchMetrics"]
            for dims in d["Dimensions"] for m in d["Metrics"]}


def comparison(ks: float | None) -> Comparison:
    return Comparison(psi=0.1, ks=ks, null_rate_delta=0.0, count=1000, labels=("a",), expected=(1.0,), actual=(1.0,))


def handler_records() -> list[dict[str, Any]]:
    """One request per role, one drift run (a numeric and a categorical feature, both roles' predictions), a label,
    a shadowed request."""
    records = [emit_request_metrics(MODEL, role, "7", status=200, latency_ms=1.0, counts={"Predictions_1": 1})
               for role in ("champion", "canary")]
    report = DriftReport(model=MODEL, version="7", rows=1000, objects=2, corrupt=0, published=True, reason="",
                         features={"age": comparison(0.05), "plan": comparison(None)}, skipped={},
                         prediction=comparison(None), canary_prediction=comparison(None))
    records += metric_records(report, timestamp_ms=0)
    records.append(live_record(MODEL, "7", "LiveAccuracy", 1.0, 0))
    records.append(emit_shadow_metrics(MODEL, "8", "7", latency_ms=1.0, errors=0,
                                       comparison={"ShadowAgreement": 1.0, "ShadowScoreDiff": 0.0}))
    return records


@pytest.fixture(autouse=True)
def quiet_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # the records are read back, not printed


def test_one_dashboard_named_after_the_model(default_synth: Synth) -> None:
    _, dashboard = default_synth.one("AWS::CloudWatch::Dashboard")
    assert dashboard["Properties"]["DashboardName"] == f"slimserve-{MODEL}"


@pytest.mark.parametrize(("metric", "dimensions"), [
    ("Requests", ("model_name", "model_role")),
    ("Errors4xx", ("model_name", "model_role")),
    ("Errors5xx", ("model_name", "model_role")),
    ("ModelLatency", ("model_name", "model_role")),
    ("DriftPsiMax", ("model_name",)),
    ("DriftKsMax", ("model_name",)),
    ("PredictionPsi", ("model_name",)),
    ("PredictionPsi", ("model_name", "model_role")),
    ("LiveAccuracy", ("model_name",)),
    ("ShadowAgreement", ("model_name",)),
    ("ShadowScoreDiff", ("model_name",)),
    ("ShadowLatency", ("model_name",)),
    ("ShadowErrors", ("model_name",)),
])
def test_the_dashboard_draws_what_the_functions_publish(default_synth: Synth, metric: str,
                                                         dimensions: tuple[str, ...]) -> None:
    assert (metric, dimensions) in published(handler_records()), "the functions no longer publish it so"
    metrics, _ = drawn(default_synth)
    assert any(ns == "Slimserve" and name == metric and tuple(sorted(dims)) == dimensions
               and dims["model_name"] == MODEL for ns, name, dims, _ in metrics)


@pytest.mark.parametrize("role", ["champion", "canary"])
def test_latency_p50_and_p99_and_the_canary_against_the_champion_per_role(default_synth: Synth, role: str) -> None:
    metrics, expressions = drawn(default_synth)
    latency = {stat for ns, name, dims, stat in metrics if name == "ModelLatency" and dims.get("model_role") == role}
    assert {"p50", "p99"} <= latency
    assert f"IF(requests_{role} > 0, 100 * errors_{role} / requests_{role}, 0)" in expressions


@pytest.mark.parametrize("metric", ["DriftPsi", "DriftKs", "NullRateDelta"])
def test_drift_per_feature_is_a_search_over_the_feature_dimension(default_synth: Synth, metric: str) -> None:
    assert (metric, ("feature", "model_name")) in published(handler_records())
    _, expressions = drawn(default_synth)
    assert (f"SEARCH('{{Slimserve,model_name,feature}} MetricName=\"{metric}\" model_name=\"{MODEL}\"', "
            f"'Maximum', 3600)") in expressions


@pytest.fixture(scope="module")
def quiet_drift_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The default app with per-feature drift metrics off (`-c slimserve:driftPerFeatureMetrics=false`)."""
    return synth_once(**MODEL_CONTEXT, **{"slimserve:driftPerFeatureMetrics": "false"})


def test_per_feature_drift_off_draws_the_maxima_and_says_where_the_features_are(quiet_drift_synth: Synth) -> None:
    metrics, expressions = drawn(quiet_drift_synth)
    assert not any("model_name,feature" in e for e in expressions)  # nothing searched that is never published
    assert {"DriftPsiMax", "DriftKsMax", "PredictionPsi"} <= {name for _, name, _, _ in metrics}
    texts = [w["properties"]["markdown"] for w in dashboard_body(quiet_drift_synth)["widgets"] if w["type"] == "text"]
    assert any("per feature: not published" in t and "`drift run` log line" in t and "slimserve monitor" in t
               for t in texts)


def test_per_feature_drift_off_reaches_the_function_and_keeps_every_drift_alarm(default_synth: Synth,
                                                                                quiet_drift_synth: Synth) -> None:
    def setting(synth: Synth) -> str:
        return str(function_by_handler(synth, DRIFT_HANDLER)[1]["Environment"]["Variables"]["PER_FEATURE_METRICS"])
    assert (setting(default_synth), setting(quiet_drift_synth)) == ("true", "false")

    def drift_alarms(synth: Synth) -> list[tuple[str, str, float]]:
        return sorted((a["Properties"]["MetricName"], a["Properties"]["Statistic"], a["Properties"]["Threshold"])
                      for a in synth.resources("AWS::CloudWatch::Alarm").values()
                      if a["Properties"].get("MetricName") in ("DriftPsiMax", "DriftKsMax", "PredictionPsi"))
    assert len(drift_alarms(quiet_drift_synth)) == 3 and drift_alarms(quiet_drift_synth) == drift_alarms(default_synth)
    assert len(quiet_drift_synth.resources("AWS::CloudWatch::CompositeAlarm")) == len(
        default_synth.resources("AWS::CloudWatch::CompositeAlarm"))


def shadow_alarms(synth: Synth) -> dict[str, dict[str, Any]]:
    return {k: a["Properties"] for k, a in synth.resources("AWS::CloudWatch::Alarm").items()
            if a["Properties"].get("MetricName", "").startswith("Shadow")}


def test_shadow_errors_and_agreement_alarm_per_model_and_notify_the_alarm_topic(default_synth: Synth) -> None:
    alarms = {a["MetricName"]: a for a in shadow_alarms(default_synth).values()}
    assert set(alarms) == {"ShadowErrors", "ShadowAgreement"}
    for metric, alarm in alarms.items():
        assert (metric, ("model_name",)) in published(handler_records())  # what a shadowed request writes
        assert alarm["Namespace"] == "Slimserve" and alarm["Dimensions"] == [{"Name": "model_name", "Value": MODEL}]
        assert alarm["AlarmActions"] == [{"Ref": alarm_topic(default_synth)}]
        assert alarm["TreatMissingData"] == "notBreaching"  # no shadow configured: no data, no alarm
    errors, agreement = alarms["ShadowErrors"], alarms["ShadowAgreement"]
    assert (errors["Statistic"], errors["Threshold"], errors["ComparisonOperator"]) == (
        "Sum", 0, "GreaterThanThreshold")
    assert (agreement["Statistic"], agreement["Threshold"], agreement["ComparisonOperator"], agreement["Period"]) == (
        "Average", SHADOW_AGREEMENT_THRESHOLD, "LessThanThreshold", 3600)


def test_shadow_alarms_start_nothing(default_synth: Synth) -> None:
    """Generated names: the rollback rule (`slimserve-<model>-champion-`) and the retraining rule
    (`slimserve-<model>-drift-`) match alarm names, so a shadow alarm can never roll back or retrain."""
    alarms = shadow_alarms(default_synth)
    assert all("AlarmName" not in alarm for alarm in alarms.values())  # CloudFormation names it <stack>-<id>-<hash>
    patterns = [r["Properties"].get("EventPattern", {}) for r in default_synth.resources("AWS::Events::Rule").values()]
    prefixes = [p["prefix"] for pattern in patterns for p in pattern.get("detail", {}).get("alarmName", [])]
    assert prefixes and all(p.startswith(f"slimserve-{MODEL}-") for p in prefixes)
    assert not [p for p in prefixes for k in alarms if f"{STACK_ID}-{k}-1A2B3C".startswith(p)]


def test_the_shadow_row_shows_its_alarms_and_the_agreement_threshold(default_synth: Synth) -> None:
    widgets = dashboard_body(default_synth)["widgets"]
    (status,) = [w for w in widgets if w["type"] == "alarm"]
    assert {token(a) if isinstance(a, dict) else a for a in status["properties"]["alarms"]} >= {
        f"<{k}>" for k in shadow_alarms(default_synth)}
    (agreement,) = [w for w in widgets if w["properties"].get("title") == "Shadow agreement with the served answer"]
    assert agreement["properties"]["annotations"]["horizontal"][0]["value"] == SHADOW_AGREEMENT_THRESHOLD


def test_the_agreement_threshold_is_set_by_context_in_the_alarm_and_on_the_dashboard(
        synth_once: Callable[..., Synth]) -> None:
    synth = synth_once(**MODEL_CONTEXT, **{"slimserve:shadowAgreementBelow": "0.95"})
    (agreement,) = [a for a in shadow_alarms(synth).values() if a["MetricName"] == "ShadowAgreement"]
    assert (agreement["Threshold"], agreement["ComparisonOperator"]) == (0.95, "LessThanThreshold")
    assert "less than 95% of rows" in agreement["AlarmDescription"]
    (widget,) = [w for w in dashboard_body(synth)["widgets"]
                 if w["properties"].get("title") == "Shadow agreement with the served answer"]
    assert widget["properties"]["annotations"]["horizontal"][0]["value"] == 0.95


def capture_records() -> list[dict[str, Any]]:
    """The capture's own EMF records: one flush that is written, one whose PUT fails."""
    records: list[dict[str, Any]] = []
    model = SimpleNamespace(manifest=SimpleNamespace(name=MODEL), version="7", schema=SimpleNamespace(names=["x"]))
    routed, result = SimpleNamespace(model=model, role="champion"), SimpleNamespace(predictions=[1], probabilities=None)
    for put in (lambda key, body: None, failing_put):
        capture = Capture(sample_rate=1.0, put=put, emit=records.append)
        capture.record("r1", routed, [[0.5]], result)
        capture.flush()
    return records


def failing_put(key: str, body: bytes) -> None:
    raise OSError("refused")


@pytest.mark.parametrize("metric", ["CaptureRowsWritten", "CaptureBytes", "CaptureFlushFailures", "CaptureRowsLost",
                                    "CaptureObjectsCorrupt"])
def test_capture_health_is_drawn_per_model(default_synth: Synth, metric: str) -> None:
    assert (metric, ("model_name",)) in published(capture_records() + handler_records())
    metrics, _ = drawn(default_synth)
    assert any(ns == "Slimserve" and name == metric and dims == {"model_name": MODEL} for ns, name, dims, _ in metrics)


def test_predictions_by_class_are_searched_per_role(default_synth: Synth) -> None:
    _, expressions = drawn(default_synth)
    for role in ("champion", "canary"):
        assert any(f'model_role="{role}"' in e and "MetricName=Predictions" in e for e in expressions)


def test_every_dead_letter_queue_an_alarm_watches_is_drawn(batch_synth: Synth) -> None:
    watched = {json.dumps(a["Properties"]["Dimensions"][0]["Value"]) for a in batch_synth.resources(
        "AWS::CloudWatch::Alarm").values() if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"}
    metrics, _ = drawn(batch_synth)
    drawn_queues = {dims["QueueName"] for _, name, dims, _ in metrics if name == "ApproximateNumberOfMessagesVisible"}
    assert len(watched) >= 5  # batch, drift, rollback, feedback files, review
    assert {token(json.loads(q)) for q in watched} == drawn_queues


def test_batch_rows_rejected_are_drawn_by_model_only_with_batch_scoring(default_synth: Synth,
                                                                       batch_synth: Synth) -> None:
    assert BatchSettings.service == BATCH_SERVICE  # the batch function's metrics carry it beside the model
    # The dimension set the batch function writes (tests/integration/test_batch_lambda.py reads it back).
    assert sorted(BATCH_DIMENSIONS.split(",")) == ["model_name", "model_version", "service"]
    search = f"SEARCH('{{Slimserve,{BATCH_DIMENSIONS}}} MetricName=\"RowsRejected\" model_name=\"{MODEL}\"'"
    assert any(e.startswith(search) for e in drawn(batch_synth)[1])
    assert not any("RowsRejected" in e for e in drawn(default_synth)[1])


def test_lambda_throttles_of_every_function_and_the_api_errors_are_drawn(default_synth: Synth) -> None:
    metrics, _ = drawn(default_synth)
    throttled = {dims["FunctionName"] for _, name, dims, _ in metrics if name == "Throttles"}
    # Every function but CDK's deploy-time helpers (bucket notifications), which serve CloudFormation only.
    functions = {f"<{k}>" for k in default_synth.resources("AWS::Lambda::Function")
                 if not k.startswith("BucketNotificationsHandler")}
    assert throttled == functions
    api = {name for ns, name, _, _ in metrics if ns == "AWS/ApiGateway"}
    assert {"4XXError", "5XXError"} <= api


def alarm_topic(synth: Synth) -> str:
    return resource_id(synth, "MonitoringAlarmTopic", "AWS::SNS::Topic")


@pytest.mark.parametrize("variant", ["default_synth", "batch_synth"])
def test_every_alarm_notifies_the_one_alarm_topic(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    topic = {"Ref": alarm_topic(synth)}
    alarms = {k: v["Properties"] for t in ALARM_TYPES for k, v in synth.resources(t).items()}
    composite_rules = " ".join(json.dumps(p["AlarmRule"]) for p in alarms.values() if "AlarmRule" in p)
    silent = []
    for logical_id, alarm in alarms.items():
        for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
            assert alarm.get(key, [topic]) == [topic], f"{logical_id} {key}"
        if "AlarmActions" not in alarm:
            silent.append(logical_id)
    # An alarm without actions is a member of a composite alarm, which notifies for it.
    assert all(re.search(rf"\b{re.escape(s)}\b", composite_rules) for s in silent), silent
    assert len(silent) == 3  # the three drift signals behind slimserve-<model>-drift-any


def test_the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(default_synth: Synth) -> None:
    topic_id = alarm_topic(default_synth)
    topic = default_synth.template["Resources"][topic_id]["Properties"]
    key_id = topic["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key = default_synth.template["Resources"][key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    by_service = [s for s in key["KeyPolicy"]["Statement"]
                  if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert by_service and by_service[0]["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    policy = next(p["Properties"]["PolicyDocument"]["Statement"]
                  for p in default_synth.resources("AWS::SNS::TopicPolicy").values()
                  if {"Ref": topic_id} in p["Properties"]["Topics"])
    publish = [s for s in policy if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert publish and publish[0]["Action"] == "sns:Publish" and "aws:SourceArn" in publish[0]["Condition"]["ArnLike"]
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in policy)
