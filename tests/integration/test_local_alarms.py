"""The local alarm evaluator on moto's CloudWatch: the drift signals with the stack's DRIFT_SPECS (two breaching
hours; a quiet hour keeps the state), the drift composite as CDK defines it (any signal), live accuracy from
labelled rows, each change of state put once on the router and kept in CloudWatch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cdk.constructs.alarms import DRIFT_PSI_MAX, LIVE_ACCURACY_THRESHOLD, PREDICTION_PSI, AlarmSpec
from pipeline.local.alarms import (
    AlarmEvaluator,
    LocalRouter,
    champion_rule_pattern,
    drift_alarm_name,
    drift_rule_pattern,
    drift_signal_alarms,
    next_state,
)
from pipeline.local.emulation import REGION, emulated_account

MODEL = "churn"
T0 = dt.datetime(2026, 6, 1, 12, 5, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
COMPOSITE = drift_alarm_name(MODEL)


@pytest.fixture
def cloudwatch() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("cloudwatch", region_name=REGION)


@pytest.fixture
def evaluator(cloudwatch: Any) -> AlarmEvaluator:
    router = LocalRouter()
    router.add_rule("DriftAlarmRule", drift_rule_pattern(MODEL), lambda event: event["detail"]["alarmName"])
    return AlarmEvaluator(cloudwatch, router, MODEL)


def put(cloudwatch: Any, name: str, value: float, when: dt.datetime, **dimensions: str) -> None:
    dims = [{"Name": "model_name", "Value": MODEL}] + [{"Name": k, "Value": v} for k, v in dimensions.items()]
    cloudwatch.put_metric_data(Namespace="Slimserve", MetricData=[
        {"MetricName": name, "Value": value, "Timestamp": when, "Dimensions": dims}])


def drift_run(cloudwatch: Any, when: dt.datetime, psi: float, ks: float = 0.02, prediction: float = 0.01) -> None:
    """What one drift run publishes for the model (`functions.drift.service.metric_records`)."""
    for name, value in (("DriftPsiMax", psi), ("DriftKsMax", ks), ("PredictionPsi", prediction)):
        put(cloudwatch, name, value, when)


def changes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["detail"]["alarmName"], e["detail"]["state"]["value"]) for e in events]


def states(cloudwatch: Any) -> dict[str, str]:
    described = cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm", "CompositeAlarm"])
    return {a["AlarmName"]: a["StateValue"] for kind in ("MetricAlarms", "CompositeAlarms") for a in described[kind]}


@pytest.mark.parametrize(("values", "current", "expected"), [
    ([0.3, 0.3], "OK", "ALARM"),
    ([0.3, 0.1], "ALARM", "OK"),
    ([None, 0.3, None, None], "ALARM", "ALARM"),  # quiet hours keep the state
    ([None, None, None, None], "OK", "OK"),
    ([0.3, None, None, 0.3], "OK", "ALARM"),  # the look-back finds the second datapoint
    ([None, None, None, 0.3], "OK", "OK"),  # one datapoint is not enough to judge
    ([0.3, 0.3, 0.1, None], "ALARM", "OK"),
], ids=["two-breaching", "recovered", "quiet", "no-data", "look-back", "too-few", "last-not-breaching"])
def test_ignore_keeps_the_state_where_data_is_missing(values: list[float | None], current: str,
                                                      expected: str) -> None:
    assert next_state(DRIFT_PSI_MAX, values, current) == expected


def test_not_breaching_treats_a_missing_period_as_ok() -> None:
    spec = AlarmSpec("Slimserve", "Errors5xx", "model_name", "Sum", period_seconds=60, threshold=5, datapoints=2)
    assert next_state(spec, [9, 9], "OK") == "ALARM" and next_state(spec, [9, None], "ALARM") == "OK"


def test_local_names_are_the_stacks_and_only_the_composite_starts_retraining() -> None:
    from cdk.constructs.drift import drift_alarm_name as cdk_drift_alarm_name
    from cdk.constructs.retraining import drift_alarm_prefix

    assert cdk_drift_alarm_name(MODEL) == COMPOSITE
    assert drift_rule_pattern(MODEL)["detail"]["alarmName"] == [{"prefix": drift_alarm_prefix(MODEL)}]
    assert not any(name.startswith(drift_alarm_prefix(MODEL)) for name in drift_signal_alarms(MODEL))


def test_two_breaching_hours_raise_the_drift_alarm_once(cloudwatch: Any, evaluator: AlarmEvaluator) -> None:
    drift_run(cloudwatch, T0, psi=0.05)
    assert evaluator.evaluate(T0) == []
    drift_run(cloudwatch, T0 + HOUR, psi=DRIFT_PSI_MAX.threshold + 0.3)
    assert evaluator.evaluate(T0 + HOUR) == []  # one breaching hour: the spec wants two
    drift_run(cloudwatch, T0 + 2 * HOUR, psi=DRIFT_PSI_MAX.threshold + 0.4)
    events = evaluator.evaluate(T0 + 2 * HOUR)
    assert changes(events) == [(f"slimserve-{MODEL}-signal-psi", "ALARM"), (COMPOSITE, "ALARM")]
    assert "0.5, 0.6" in events[0]["detail"]["state"]["reason"]
    assert events[1]["detail"]["configuration"]["alarmRule"].startswith(f'ALARM("slimserve-{MODEL}-signal-psi")')
    assert [(rule, answer) for rule, _, answer in evaluator.router.delivered] == [("DriftAlarmRule", COMPOSITE)]
    assert states(cloudwatch)[COMPOSITE] == "ALARM" and states(cloudwatch)[f"slimserve-{MODEL}-signal-ks"] == "OK"
    # Still drifted an hour later, then a quiet hour (too few rows: nothing published): no new event.
    drift_run(cloudwatch, T0 + 3 * HOUR, psi=0.7)
    assert evaluator.evaluate(T0 + 3 * HOUR) == [] and evaluator.evaluate(T0 + 3 * HOUR) == []
    assert evaluator.evaluate(T0 + 4 * HOUR) == []
    assert len(evaluator.router.delivered) == 1


def test_the_composite_stays_in_alarm_while_any_signal_is(cloudwatch: Any, evaluator: AlarmEvaluator) -> None:
    for hour in (0, 1):
        drift_run(cloudwatch, T0 + hour * HOUR, psi=0.5, ks=0.5)
        events = evaluator.evaluate(T0 + hour * HOUR)
    assert changes(events) == [(f"slimserve-{MODEL}-signal-psi", "ALARM"), (f"slimserve-{MODEL}-signal-ks", "ALARM"),
                               (COMPOSITE, "ALARM")]
    drift_run(cloudwatch, T0 + 2 * HOUR, psi=0.05, ks=0.5)
    assert changes(evaluator.evaluate(T0 + 2 * HOUR)) == [(f"slimserve-{MODEL}-signal-psi", "OK")]
    drift_run(cloudwatch, T0 + 3 * HOUR, psi=0.05, ks=0.05)
    assert changes(evaluator.evaluate(T0 + 3 * HOUR)) == [(f"slimserve-{MODEL}-signal-ks", "OK"), (COMPOSITE, "OK")]
    assert len(evaluator.router.delivered) == 1  # the rule hears ALARM only


def test_a_canarys_prediction_drift_is_not_the_champions(cloudwatch: Any, evaluator: AlarmEvaluator) -> None:
    for hour in (0, 1):
        drift_run(cloudwatch, T0 + hour * HOUR, psi=0.05)
        put(cloudwatch, "PredictionPsi", PREDICTION_PSI.threshold + 1, T0 + hour * HOUR, model_role="canary")
        assert evaluator.evaluate(T0 + hour * HOUR) == []


def test_labels_that_disagree_raise_the_live_accuracy_alarm(cloudwatch: Any, evaluator: AlarmEvaluator) -> None:
    name = f"slimserve-{MODEL}-live-accuracy"
    for i, right in enumerate([1.0] * 9 + [0.0]):  # as the forwarder sends them: with model_version
        put(cloudwatch, "LiveAccuracy", right, T0 + dt.timedelta(seconds=i), model_version="v1")
    assert evaluator.evaluate(T0 + dt.timedelta(minutes=1)) == []
    for i in range(20):
        put(cloudwatch, "LiveAccuracy", 0.0, T0 + dt.timedelta(minutes=2, seconds=i), model_version="v2")
    events = evaluator.evaluate(T0 + dt.timedelta(minutes=3))
    assert changes(events) == [(name, "ALARM")]  # 9 right of 30: 0.3 < LIVE_ACCURACY_THRESHOLD
    assert f"0.3] LessThan {LIVE_ACCURACY_THRESHOLD:g}" in events[0]["detail"]["state"]["reason"]
    assert evaluator.router.delivered == [] and states(cloudwatch)[name] == "ALARM"
    assert changes(evaluator.evaluate(T0 + 2 * HOUR)) == [(name, "OK")]  # an hour without labels is no breach


def test_a_failing_or_disagreeing_shadow_raises_its_alarms_and_starts_nothing(cloudwatch: Any) -> None:
    router = LocalRouter()  # both rules a state change can start something through
    router.add_rule("ChampionAlarmRule", champion_rule_pattern(MODEL), lambda event: event["detail"]["alarmName"])
    router.add_rule("DriftAlarmRule", drift_rule_pattern(MODEL), lambda event: event["detail"]["alarmName"])
    evaluator = AlarmEvaluator(cloudwatch, router, MODEL)
    for i, (agreement, errors) in enumerate([(1.0, 0.0)] * 4):  # as the forwarder sends them: the shadow's version
        put(cloudwatch, "ShadowAgreement", agreement, T0 + dt.timedelta(seconds=i), model_version="v2")
        put(cloudwatch, "ShadowErrors", errors, T0 + dt.timedelta(seconds=i), model_version="v2")
    assert evaluator.evaluate(T0 + dt.timedelta(minutes=1)) == []
    put(cloudwatch, "ShadowErrors", 1.0, T0 + dt.timedelta(minutes=1), model_version="v2")
    for i in range(12):  # 4 agreeing then 12 not: 0.25 of requests, below the threshold
        put(cloudwatch, "ShadowAgreement", 0.0, T0 + dt.timedelta(minutes=1, seconds=i), model_version="v2")
    events = evaluator.evaluate(T0 + dt.timedelta(minutes=2))
    assert changes(events) == [(f"slimserve-{MODEL}-shadow-errors", "ALARM"),
                               (f"slimserve-{MODEL}-shadow-agreement", "ALARM")]
    assert router.delivered == []  # no rollback, no retraining
    assert states(cloudwatch)[f"slimserve-{MODEL}-shadow-errors"] == "ALARM"
