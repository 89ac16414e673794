"""The drift function in the template: an hourly schedule, read-only grants on the model's captures, manifests
and routing item, three signal alarms and the one drift alarm the retraining rule hears."""

from __future__ import annotations

from typing import Any

import pytest
from synth_helpers import Synth, as_list, function_by_handler, role_statements

from cdk.constructs.alarms import DRIFT_SPECS
from cdk.constructs.drift import HANDLER, DriftMonitorSettings, drift_alarm_name
from cdk.constructs.retraining import drift_alarm_prefix

MODEL = "churn"


def drift_function(synth: Synth) -> tuple[str, dict[str, Any]]:
    return function_by_handler(synth, HANDLER)


def drift_statements(synth: Synth) -> list[dict[str, Any]]:
    _, function = drift_function(synth)
    return role_statements(synth, function["Role"]["Fn::GetAtt"][0])


def test_the_function_runs_every_hour_and_reads_its_settings(default_synth: Synth) -> None:
    logical_id, function = drift_function(default_synth)
    variables = function["Environment"]["Variables"]
    assert variables["MODEL_NAME"] == MODEL and variables["WINDOW_HOURS"] == "24"
    assert variables["MIN_SAMPLES"] == "1000" and "MODEL_BUCKET" in variables and "REGISTRY_TABLE" in variables
    rules = [r["Properties"] for r in default_synth.resources("AWS::Events::Rule").values()
             if any(t["Arn"] == {"Fn::GetAtt": [logical_id, "Arn"]} for t in r["Properties"].get("Targets", []))]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(1 hour)"]
    assert rules[0]["Targets"][0]["DeadLetterConfig"]


def test_grants_are_read_only_and_narrow(default_synth: Synth) -> None:
    statements = drift_statements(default_synth)
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert not {a for a in actions if a.startswith(("s3:Put", "s3:Delete", "dynamodb:Put", "dynamodb:Update",
                                                    "dynamodb:Delete", "dynamodb:Scan", "dynamodb:Query"))}
    s3_resources = str([s["Resource"] for s in statements if "s3:GetObject" in as_list(s["Action"])])
    assert f"/capture/{MODEL}/*" in s3_resources and f"/models/{MODEL}/*/manifest.json" in s3_resources
    (listing,) = [s for s in statements if "s3:ListBucket" in as_list(s["Action"])]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == [f"capture/{MODEL}/*"]
    (routing,) = [s for s in statements if "dynamodb:GetItem" in as_list(s["Action"])]
    assert routing["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] == [MODEL]


def test_no_other_function_reads_capture_besides_monitoring(default_synth: Synth) -> None:
    drift_role = drift_function(default_synth)[1]["Role"]["Fn::GetAtt"][0]
    readers = {role for role in default_synth.resources("AWS::IAM::Role")
               if any("s3:GetObject" in as_list(s["Action"]) and "/capture/" in str(s["Resource"])
                      for s in role_statements(default_synth, role))}
    assert drift_role in readers


def test_signal_alarms_watch_the_drift_metrics_and_never_start_retraining_themselves(default_synth: Synth) -> None:
    alarms = [a["Properties"] for a in default_synth.resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("Namespace") == "Slimserve"
              and a["Properties"]["MetricName"] in {s.metric_name for s in DRIFT_SPECS.values()}]
    assert sorted(a["MetricName"] for a in alarms) == sorted(s.metric_name for s in DRIFT_SPECS.values())
    for alarm in alarms:
        spec = next(s for s in DRIFT_SPECS.values() if s.metric_name == alarm["MetricName"])
        assert alarm["Threshold"] == spec.threshold and alarm["EvaluationPeriods"] == spec.datapoints == 2
        assert alarm["Period"] == 3600 and alarm["TreatMissingData"] == "ignore"
        assert alarm["Dimensions"] == [{"Name": "model_name", "Value": MODEL}]
        assert "AlarmName" not in alarm  # a generated name: the retraining rule's prefix never matches it


def test_one_composite_drift_alarm_matches_the_retraining_rule(default_synth: Synth) -> None:
    (composite,) = [c["Properties"] for c in default_synth.resources("AWS::CloudWatch::CompositeAlarm").values()
                    if c["Properties"]["AlarmName"].startswith(drift_alarm_prefix(MODEL))]
    assert composite["AlarmName"] == drift_alarm_name(MODEL) == f"slimserve-{MODEL}-drift-any"
    assert str(composite["AlarmRule"]).count("ALARM(") == len(DRIFT_SPECS)
    (rule,) = [r["Properties"] for r in default_synth.resources("AWS::Events::Rule").values()
               if "alarmName" in str(r["Properties"].get("EventPattern", {}))
               and "drift" in str(r["Properties"]["EventPattern"])]
    assert rule["EventPattern"]["detail"]["alarmName"] == [{"prefix": drift_alarm_prefix(MODEL)}]
    assert composite["AlarmName"].startswith(rule["EventPattern"]["detail"]["alarmName"][0]["prefix"])


@pytest.mark.parametrize(("change", "message"), [
    ({"every_minutes": 90}, "every_minutes"),
    ({"min_samples": 10}, "min_samples"),
])
def test_settings_are_checked_before_any_resource(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftMonitorSettings(**change).validate()
