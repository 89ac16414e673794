"""Alarms in the emulated account: moto stores metrics but never evaluates alarms, nor puts the
"CloudWatch Alarm State Change" event. This evaluator reads the handlers' metrics with the stack's own
AlarmSpecs (serving roles, drift signals, live accuracy, shadow), evaluates the drift composite as the stack defines
it (any signal in ALARM), keeps each alarm's state in moto's CloudWatch (``describe_alarms`` shows it), and
on a change of state puts that event into a local router that matches the stack's EventBridge rules (moto's
own pattern matching) and calls their targets.

Metrics are read by exact dimension set, as CloudWatch does, with one local allowance: the EMF forwarder
(`lambdas.forward_emf`) sends only a record's most specific set, so a datum whose only extra dimension is
``model_version`` also stands for the set without it (the handlers always emit both).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdk.constructs.alarms import (
    DRIFT_SPECS,
    MODEL_ROLES,
    SHADOW_ERRORS,
    AlarmSpec,
    live_accuracy_spec,
    role_errors,
    role_latency,
    shadow_agreement_spec,
)

Target = Callable[[dict[str, Any]], Any]
ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"
ACCOUNT, REGION = "123456789012", "us-east-1"
STANDS_FOR_FEWER = frozenset({"model_version"})
"""Dimensions the EMF forwarder folds into a record's most specific set (see the module's docstring)."""


def _alarm_pattern(prefix: str) -> dict[str, Any]:
    return {"source": ["aws.cloudwatch"], "detail-type": [ALARM_STATE_CHANGE],
            "detail": {"alarmName": [{"prefix": prefix}], "state": {"value": ["ALARM"]}}}


def champion_rule_pattern(model: str) -> dict[str, Any]:
    """The rule that sends a champion alarm of ``model`` to the rollback function."""
    return _alarm_pattern(f"slimserve-{model}-champion-")


def drift_rule_pattern(model: str) -> dict[str, Any]:
    """The rule that starts a retraining run of ``model`` (`cdk.constructs.retraining.drift_alarm_prefix`)."""
    return _alarm_pattern(f"slimserve-{model}-drift-")


def drift_alarm_name(model: str) -> str:
    """The composite drift alarm, as `cdk.constructs.drift.drift_alarm_name` names it (no CDK import here)."""
    return f"slimserve-{model}-drift-any"


class LocalRouter:
    """EventBridge's default bus for the local account: rules (pattern -> target), matched as AWS matches."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, Any, Target]] = []
        self.delivered: list[tuple[str, dict[str, Any], Any]] = []

    def add_rule(self, name: str, pattern: Mapping[str, Any], target: Target) -> None:
        from moto.events.models import EventPattern

        self.rules.append((name, EventPattern.load(json.dumps(pattern)), target))

    def put(self, event: dict[str, Any]) -> list[Any]:
        answers = []
        for name, pattern, target in self.rules:
            if pattern.matches_event(event):
                answer = target(event)
                self.delivered.append((name, event, answer))
                answers.append(answer)
        return answers


def model_alarms(model: str) -> dict[str, AlarmSpec]:
    """The stack's per-role alarms of one model, by the names CDK gives them."""
    return {f"slimserve-{model}-{role}-{metric}": spec for role in MODEL_ROLES
            for metric, spec in (("errors", role_errors(role)), ("latency", role_latency(role)))}


def drift_signal_alarms(model: str) -> dict[str, AlarmSpec]:
    """The drift signal alarms. CDK leaves their names to CloudFormation; here they are
    `slimserve-<model>-signal-<signal>`, which, like those, the retraining rule's prefix never matches."""
    return {f"slimserve-{model}-signal-{signal}": spec for signal, spec in DRIFT_SPECS.items()}


def feedback_alarms(model: str) -> dict[str, AlarmSpec]:
    """The live accuracy alarm at the stack's default threshold (its name on AWS is CloudFormation's)."""
    return {f"slimserve-{model}-live-accuracy": live_accuracy_spec()}


def shadow_alarms(model: str) -> dict[str, AlarmSpec]:
    """The shadow's alarms at the stack's defaults (their names on AWS are CloudFormation's): no rule hears
    them, so they change state in CloudWatch and start nothing."""
    return {f"slimserve-{model}-shadow-errors": SHADOW_ERRORS,
            f"slimserve-{model}-shadow-agreement": shadow_agreement_spec()}


def metric_alarms(model: str) -> dict[str, AlarmSpec]:
    """Every metric alarm of one model the evaluator judges, by name."""
    return {**model_alarms(model), **drift_signal_alarms(model), **feedback_alarms(model), **shadow_alarms(model)}


