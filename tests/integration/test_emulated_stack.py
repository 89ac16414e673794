"""The synthesized stack's resources made in the emulated account (what `slimserve up` creates), under the
names its template values render to."""

from __future__ import annotations

import json

import boto3

from pipeline.local.emulation import REGION, emulated_account
from pipeline.local.stack import EmulatedStack
from tests.unit.test_local_stack import TEMPLATE


def test_the_template_resources_are_created_under_the_names_its_values_render_to() -> None:
    resources = {**TEMPLATE["Resources"],
                 "TableDB777839": {"Type": "AWS::DynamoDB::Table", "Properties": {
                     "KeySchema": [{"AttributeName": "model", "KeyType": "HASH"}], "BillingMode": "PAY_PER_REQUEST",
                     "AttributeDefinitions": [{"AttributeName": "model", "AttributeType": "S"}]}},
                 "DeadLetters01": {"Type": "AWS::SQS::Queue", "Properties": {}},
                 "Machine5C3CB62B": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                     "RoleArn": {"Fn::GetAtt": ["MachineRole01", "Arn"]},
                     "DefinitionString": {"Fn::Join": ["", [
                         '{"StartAt":"Step","States":{"Step":{"Type":"Task","End":true,"Resource":"',
                         {"Fn::GetAtt": ["ReleaseFunction7C47E101", "Arn"]}, '"}}}']]}}}}
    stack = EmulatedStack({**TEMPLATE, "Resources": resources})
    with emulated_account():
        clients = {n: boto3.client(n, region_name=REGION)  # type: ignore[call-overload]
                   for n in ("s3", "dynamodb", "sns", "stepfunctions", "sqs")}
        stack.create(clients["s3"], clients["dynamodb"], clients["sns"], clients["stepfunctions"], clients["sqs"])
        assert [b["Name"] for b in clients["s3"].list_buckets()["Buckets"]] == stack.bucket_names()
        assert clients["dynamodb"].list_tables()["TableNames"] == [stack.render({"Ref": "TableDB777839"})]
        assert clients["sns"].list_topics()["Topics"] == [{"TopicArn": stack.render({"Ref": "TopicE5CD520F"})}]
        assert clients["sqs"].list_queues()["QueueUrls"][0].endswith("/DeadLetters01")
        (arn,) = stack.state_machine_arns().values()
        definition = json.loads(clients["stepfunctions"].describe_state_machine(stateMachineArn=arn)["definition"])
        assert definition["States"]["Step"]["Resource"].endswith(":function:ReleaseFunction7C47E101")

