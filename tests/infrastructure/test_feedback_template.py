"""The synthesized feedback pieces: the labels table, POST /feedback apart from /predict, the signing key and
who may read it, the review queue, the live accuracy alarm, and the feedback/ notification."""

from __future__ import annotations

import json
from typing import Any

import pytest
from synth_helpers import Synth


def _one(synth: Synth, resource_type: str, fragment: str) -> tuple[str, dict[str, Any]]:
    found = [(k, v) for k, v in synth.resources(resource_type).items() if fragment in k]
    assert len(found) == 1, f"expected one {resource_type} named like {fragment}, found {[k for k, _ in found]}"
    return found[0]


def _statements(synth: Synth, role_fragment: str) -> list[dict[str, Any]]:
    """The statements of the inline policies attached to the role whose logical id contains the fragment."""
    role_id, _ = _one(synth, "AWS::IAM::Role", role_fragment)
    return [s for policy in synth.resources("AWS::IAM::Policy").values()
            if {"Ref": role_id} in policy["Properties"]["Roles"]
            for s in policy["Properties"]["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def test_labels_table_has_pitr_encryption_ttl_and_deletion_protection(default_synth: Synth) -> None:
    _, table = _one(default_synth, "AWS::DynamoDB::Table", "FeedbackTable")
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "prediction_id", "KeyType": "HASH"}]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["DeletionPolicy"] == "Retain" and props["DeletionProtectionEnabled"] is True


def test_feedback_is_its_own_iam_authorised_resource(default_synth: Synth) -> None:
    found = default_synth.resources("AWS::ApiGateway::Resource")
    resources = {v["Properties"]["PathPart"]: k for k, v in found.items()}
    assert {"predict", "feedback"} <= set(resources)
    methods = {m["Properties"]["ResourceId"]["Ref"]: m["Properties"]
               for m in default_synth.resources("AWS::ApiGateway::Method").values()
               if isinstance(m["Properties"].get("ResourceId"), dict)}
    feedback = methods[resources["feedback"]]
    assert feedback["HttpMethod"] == "POST" and feedback["AuthorizationType"] == "AWS_IAM"
    assert methods[resources["predict"]]["AuthorizationType"] == "AWS_IAM"
    integration_arn = json.dumps(feedback["Integration"]["Uri"])
    assert "FeedbackFunction" in integration_arn  # served by the feedback function, not inference


def test_feedback_method_is_throttled_on_its_own(default_synth: Synth) -> None:
    _, stage = default_synth.one("AWS::ApiGateway::Stage")
    settings = {s["ResourcePath"]: s for s in stage["Properties"]["MethodSettings"]}
    feedback = settings["/~1feedback"]
    assert feedback["HttpMethod"] == "POST"
    assert (feedback["ThrottlingRateLimit"], feedback["ThrottlingBurstLimit"]) == (10, 20)


def test_only_inference_and_feedback_may_read_the_key(default_synth: Synth) -> None:
    secret_id, secret = _one(default_synth, "AWS::SecretsManager::Secret", "PredictionIdKey")
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] == 64
    readers = {role for role_id in default_synth.resources("AWS::IAM::Role")
               for role in [role_id] for s in _statements(default_synth, role_id)
               if "secretsmanager:GetSecretValue" in _actions(s) and {"Ref": secret_id} == s["Resource"]}
    assert readers and all(any(n in r for n in ("ServingInferenceFunction", "FeedbackFunction",
                                                "FeedbackFilesFunction")) for r in readers), readers
    assert len(readers) == 3


def test_feedback_functions_only_put_labels(default_synth: Synth) -> None:
    table_id, _ = _one(default_synth, "AWS::DynamoDB::Table", "FeedbackTable")
    for role in ("FeedbackFunctionRole", "FeedbackFilesFunctionRole"):
        on_table = [s for s in _statements(default_synth, role) if table_id in json.dumps(s["Resource"])]
        assert on_table and all(_actions(s) == {"dynamodb:PutItem"} for s in on_table)


def test_inference_may_send_to_the_review_queue_and_reads_its_settings(default_synth: Synth) -> None:
    queue_id, queue = _one(default_synth, "AWS::SQS::Queue", "FeedbackReviewQueue")
    assert "RedrivePolicy" in queue["Properties"] and queue["Properties"]["SqsManagedSseEnabled"] is True
    sends = [s for s in _statements(default_synth, "ServingInferenceFunctionRole")
             if "sqs:SendMessage" in _actions(s)]
    assert sends and all(queue_id in json.dumps(s["Resource"]) for s in sends)
    _, fn = _one(default_synth, "AWS::Lambda::Function", "ServingInferenceFunction")
    env = fn["Properties"]["Environment"]["Variables"]
    assert {"PREDICTION_ID_SECRET_ARN", "REVIEW_QUEUE_URL"} <= set(env)
    assert "REVIEW_CONFIDENCE_BELOW" not in env  # off unless configured


def test_live_accuracy_alarm_watches_the_model(default_synth: Synth) -> None:
    _, alarm = _one(default_synth, "AWS::CloudWatch::Alarm", "FeedbackLiveAccuracyAlarm")
    props = alarm["Properties"]
    assert (props["MetricName"], props["Namespace"], props["Statistic"]) == ("LiveAccuracy", "Slimserve", "Average")
    assert props["Dimensions"] == [{"Name": "model_name", "Value": "churn"}]
    assert props["ComparisonOperator"] == "LessThanThreshold" and props["Threshold"] == 0.8


def test_feedback_files_notify_the_files_function(default_synth: Synth) -> None:
    _, notifications = default_synth.one("Custom::S3BucketNotifications")
    configs = notifications["Properties"]["NotificationConfiguration"]["LambdaFunctionConfigurations"]
    feedback = [c for c in configs if "FeedbackFilesFunction" in json.dumps(c["LambdaFunctionArn"])]
    assert len(feedback) == 1
    assert feedback[0]["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "feedback/"}]


@pytest.mark.parametrize(("field", "value"), [("live_accuracy_threshold", 0.0), ("review_confidence_below", 1.5),
                                              ("throttle_burst_limit", 1)])
def test_bad_feedback_settings_are_refused_by_name(field: str, value: float) -> None:
    from cdk.constructs.feedback import FeedbackSettings

    with pytest.raises(ValueError, match=field):
        FeedbackSettings(**{field: value}).validate()