def next_state(spec: AlarmSpec, values: list[float | None], current: str) -> str:
    """The state after judging ``values`` (one per period, oldest first; None where no data).

    notBreaching: the last ``datapoints`` periods, a missing one not breaching. ignore: the last
    ``datapoints`` periods that have data (looking back as far as ``values`` goes); no data in the last
    ``datapoints`` periods, or too few in all, keeps ``current``."""
    if spec.missing_data == "notBreaching":
        return "ALARM" if spec.breaches(values) else "OK"
    present = [v for v in values if v is not None]
    if all(v is None for v in values[-spec.datapoints:]) or len(present) < spec.datapoints:
        return current
    return "ALARM" if spec.breaches(present) else "OK"


@dataclass
class AlarmEvaluator:
    """Evaluates one model's alarms from (moto's) CloudWatch; puts an event on each change of state."""

    cloudwatch: Any
    router: LocalRouter
    model: str
    states: dict[str, str] = field(default_factory=dict)
    registered: bool = False

    def evaluate(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        now = now or dt.datetime.now(dt.UTC)
        self.register()
        events = []
        for name, spec in metric_alarms(self.model).items():
            values = self.period_values(spec, now)
            previous = self.states.get(name, "OK")
            state = next_state(spec, values, previous)
            if state != previous:
                events.append(self._change(name, state, previous, state_change_event(
                    name, spec, state, previous, values[-spec.datapoints:], now)))
        composite = drift_alarm_name(self.model)
        signals = [name for name in drift_signal_alarms(self.model) if self.states.get(name) == "ALARM"]
        state, previous = ("ALARM" if signals else "OK"), self.states.get(composite, "OK")
        if state != previous:
            events.append(self._change(composite, state, previous, composite_change_event(
                composite, composite_rule(self.model), state, previous, signals, now)))
        return events

    def _change(self, name: str, state: str, previous: str, event: dict[str, Any]) -> dict[str, Any]:
        self.states[name] = state
        self.cloudwatch.set_alarm_state(AlarmName=name, StateValue=state,
                                        StateReason=event["detail"]["state"]["reason"][:1023])
        self.router.put(event)
        return event

    def register(self) -> None:
        """The alarms in moto's CloudWatch, once (those already there, e.g. put by `slimserve up`, are kept)."""
        if self.registered:
            return
        existing = {a["AlarmName"] for page in self.cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmTypes=["MetricAlarm", "CompositeAlarm"]) for kind in ("MetricAlarms", "CompositeAlarms")
            for a in page.get(kind, [])}
        for name, spec in metric_alarms(self.model).items():
            if name not in existing:
                self.cloudwatch.put_metric_alarm(
                    AlarmName=name, Namespace=spec.namespace, MetricName=spec.metric_name,
                    Period=spec.period_seconds, EvaluationPeriods=spec.datapoints, Threshold=spec.threshold,
                    ComparisonOperator=spec.comparison, Dimensions=_dimensions(spec, self.model),
                    TreatMissingData=spec.missing_data,
                    **({"ExtendedStatistic": spec.statistic} if spec.statistic.startswith("p")
                       else {"Statistic": spec.statistic}))
        composite = drift_alarm_name(self.model)
        if composite not in existing:
            _put_composite_alarm(composite, composite_rule(self.model))
        for name in [*metric_alarms(self.model), composite]:
            self.states.setdefault(name, "OK")
            self.cloudwatch.set_alarm_state(AlarmName=name, StateValue=self.states[name],
                                            StateReason="evaluated locally from the emulated account's metrics")
        self.registered = True

    def period_values(self, spec: AlarmSpec, now: dt.datetime) -> list[float | None]:
        """The spec's statistic for each of its last periods, oldest first (None: no data): ``datapoints``
        periods, twice as many where missing data is ignored (the look-back for enough datapoints).

        The periods end now, not on period boundaries: locally a burst of requests is judged at once."""
        periods = spec.datapoints * (2 if spec.missing_data == "ignore" else 1)
        statistic = "Maximum" if spec.statistic == "p99" else spec.statistic  # moto computes no percentiles
        asked = ["Sum", "SampleCount"] if statistic == "Average" else [statistic]
        end = now.replace(microsecond=0) + dt.timedelta(seconds=1)
        start = end - dt.timedelta(seconds=spec.period_seconds * periods)
        queries = [{"Id": f"m{i}_{stat.lower()}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": spec.namespace, "MetricName": spec.metric_name, "Dimensions": dims},
            "Period": spec.period_seconds, "Stat": stat}}
            for i, dims in enumerate(self.series(spec)) for stat in asked]
        found: dict[int, dict[str, list[float]]] = {}
        if queries:
            results = self.cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=end)
            for result in results["MetricDataResults"]:
                stat = next(s for s in asked if result["Id"].endswith(s.lower()))
                for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                    index = int((stamp - start).total_seconds()) // spec.period_seconds
                    if 0 <= index < periods:
                        found.setdefault(index, {}).setdefault(stat, []).append(value)
        return [_combine(statistic, found[i]) if i in found else None for i in range(periods)]

    def series(self, spec: AlarmSpec) -> list[list[dict[str, str]]]:
        """The dimension sets whose data the alarm reads: its own, and those it stands for locally."""
        wanted = {d["Name"]: d["Value"] for d in _dimensions(spec, self.model)}
        out: dict[tuple[tuple[str, str], ...], list[dict[str, str]]] = {}  # moto may list a metric twice
        for page in self.cloudwatch.get_paginator("list_metrics").paginate(
                Namespace=spec.namespace, MetricName=spec.metric_name,
                Dimensions=[{"Name": k, "Value": v} for k, v in wanted.items()]):
            for metric in page["Metrics"]:
                have = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
                if all(have.get(k) == v for k, v in wanted.items()) and set(have) - set(wanted) <= STANDS_FOR_FEWER:
                    out[tuple(sorted(have.items()))] = metric["Dimensions"]
        return list(out.values())


