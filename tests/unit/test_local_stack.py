"""Reading a synthesized template for the emulated account: values rendered as moto names things, rule inputs
as EventBridge builds them, and stack outputs found whatever hash CDK gave their ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.common.errors import ConfigurationError
from pipeline.local.stack import OUTPUT_NAMES, EmulatedStack, install_rules, render, stack_endpoints, target_input

TEMPLATE: dict[str, Any] = {
    "Mappings": {"Images": {"us-east-1": {"sklearn": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sk:1"}}},
    "Resources": {
        "ModelBucketAB12CD34": {"Type": "AWS::S3::Bucket", "Properties": {}},
        "TopicE5CD520F": {"Type": "AWS::SNS::Topic", "Properties": {}},
        "TableDB777839": {"Type": "AWS::DynamoDB::Table", "Properties": {}},
        "ReleaseFunction7C47E101": {"Type": "AWS::Lambda::Function", "Properties": {
            "Handler": "functions.release.handler.lambda_handler",
            "Environment": {"Variables": {"REGISTRY_TABLE": {"Ref": "TableDB777839"},
                                          "NOTIFY_TOPIC_ARN": {"Ref": "TopicE5CD520F"}, "LOCK_TTL_SECONDS": "60"}}}},
        "MachineRole01": {"Type": "AWS::IAM::Role", "Properties": {}},
        "Machine5C3CB62B": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {}},
    },
}


@pytest.mark.parametrize(("value", "expected"), [
    ({"Ref": "ModelBucketAB12CD34"}, "modelbucketab12cd34"),
    ({"Ref": "TopicE5CD520F"}, "arn:aws:sns:us-east-1:123456789012:TopicE5CD520F"),
    ({"Ref": "TableDB777839"}, "TableDB777839"),
    ({"Ref": "Machine5C3CB62B"}, "arn:aws:states:us-east-1:123456789012:stateMachine:Machine5C3CB62B"),
    ({"Fn::GetAtt": ["ReleaseFunction7C47E101", "Arn"]},
     "arn:aws:lambda:us-east-1:123456789012:function:ReleaseFunction7C47E101"),
    ({"Fn::GetAtt": ["MachineRole01", "Arn"]}, "arn:aws:iam::123456789012:role/MachineRole01"),
    ({"Fn::Join": ["", ["s3://", {"Ref": "ModelBucketAB12CD34"}, "/holdout/"]]}, "s3://modelbucketab12cd34/holdout/"),
    ({"Fn::Sub": "s3://cdk-assets-${AWS::AccountId}-${AWS::Region}/x.gz"}, "s3://cdk-assets-123456789012-us-east-1/x.gz"),
    ({"Fn::Sub": ["${Bucket}/${TopicE5CD520F}", {"Bucket": {"Ref": "ModelBucketAB12CD34"}}]},
     "modelbucketab12cd34/arn:aws:sns:us-east-1:123456789012:TopicE5CD520F"),
    ({"Fn::FindInMap": ["Images", {"Ref": "AWS::Region"}, "sklearn"]},
     "683313688378.dkr.ecr.us-east-1.amazonaws.com/sk:1"),
], ids=["bucket", "topic", "table", "machine", "function-arn", "role-arn", "join", "sub", "sub-variables",
        "find-in-map"])
def test_a_template_value_renders_to_the_name_the_emulated_account_gives(value: Any, expected: str) -> None:
    assert render(value, TEMPLATE) == expected


def test_an_intrinsic_it_cannot_render_is_named() -> None:
    with pytest.raises(ConfigurationError, match="Fn::ImportValue"):
        render({"Fn::ImportValue": "elsewhere"}, TEMPLATE)


def test_a_function_sees_its_environment_rendered() -> None:
    (spec,) = EmulatedStack(TEMPLATE).functions().values()
    assert (spec.module, spec.attribute) == ("functions.release.handler", "lambda_handler")
    assert spec.environment == {"REGISTRY_TABLE": "TableDB777839", "LOCK_TTL_SECONDS": "60",
                                "NOTIFY_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:TopicE5CD520F"}


def test_a_rule_target_gets_the_event_its_fixed_input_or_its_transformed_input() -> None:
    event = {"id": "e-1", "detail": {"alarmName": "slimserve-churn-drift-psi"}}
    assert json.loads(target_input({"Arn": "x"}, event)) == event
    assert target_input({"Arn": "x", "Input": '{"a": 1}'}, event) == '{"a": 1}'
    transformer = {"InputPathsMap": {"id": "$.id", "alarm": "$.detail.alarmName"},
                   "InputTemplate": '{"run_id":<id>,"why":"alarm <alarm>","model":"churn"}'}
    assert json.loads(target_input({"Arn": "x", "InputTransformer": transformer}, event)) == {
        "run_id": "e-1", "why": "alarm slimserve-churn-drift-psi", "model": "churn"}


def test_stack_outputs_are_found_with_or_without_cdk_hash_and_a_missing_one_is_named() -> None:
    outputs = {name + ("" if key == "model" else "9E2B1E65"): key for key, name in OUTPUT_NAMES.items()}
    assert stack_endpoints(outputs) == {key: key for key in OUTPUT_NAMES}
    outputs.pop(OUTPUT_NAMES["release_machine"] + "9E2B1E65")
    outputs["ReleaseStateMachineArnExtra"] = "not it: not a hash"
    with pytest.raises(ConfigurationError, match="ReleaseStateMachineArn"):
        stack_endpoints(outputs)


def _alarm(name: str, state: str = "ALARM") -> dict[str, Any]:
    return {"id": "e-7", "source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change",
            "detail": {"alarmName": name, "state": {"value": state}}}


def test_the_stack_rules_send_a_champion_alarm_to_its_function_and_a_drift_alarm_to_its_machine() -> None:
    from pipeline.local.alarms import LocalRouter

    def rule(prefix: str, target: dict[str, Any]) -> dict[str, Any]:
        return {"Type": "AWS::Events::Rule", "Properties": {"State": "ENABLED", "Targets": [target], "EventPattern": {
            "source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"],
            "detail": {"alarmName": [{"prefix": prefix}], "state": {"value": ["ALARM"]}}}}}

    template = {"Resources": {**TEMPLATE["Resources"],
                              "ChampionRule": rule("slimserve-churn-champion-", {
                                  "Arn": {"Fn::GetAtt": ["ReleaseFunction7C47E101", "Arn"]}, "Id": "T0"}),
                              "DriftRule": rule("slimserve-churn-drift-", {
                                  "Arn": {"Ref": "Machine5C3CB62B"}, "Id": "T0", "InputTransformer": {
                                      "InputPathsMap": {"id": "$.id"},
                                      "InputTemplate": '{"model":"churn","run_id":<id>}'}}),
                              "Nightly": {"Type": "AWS::Events::Rule", "Properties": {
                                  "ScheduleExpression": "rate(1 day)", "Targets": []}}}}
    stack, router = EmulatedStack(template), LocalRouter()
    invoked: list[tuple[str, dict[str, Any]]] = []
    started: list[tuple[str, str]] = []
    added = install_rules(stack, router, lambda arn, event: invoked.append((arn, event)),
                          lambda arn, payload: started.append((arn, payload)))
    assert sorted(added) == ["ChampionRule", "DriftRule"] and stack.scheduled_rules() == ["Nightly"]
    router.put(_alarm("slimserve-churn-champion-errors"))
    router.put(_alarm("slimserve-churn-champion-errors", state="OK"))
    router.put(_alarm("slimserve-churn-drift-psi"))
    assert invoked == [("arn:aws:lambda:us-east-1:123456789012:function:ReleaseFunction7C47E101",
                        _alarm("slimserve-churn-champion-errors"))]
    assert [(arn, json.loads(payload)) for arn, payload in started] == [
        ("arn:aws:states:us-east-1:123456789012:stateMachine:Machine5C3CB62B", {"model": "churn", "run_id": "e-7"})]


def test_a_synth_is_reused_until_a_source_or_the_context_changes(tmp_path: Any) -> None:
    from pipeline.local.stack import sources_hash

    (tmp_path / "cdk").mkdir()
    (tmp_path / "functions").mkdir()
    (tmp_path / "cdk" / "app.py").write_text("A = 1\n")
    first = sources_hash({"slimserve:modelName": "churn"}, tmp_path)
    assert sources_hash({"slimserve:modelName": "churn"}, tmp_path) == first
    assert sources_hash({"slimserve:modelName": "other"}, tmp_path) != first
    (tmp_path / "cdk" / "app.py").write_text("A = 2\n")
    assert sources_hash({"slimserve:modelName": "churn"}, tmp_path) != first
