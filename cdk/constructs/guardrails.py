"""FunctionGuardrails: an Aspect that stops synth when a Lambda function lacks X-Ray tracing, reserved
concurrency or a log group with a retention (house style: secure defaults on every function).

It checks what will be deployed (the CfnFunction), so a function made without `SlimserveFunction` is
held to the same rules. CDK's own deploy-time helpers (e.g. the bucket-notifications handler) are plain
CfnResources, not CfnFunctions, and are not the project's to configure.
"""

from __future__ import annotations

from typing import Any

import jsii
from aws_cdk import IAspect, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import IConstruct


class GuardrailError(ValueError):
    """A function breaks a house rule; the message names the function's path and the rule."""


@jsii.implements(IAspect)
class FunctionGuardrails:
    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, lambda_.CfnFunction):
            return
        problems = [p for p in (_tracing(node), _reserved_concurrency(node), _log_retention(node)) if p]
        if problems:
            raise GuardrailError(f"{node.node.path}: " + "; ".join(problems))


def _tracing(fn: lambda_.CfnFunction) -> str | None:
    config = Stack.of(fn).resolve(fn.tracing_config)
    if not isinstance(config, dict) or config.get("mode") != "Active":
        return "X-Ray tracing must be Active (tracing=lambda_.Tracing.ACTIVE)"
    return None


def _reserved_concurrency(fn: lambda_.CfnFunction) -> str | None:
    if fn.reserved_concurrent_executions is None:
        return "reserved concurrency must be set (reserved_concurrent_executions)"
    return None


def _log_retention(fn: lambda_.CfnFunction) -> str | None:
    stack = Stack.of(fn)
    config: Any = stack.resolve(fn.logging_config)
    ref = config.get("logGroup") if isinstance(config, dict) else None
    group = _log_group(stack, ref)
    if group is None:
        return "logs must go to a log group of this stack (log_group=...)"
    if group.retention_in_days is None:
        return f"its log group {group.node.path} must have a retention"
    return None


def _log_group(stack: Stack, ref: Any) -> logs.CfnLogGroup | None:
    if not isinstance(ref, dict) or "Ref" not in ref:
        return None
    for child in stack.node.find_all():
        if isinstance(child, logs.CfnLogGroup) and stack.resolve(child.logical_id) == ref["Ref"]:
            return child
    return None