def _put_composite_alarm(name: str, rule: str) -> None:
    """moto answers PutCompositeAlarm with NotImplemented; its backend (moto runs in this process, in-process
    or as the threaded server of `slimserve up`) stores the rule, and describe_alarms lists it."""
    from moto.cloudwatch.models import cloudwatch_backends

    cloudwatch_backends[ACCOUNT][REGION].put_metric_alarm(
        name=name, namespace=None, metric_name=None, comparison_operator=None,  # type: ignore[arg-type]
        evaluation_periods=None, period=None, threshold=None, statistic=None,  # type: ignore[arg-type]
        description="Inputs or predictions drifted from the profile: starts a retraining run", dimensions=[],
        alarm_actions=[], rule=rule)


def _dimensions(spec: AlarmSpec, model: str) -> list[dict[str, str]]:
    return [{"Name": spec.dimension, "Value": model}] + [{"Name": k, "Value": v} for k, v in spec.fixed_dimensions]


def _combine(statistic: str, values: Mapping[str, list[float]]) -> float:
    if statistic == "Average":
        return sum(values["Sum"]) / sum(values["SampleCount"])
    got = values[statistic]
    return max(got) if statistic == "Maximum" else min(got) if statistic == "Minimum" else sum(got)


def composite_rule(model: str) -> str:
    """The drift composite's rule as CloudWatch writes `AlarmRule.any_of`: ALARM(a) OR ALARM(b) ..."""
    return " OR ".join(f'ALARM("{name}")' for name in drift_signal_alarms(model))


def _event(name: str, state: str, previous: str, reason: str, configuration: dict[str, Any],
           now: dt.datetime) -> dict[str, Any]:
    """The event CloudWatch puts on the default bus when an alarm changes state."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": ALARM_STATE_CHANGE,
            "source": "aws.cloudwatch", "account": ACCOUNT, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION, "resources": [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"],
            "detail": {"alarmName": name, "state": {"value": state, "reason": reason, "timestamp": stamp},
                       "previousState": {"value": previous, "timestamp": stamp}, "configuration": configuration}}


def state_change_event(name: str, spec: AlarmSpec, state: str, previous: str, values: list[float | None],
                       now: dt.datetime) -> dict[str, Any]:
    """A metric alarm's state change, its reason naming the datapoints judged."""
    shown = ", ".join("no data" if v is None else f"{v:g}" for v in values)
    comparison = spec.comparison.removesuffix("Threshold")
    reason = (f"Threshold Crossed: {spec.datapoints} datapoint(s) [{shown}] "
              f"{'' if state == 'ALARM' else 'not '}{comparison} {spec.threshold:g} "
              f"({spec.metric_name} {spec.statistic})")
    return _event(name, state, previous, reason, {"metrics": [{"metricStat": {"metric": {
        "namespace": spec.namespace, "name": spec.metric_name}, "stat": spec.statistic,
        "period": spec.period_seconds}}]}, now)


def composite_change_event(name: str, rule: str, state: str, previous: str, in_alarm: list[str],
                           now: dt.datetime) -> dict[str, Any]:
    """A composite alarm's state change: its rule, and which of its alarms are in ALARM."""
    reason = (f"{', '.join(in_alarm)} in ALARM" if in_alarm else "no alarm of the rule in ALARM")
    return _event(name, state, previous, reason, {"alarmRule": rule}, now)
