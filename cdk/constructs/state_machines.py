"""The one way slimserve builds a state machine: STANDARD, its own role, traced, every state event
logged to a retained log group without execution data (rows and inputs never reach the logs)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct


def logged_state_machine(scope: Construct, construct_id: str, chain: sfn.IChainable, *,
                         log_retention: logs.RetentionDays, timeout_hours: int, role_description: str,
                         comment: str) -> sfn.StateMachine:
    log_group = logs.LogGroup(scope, "StateMachineLogs", retention=log_retention,
                              removal_policy=RemovalPolicy.RETAIN)
    role = iam.Role(scope, "StateMachineRole", assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
                    description=role_description)
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
