"""Monitoring: the one place where the stack's alarms (and, later, dashboards) are made.

Constructs receive it in their props and ask for an alarm by spec (`alarms.py`); the alarm lives here,
named after the construct that asked, so every alarm of the stack is under one path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from .alarms import (
    ALIAS_DURATION,
    ALIAS_ERRORS,
    ALIAS_THROTTLES,
    API_5XX,
    DEAD_LETTERS,
    FUNCTION_ERRORS,
    MODEL_ROLES,
    RUNS_FAILED,
    RUNS_TIMED_OUT,
    AlarmSpec,
    role_errors,
    role_latency,
)

_COMPARISONS = {
    "GreaterThanThreshold": cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    "GreaterThanOrEqualToThreshold": cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    "LessThanThreshold": cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
    "LessThanOrEqualToThreshold": cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
}


class Monitoring(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.alarms: dict[str, tuple[AlarmSpec, cloudwatch.Alarm]] = {}
        """Every alarm made, by construct id, with the spec it was made from."""

    def alarm(self, owner: Construct, name: str, spec: AlarmSpec, resource: str, description: str,
              alarm_name: str | None = None, dimensions: Mapping[str, str] | None = None) -> cloudwatch.Alarm:
        """An alarm on `spec` for one resource (`resource` is its dimension value), id `<owner id><name>`.
        `alarm_name` only where a name is part of a contract (an EventBridge rule matches it)."""
        construct_id = f"{owner.node.id}{name}"
        metric = cloudwatch.Metric(namespace=spec.namespace, metric_name=spec.metric_name,
                                   dimensions_map={spec.dimension: resource, **dict(spec.fixed_dimensions),
                                                   **(dimensions or {})},
                                   statistic=spec.statistic, period=Duration.seconds(spec.period_seconds))
        alarm = metric.create_alarm(
            self, construct_id, threshold=spec.threshold, evaluation_periods=spec.datapoints,
            comparison_operator=_COMPARISONS[spec.comparison],
            treat_missing_data=(cloudwatch.TreatMissingData.IGNORE if spec.missing_data == "ignore"
                                else cloudwatch.TreatMissingData.NOT_BREACHING),
            alarm_description=description, alarm_name=alarm_name)
        self.alarms[construct_id] = (spec, alarm)
        return alarm

    def any_of(self, owner: Construct, name: str, alarms: Sequence[cloudwatch.IAlarm], alarm_name: str,
               description: str) -> cloudwatch.CompositeAlarm:
        """One alarm in ALARM while any of `alarms` is: a rule matching its name hears one incident once."""
        construct_id = f"{owner.node.id}{name}"
        return cloudwatch.CompositeAlarm(self, construct_id, composite_alarm_name=alarm_name,
                                         alarm_rule=cloudwatch.AlarmRule.any_of(*alarms),
                                         alarm_description=description)

    def function_errors(self, owner: Construct, name: str, function: lambda_.IFunction,
                        description: str) -> cloudwatch.Alarm:
        return self.alarm(owner, name, FUNCTION_ERRORS, function.function_name, description)

    def dead_letters(self, owner: Construct, name: str, queue: sqs.IQueue, description: str) -> cloudwatch.Alarm:
        return self.alarm(owner, name, DEAD_LETTERS, queue.queue_name, description)

    def runs_failed(self, owner: Construct, name: str, machine: sfn.IStateMachine,
                    description: str) -> cloudwatch.Alarm:
        return self.alarm(owner, name, RUNS_FAILED, machine.state_machine_arn, description)

    def runs_timed_out(self, owner: Construct, name: str, machine: sfn.IStateMachine,
                       description: str) -> cloudwatch.Alarm:
        return self.alarm(owner, name, RUNS_TIMED_OUT, machine.state_machine_arn, description)

    def model_roles(self, owner: Construct, model_name: str) -> dict[str, cloudwatch.Alarm]:
        """Errors and p99 model latency per role of one model, named `slimserve-<model>-<role>-<metric>`:
        a champion alarm rolls the champion back (rule `champion_alarm_prefix`), a canary one shows on the console."""
        alarms: dict[str, cloudwatch.Alarm] = {}
        for role in MODEL_ROLES:
            for metric, spec in (("errors", role_errors(role)), ("latency", role_latency(role))):
                alarms[f"{role}-{metric}"] = self.alarm(
                    owner, f"{role.title()}{metric.title()}Alarm", spec, model_name,
                    f"The {role} of {model_name}: {spec.metric_name} {spec.statistic} above {spec.threshold:g}",
                    alarm_name=f"{model_alarm_prefix(model_name, role)}{metric}")
        return alarms

    def alias(self, owner: Construct, function: lambda_.IFunction, alias: lambda_.IAlias) -> list[cloudwatch.Alarm]:
        """Errors, throttles and p99 duration of one alias: what a code release watches."""
        resource = f"{function.function_name}:{alias.alias_name}"
        extra = {"FunctionName": function.function_name}
        return [self.alarm(owner, f"Alias{name}Alarm", spec, resource, f"Alias {alias.alias_name}: {spec.metric_name}",
                           dimensions=extra)
                for name, spec in (("Errors", ALIAS_ERRORS), ("Throttles", ALIAS_THROTTLES),
                                   ("Duration", ALIAS_DURATION))]

    def api_errors(self, owner: Construct, api: apigw.RestApi) -> cloudwatch.Alarm:
        return self.alarm(owner, "Api5xxAlarm", API_5XX, api.rest_api_name, "The API answered 5xx",
                          dimensions={"Stage": api.deployment_stage.stage_name})


def model_alarm_prefix(model_name: str, role: str) -> str:
    """`slimserve-<model>-<role>-`: the alarm names an EventBridge rule matches by prefix."""
    return f"slimserve-{model_name}-{role}-"
