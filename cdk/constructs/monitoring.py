"""Monitoring: the one place where the stack's alarms (and, later, dashboards) are made.

Constructs receive it in their props and ask for an alarm by spec (`alarms.py`); the alarm lives here,
named after the construct that asked, so every alarm of the stack is under one path.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from .alarms import DEAD_LETTERS, FUNCTION_ERRORS, RUNS_FAILED, RUNS_TIMED_OUT, AlarmSpec

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

    def alarm(self, owner: Construct, name: str, spec: AlarmSpec, resource: str, description: str
              ) -> cloudwatch.Alarm:
        """An alarm on `spec` for one resource (`resource` is its dimension value), id `<owner id><name>`."""
        construct_id = f"{owner.node.id}{name}"
        metric = cloudwatch.Metric(namespace=spec.namespace, metric_name=spec.metric_name,
                                   dimensions_map={spec.dimension: resource}, statistic=spec.statistic,
                                   period=Duration.seconds(spec.period_seconds))
        alarm = metric.create_alarm(
            self, construct_id, threshold=spec.threshold, evaluation_periods=spec.datapoints,
            comparison_operator=_COMPARISONS[spec.comparison],
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description)
        self.alarms[construct_id] = (spec, alarm)
        return alarm

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
