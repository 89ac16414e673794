"""Serving alarms as synthesized: per model role on the handler's metrics, on alias `live` and the API stage,
each made from its AlarmSpec (the local evaluator reads the same specs); a champion alarm, and only that,
reaches the rollback function through the stack's EventBridge rule, matched here by moto's own matcher."""

from __future__ import annotations

import json
from typing import Any

import pytest
from synth_helpers import Synth, as_list, function_by_handler, resource_id, role_statements

from cdk.constructs.alarms import (
    ALIAS_DURATION,
    ALIAS_ERRORS,
    ALIAS_THROTTLES,
    API_5XX,
    MODEL_ROLES,
    AlarmSpec,
    role_errors,
    role_latency,
)
from cdk.constructs.release import ALARM_STATE_CHANGE, ROLLBACK_HANDLER

pytestmark = pytest.mark.slow  # reads a full synth


def _alarms(synth: Synth) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in synth.resources("AWS::CloudWatch::Alarm").items()}


def _named(synth: Synth, name: str) -> dict[str, Any]:
    (found,) = [a for a in _alarms(synth).values() if a.get("AlarmName") == name]
    return found


def _assert_made_from(alarm: dict[str, Any], spec: AlarmSpec) -> None:
    statistic = alarm.get("ExtendedStatistic", alarm.get("Statistic"))
    assert (alarm["Namespace"], alarm["MetricName"], statistic, alarm["Period"]) == (
        spec.namespace, spec.metric_name, spec.statistic, spec.period_seconds)
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["ComparisonOperator"]) == (
        spec.threshold, spec.datapoints, spec.comparison)
    assert alarm["TreatMissingData"] == "notBreaching"


def _alarm_event(name: str, state: str = "ALARM") -> dict[str, Any]:
    """A "CloudWatch Alarm State Change" event as CloudWatch puts it on the default bus."""
    return {"version": "0", "id": "7bf73129", "detail-type": ALARM_STATE_CHANGE, "source": "aws.cloudwatch",
            "account": "123456789012", "time": "2026-11-30T12:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}"],
            "detail": {"alarmName": name, "state": {"value": state, "reason": "Threshold Crossed"},
                       "previousState": {"value": "OK"}, "configuration": {"metrics": []}}}


@pytest.mark.parametrize("role", MODEL_ROLES)
def test_each_role_has_error_and_latency_alarms_from_their_specs(default_synth: Synth, role: str) -> None:
    for metric, spec in (("errors", role_errors(role)), ("latency", role_latency(role))):
        alarm = _named(default_synth, f"slimserve-churn-{role}-{metric}")
        _assert_made_from(alarm, spec)
        assert alarm["Dimensions"] == [{"Name": "model_name", "Value": "churn"},
                                       {"Name": "model_role", "Value": role}]


def test_alias_live_and_the_api_stage_have_their_alarms(default_synth: Synth) -> None:
    function_id, _ = function_by_handler(default_synth, "functions.inference.handler.lambda_handler")
    alias = {"Fn::Join": ["", [{"Ref": function_id}, ":live"]]}
    on_alias = {a["MetricName"]: a for a in _alarms(default_synth).values()
                if {"Name": "Resource", "Value": alias} in a.get("Dimensions", [])}
    for spec in (ALIAS_ERRORS, ALIAS_THROTTLES, ALIAS_DURATION):
        _assert_made_from(on_alias[spec.metric_name], spec)
    (api,) = [a for a in _alarms(default_synth).values() if a["MetricName"] == API_5XX.metric_name]
    _assert_made_from(api, API_5XX)
    assert {d["Name"] for d in api["Dimensions"]} == {"ApiName", "Stage"}


def test_only_a_champion_alarm_entering_alarm_reaches_the_rollback_function(default_synth: Synth) -> None:
    from moto.events.models import EventPattern

    rule_id = resource_id(default_synth, "ReleaseChampionAlarmRule", "AWS::Events::Rule")
    rule = default_synth.template["Resources"][rule_id]["Properties"]
    pattern = EventPattern.load(json.dumps(rule["EventPattern"]))
    for metric in ("errors", "latency"):
        assert pattern.matches_event(_alarm_event(f"slimserve-churn-champion-{metric}"))
        assert not pattern.matches_event(_alarm_event(f"slimserve-churn-champion-{metric}", state="OK"))
        assert not pattern.matches_event(_alarm_event(f"slimserve-churn-canary-{metric}"))
    assert not pattern.matches_event(_alarm_event("slimserve-other-champion-errors"))
    (target,) = rule["Targets"]
    rollback_id, _ = function_by_handler(default_synth, ROLLBACK_HANDLER)
    assert target["Arn"] == {"Fn::GetAtt": [rollback_id, "Arn"]}
    assert target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0].startswith("ReleaseRollbackDeadLetters")
    permissions = [p["Properties"] for p in default_synth.resources("AWS::Lambda::Permission").values()
                   if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [rollback_id, "Arn"]}]
    assert [p["SourceArn"] for p in permissions] == [{"Fn::GetAtt": [rule_id, "Arn"]}]


def test_rollback_function_runs_one_at_a_time_with_named_resources_only(default_synth: Synth) -> None:
    _, fn = function_by_handler(default_synth, ROLLBACK_HANDLER)
    assert fn["ReservedConcurrentExecutions"] == 1
    statements = role_statements(default_synth, fn["Role"]["Fn::GetAtt"][0])
    wildcard = {a for s in statements if "*" in as_list(s["Resource"]) for a in as_list(s["Action"])}
    assert wildcard <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:GetMetricStatistics",
                        "cloudwatch:GetMetricData"}
