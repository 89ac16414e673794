"""Monitoring: the one place where the stack's alarms, its alarm topic and the model's dashboard are made.

Constructs receive it in their props and ask for an alarm by spec (`alarms.py`); the alarm lives here,
named after the construct that asked, so every alarm of the stack is under one path. Every alarm tells
one SNS topic (`topic`) when it goes to ALARM, except the members of a composite alarm, which the
composite speaks for (one incident, one message). The functions and dead-letter queues the alarms watch
are remembered, so the dashboard draws them too.

The topic has a key of its own: CloudWatch publishes to an encrypted topic only where the key's policy
lets cloudwatch.amazonaws.com use it, which the AWS-managed aws/sns key never does. The release topic
(`release.py`) stays apart: its subscribers read the release and rollback functions' JSON notices, not
CloudWatch's alarm messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
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
    HTTP_API_5XX,
    MODEL_ROLES,
    RUNS_FAILED,
    RUNS_TIMED_OUT,
    SHADOW_AGREEMENT_THRESHOLD,
    SHADOW_ERRORS,
    AlarmSpec,
    role_errors,
    role_latency,
    shadow_agreement_spec,
)
from .dashboard import DashboardProps, model_dashboard
from .function import SlimserveFunction

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
        self.dead_letter_queues: dict[str, sqs.IQueue] = {}
        """Every dead-letter queue an alarm watches, by construct path: the dashboard draws their depth."""
        self.drift_per_feature = True
        """Whether the drift function publishes per-feature metrics (its construct says): drawn, or said where."""
        self.shadow_alarms: list[tuple[AlarmSpec, cloudwatch.Alarm]] = []
        """The model's shadow alarms with their specs (`shadow`): the dashboard's shadow row shows them."""
        self.topic = self._topic()
        self._notify = actions.SnsAction(self.topic)
        CfnOutput(self, "AlarmTopicArn", value=self.topic.topic_arn,
                  description="Every alarm of the stack notifies this topic: subscribe to hear them")

    def _topic(self) -> sns.Topic:
        key = kms.Key(self, "AlarmTopicKey", enable_key_rotation=True,
                      description="slimserve alarm topic: CloudWatch alarms publish through it")
        stack = Stack.of(self)
        # CloudWatch may use the key and the topic for this account's alarms only (no confused deputy).
        alarms_of_this_account = {
            "StringEquals": {"aws:SourceAccount": stack.account},
            "ArnLike": {"aws:SourceArn": f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:*"}}
        cloudwatch_service = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublish", principals=[cloudwatch_service],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"], conditions=alarms_of_this_account))
        topic = sns.Topic(self, "AlarmTopic", display_name="slimserve alarms", master_key=key, enforce_ssl=True)
        topic.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublish", principals=[cloudwatch_service], actions=["sns:Publish"],
            resources=[topic.topic_arn], conditions=alarms_of_this_account))
        return topic

    def alarm(self, owner: Construct, name: str, spec: AlarmSpec, resource: str, description: str,
              alarm_name: str | None = None, dimensions: Mapping[str, str] | None = None,
              notify: bool = True) -> cloudwatch.Alarm:
        """An alarm on `spec` for one resource (`resource` is its dimension value), id `<owner id><name>`.
        `alarm_name` only where a name is part of a contract (an EventBridge rule matches it); `notify=False`
        only for a member of a composite alarm (`any_of`), which notifies for it."""
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
        if notify:
            alarm.add_alarm_action(self._notify)
        self.alarms[construct_id] = (spec, alarm)
        return alarm

    def any_of(self, owner: Construct, name: str, alarms: Sequence[cloudwatch.IAlarm], alarm_name: str,
               description: str) -> cloudwatch.CompositeAlarm:
        """One alarm in ALARM while any of `alarms` is: a rule matching its name hears one incident once."""
        construct_id = f"{owner.node.id}{name}"
        composite = cloudwatch.CompositeAlarm(self, construct_id, composite_alarm_name=alarm_name,
                                              alarm_rule=cloudwatch.AlarmRule.any_of(*alarms),
                                              alarm_description=description)
        composite.add_alarm_action(self._notify)
        return composite

    def function_errors(self, owner: Construct, name: str, function: lambda_.IFunction,
                        description: str) -> cloudwatch.Alarm:
        return self.alarm(owner, name, FUNCTION_ERRORS, function.function_name, description)

    def dead_letters(self, owner: Construct, name: str, queue: sqs.IQueue, description: str) -> cloudwatch.Alarm:
        self.dead_letter_queues.setdefault(queue.node.path, queue)
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

    def shadow(self, owner: Construct, model_name: str,
               agreement_below: float = SHADOW_AGREEMENT_THRESHOLD) -> list[cloudwatch.Alarm]:
        """A shadow's errors (any in five minutes) and its hourly agreement with the served answer (below
        ``agreement_below``): they notify the topic and nothing else; their generated names match no rule,
        so a shadow never rolls anything back or starts a retraining."""
        agreement = shadow_agreement_spec(agreement_below)
        self.shadow_alarms = [
            (SHADOW_ERRORS, self.alarm(owner, "ShadowErrorsAlarm", SHADOW_ERRORS, model_name,
                                       f"The shadow of {model_name} failed (its warning log lines say why); its "
                                       "answers are never served")),
            (agreement, self.alarm(owner, "ShadowAgreementAlarm", agreement, model_name,
                                   f"The shadow of {model_name} agreed with the served answer on less than "
                                   f"{agreement.threshold:.0%} of rows over an hour")),
        ]
        return [alarm for _, alarm in self.shadow_alarms]

    def alias(self, owner: Construct, function: lambda_.IFunction, alias: lambda_.IAlias) -> list[cloudwatch.Alarm]:
        """Errors, throttles and p99 duration of one alias: what a code release watches."""
        resource = f"{function.function_name}:{alias.alias_name}"
        extra = {"FunctionName": function.function_name}
        return [self.alarm(owner, f"Alias{name}Alarm", spec, resource, f"Alias {alias.alias_name}: {spec.metric_name}",
                           dimensions=extra)
                for name, spec in (("Errors", ALIAS_ERRORS), ("Throttles", ALIAS_THROTTLES),
                                   ("Duration", ALIAS_DURATION))]

    def api_errors(self, owner: Construct, api: apigw.RestApi | apigwv2.HttpApi) -> cloudwatch.Alarm:
        if isinstance(api, apigwv2.HttpApi):
            return self.alarm(owner, "Api5xxAlarm", HTTP_API_5XX, _api_name(api), "The API answered 5xx",
                              dimensions={"Stage": "$default"})
        return self.alarm(owner, "Api5xxAlarm", API_5XX, _api_name(api), "The API answered 5xx",
                          dimensions={"Stage": api.deployment_stage.stage_name})


    def dashboard(self, model_name: str, serving_function: lambda_.IFunction,
                  api: apigw.RestApi | apigwv2.HttpApi, *,
                  batch: bool = False, live_accuracy_threshold: float | None = None) -> cloudwatch.Dashboard:
        """The model's dashboard (`dashboard.py`), made last: it draws every function of the stack and every
        dead-letter queue an alarm watches by then."""
        functions = {serving_function.node.path: serving_function}
        functions.update((c.node.path, c) for c in Stack.of(self).node.find_all() if isinstance(c, SlimserveFunction))
        return model_dashboard(self, "Dashboard", DashboardProps(
            model_name=model_name, serving_function=serving_function, api_name=_api_name(api),
            api_stage="$default" if isinstance(api, apigwv2.HttpApi) else api.deployment_stage.stage_name,
            http_api=isinstance(api, apigwv2.HttpApi), functions=list(functions.values()),
            dead_letter_queues=list(self.dead_letter_queues.values()), batch=batch,
            live_accuracy_threshold=live_accuracy_threshold, drift_per_feature=self.drift_per_feature,
            shadow_alarms=list(self.shadow_alarms)))


def _api_name(api: apigw.RestApi | apigwv2.HttpApi) -> str:
    """What API Gateway's metrics are keyed by: a REST API's name, an HTTP API's id."""
    return api.api_id if isinstance(api, apigwv2.HttpApi) else api.rest_api_name


def model_alarm_prefix(model_name: str, role: str) -> str:
    """`slimserve-<model>-<role>-`: the alarm names an EventBridge rule matches by prefix."""
    return f"slimserve-{model_name}-{role}-"
