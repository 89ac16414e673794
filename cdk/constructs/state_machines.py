"""The one way slimserve builds a state machine: STANDARD, its own role, traced, every state event
logged to a retained log group without execution data (rows and inputs never reach the logs)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from .nag import checkov_skip


def logged_state_machine(scope: Construct, construct_id: str, chain: sfn.IChainable, *,
                         log_retention: logs.RetentionDays, timeout_hours: int, role_description: str,
                         comment: str, log_group_id: str | None = None, role_id: str | None = None,
                         ) -> sfn.StateMachine:
    """The log group and role are `<construct_id>Logs` and `<construct_id>Role` beside the machine, so
    two machines can share a scope; `log_group_id`/`role_id` keep the ids of an already deployed one."""
    log_group = logs.LogGroup(scope, log_group_id or f"{construct_id}Logs", retention=log_retention,
                              removal_policy=RemovalPolicy.RETAIN)
    checkov_skip(log_group, "CKV_AWS_158", "service-encrypted at rest; state events are logged without "
                                           "execution data, so no input or row reaches this group")
    role = iam.Role(scope, role_id or f"{construct_id}Role",
                    assumed_by=iam.ServicePrincipal("states.amazonaws.com"), description=role_description)
    return sfn.StateMachine(
        scope, construct_id,
        definition_body=sfn.DefinitionBody.from_chainable(chain),
        state_machine_type=sfn.StateMachineType.STANDARD,
        role=role,
        timeout=Duration.hours(timeout_hours),
        tracing_enabled=True,
        logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        comment=comment,
    )
