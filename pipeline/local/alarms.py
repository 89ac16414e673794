"""Alarms in the emulated account: moto stores metrics but never evaluates alarms, nor puts the
"CloudWatch Alarm State Change" event. This evaluator reads the serving metrics with the stack's
own AlarmSpecs, and on a change of state puts that event into a local router that matches the
stack's EventBridge rules (moto's own pattern matching) and calls their targets.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdk.constructs.alarms import MODEL_ROLES, AlarmSpec, role_errors, role_latency

Target = Callable[[dict[str, Any]], Any]


def champion_rule_pattern(model: str) -> dict[str, Any]:
    """The rule that sends a champion alarm of ``model`` to the rollback function."""
    return {"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"],
            "detail": {"alarmName": [{"prefix": f"slimserve-{model}-champion-"}], "state": {"value": ["ALARM"]}}}


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


@dataclass
class AlarmEvaluator:
    """Evaluates one model's role alarms from (moto's) CloudWatch; puts an event on each change of state."""

    cloudwatch: Any
    router: LocalRouter
    model: str
    states: dict[str, str] = field(default_factory=dict)

    def evaluate(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        now = now or dt.datetime.now(dt.UTC)
        events = []
        for name, spec in model_alarms(self.model).items():
            values = self.period_values(spec, now)
            state = "ALARM" if spec.breaches(values) else "OK"
            previous = self.states.get(name, "OK")
            if state != previous:
                self.states[name] = state
                event = state_change_event(name, spec, state, previous, values, now)
                events.append(event)
                self.router.put(event)
        return events

    def period_values(self, spec: AlarmSpec, now: dt.datetime) -> list[float | None]:
        """The spec's statistic for each of its last ``datapoints`` periods, oldest first (None: no data).

        The periods end now, not on minute boundaries: locally a burst of requests is judged at once."""
        dims = [{"Name": spec.dimension, "Value": self.model}] + [{"Name": k, "Value": v}
                                                                  for k, v in spec.fixed_dimensions]
        statistic = "Maximum" if spec.statistic == "p99" else spec.statistic  # moto computes no percentiles
        period = dt.timedelta(seconds=spec.period_seconds)
        values: list[float | None] = []
        for i in range(spec.datapoints, 0, -1):
            start, end = now - i * period, now - (i - 1) * period + dt.timedelta(seconds=1)
            points = self.cloudwatch.get_metric_statistics(
                Namespace=spec.namespace, MetricName=spec.metric_name, Dimensions=dims, StartTime=start,
                EndTime=end, Period=spec.period_seconds * 2, Statistics=[statistic])["Datapoints"]
            values.append(_combine(statistic, [p[statistic] for p in points]) if points else None)
        return values


def _combine(statistic: str, values: list[float]) -> float:
    return max(values) if statistic == "Maximum" else min(values) if statistic == "Minimum" else sum(values)


def state_change_event(name: str, spec: AlarmSpec, state: str, previous: str, values: list[float | None],
                       now: dt.datetime) -> dict[str, Any]:
    """The event CloudWatch puts on the default bus when an alarm changes state."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"
    shown = ", ".join("no data" if v is None else f"{v:g}" for v in values)
    reason = (f"Threshold Crossed: {spec.datapoints} datapoint(s) [{shown}] "
              f"{'>' if state == 'ALARM' else 'not >'} {spec.threshold:g} ({spec.metric_name} {spec.statistic})")
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch", "account": "123456789012", "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": "us-east-1", "resources": [f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}"],
            "detail": {"alarmName": name, "state": {"value": state, "reason": reason, "timestamp": stamp},
                       "previousState": {"value": previous, "timestamp": stamp},
                       "configuration": {"metrics": [{"metricStat": {"metric": {
                           "namespace": spec.namespace, "name": spec.metric_name}, "stat": spec.statistic,
                           "period": spec.period_seconds}}]}}}
