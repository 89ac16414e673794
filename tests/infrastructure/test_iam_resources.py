"""No IAM statement in any synthesized variant names every resource ("*") where a resource is known.

The actions below take no resource scope in IAM (or, for CDK's own helpers, are granted so by CDK);
each is listed with its reason, and a condition key where one narrows it. Anything else on "*" fails.
Managed policies are listed the same way: only the two that CDK attaches to its own roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from synth_helpers import Synth, as_list

pytestmark = pytest.mark.slow  # full synths of three variants

VARIANTS = ["default_synth", "api_key_synth", "batch_synth"]

_XRAY = "X-Ray's trace and sampling APIs take no resource"
_LOG_DELIVERY = "CloudWatch Logs delivery for a state machine's log group takes no resource"
UNSCOPED_ACTIONS: dict[str, tuple[str, str | None]] = {
    # action: (why it is granted on "*", the condition key that must narrow it, if any)
    "xray:PutTraceSegments": (_XRAY, None),
    "xray:PutTelemetryRecords": (_XRAY, None),
    "xray:GetSamplingRules": (_XRAY, None),
    "xray:GetSamplingTargets": (_XRAY, None),
    "logs:CreateLogDelivery": (_LOG_DELIVERY, None),
    "logs:GetLogDelivery": (_LOG_DELIVERY, None),
    "logs:UpdateLogDelivery": (_LOG_DELIVERY, None),
    "logs:DeleteLogDelivery": (_LOG_DELIVERY, None),
    "logs:ListLogDeliveries": (_LOG_DELIVERY, None),
    "logs:PutResourcePolicy": (_LOG_DELIVERY, None),
    "logs:DescribeResourcePolicies": (_LOG_DELIVERY, None),
    "logs:DescribeLogGroups": (_LOG_DELIVERY, None),
    "ecr:GetAuthorizationToken": ("an ECR login takes no resource; image pulls are scoped to two repositories", None),
    "cloudwatch:PutMetricData": ("metric writes take no resource", "cloudwatch:namespace"),
    "cloudwatch:GetMetricData": ("metric reads take no resource", None),
    "cloudwatch:GetMetricStatistics": ("metric reads take no resource", None),
    "sagemaker:ListTags": ("CDK's SageMaker task grants it unscoped; the job name exists only at run time", None),
}

MANAGED_POLICIES = {
    "AmazonAPIGatewayPushToCloudWatchLogs": "API Gateway's account-wide logging role (CDK's RestApi)",
    "AWSLambdaBasicExecutionRole": "CDK's bucket-notifications helper, which runs at deploy time",
    "AWSCodeDeployRoleForLambdaLimited": "CodeDeploy's own Lambda role (CDK's LambdaDeploymentGroup): moves alias live",
}


def policy_documents(synth: Synth) -> Iterator[tuple[str, dict[str, Any]]]:
    """(logical id, policy document) for every identity policy in the template, inline ones included."""
    for logical_id, resource in synth.template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, properties["PolicyDocument"]
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield logical_id, policy["PolicyDocument"]


def unscoped_problems(logical_id: str, statement: dict[str, Any]) -> list[str]:
    """What is wrong with one statement's use of "*" (nothing when it does not use it or may)."""
    if statement.get("Effect") != "Allow" or "*" not in as_list(statement.get("Resource", [])):
        return []
    problems = []
    conditions = {key for operator in statement.get("Condition", {}).values() for key in operator}
    for action in as_list(statement["Action"]):
        if action not in UNSCOPED_ACTIONS:
            problems.append(f"{logical_id}: {action} on '*'")
        elif (key := UNSCOPED_ACTIONS[action][1]) is not None and key not in conditions:
            problems.append(f"{logical_id}: {action} on '*' without a {key} condition")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_statement_grants_a_known_resource_as_a_wildcard(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    problems = [p for logical_id, document in policy_documents(synth)
                for statement in document["Statement"] for p in unscoped_problems(logical_id, statement)]
    assert problems == [], "scope these to their resources, or add the action with its reason to UNSCOPED_ACTIONS"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_namespace_condition_sits_only_on_metric_writes(variant: str, request: pytest.FixtureRequest) -> None:
    """AWS evaluates cloudwatch:namespace for PutMetricData alone: on a read it never matches, so it denies."""
    synth: Synth = request.getfixturevalue(variant)
    found = [f"{logical_id}: {action}" for logical_id, document in policy_documents(synth)
             for statement in document["Statement"]
             if any("cloudwatch:namespace" in operator for operator in statement.get("Condition", {}).values())
             for action in as_list(statement["Action"]) if action != "cloudwatch:PutMetricData"]
    assert found == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_action_is_a_service_wildcard(variant: str, request: pytest.FixtureRequest) -> None:
    """`s3:*`, `dynamodb:*`, `*`: an Allow names its actions (the TLS-only bucket policies Deny `s3:*`)."""
    synth: Synth = request.getfixturevalue(variant)
    found = [f"{logical_id}: {action}" for logical_id, document in policy_documents(synth)
             for statement in document["Statement"] if statement.get("Effect") == "Allow"
             for action in as_list(statement["Action"]) if action == "*" or action.endswith(":*")]
    assert found == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_managed_policies_are_only_cdks_own(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    attached = set()
    for role in synth.resources("AWS::IAM::Role").values():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            parts = arn["Fn::Join"][1] if isinstance(arn, dict) else [arn]
            attached.add(str(parts[-1]).rsplit("/", 1)[-1])
    assert attached <= set(MANAGED_POLICIES), f"unexpected managed policies: {sorted(attached - set(MANAGED_POLICIES))}"


def test_every_listed_exception_is_still_needed(default_synth: Synth, batch_synth: Synth) -> None:
    """A listed action no statement uses any more is dropped from the list, so it cannot hide a new one."""
    used = {action for synth in (default_synth, batch_synth) for _, document in policy_documents(synth)
            for statement in document["Statement"] if "*" in as_list(statement.get("Resource", []))
            for action in as_list(statement["Action"])}
    assert set(UNSCOPED_ACTIONS) <= used, f"no longer used on '*': {sorted(set(UNSCOPED_ACTIONS) - used)}"


def test_the_check_catches_a_known_resource_on_a_wildcard() -> None:
    """Guards the guard on statements like the ones a careless grant would write."""
    assert unscoped_problems("Careless", {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}) == [
        "Careless: s3:GetObject on '*'"]
    assert unscoped_problems("Metrics", {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*"}) == [
        "Metrics: cloudwatch:PutMetricData on '*' without a cloudwatch:namespace condition"]
    assert unscoped_problems("Deny", {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}) == []
