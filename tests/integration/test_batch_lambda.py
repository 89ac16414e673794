"""Batch scoring in the emulated account: upload to S3 -> SQS -> batch Lambda -> scored/rejected/manifest."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import REGION, create_scoring_resources, emulated_account, sqs_event, upload_bundle
from pipeline.local.server import load_function
from tests.conftest import breast_cancer


@pytest.fixture
def aws(rf_bundle: Path) -> Iterator[dict[str, Any]]:
    with emulated_account():
        s3, sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
        model_uri = upload_bundle(s3, rf_bundle)
        resources = create_scoring_resources(s3, sqs)
        drain(sqs, resources["queue_url"])  # S3 sends a test event when notifications are configured
        yield {"s3": s3, "sqs": sqs, "model_uri": model_uri, **resources}


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    for m in messages:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return messages


def batch_function(aws: dict[str, Any], **settings: str) -> ModuleType:
    return load_function("functions.batch.handler", aws["model_uri"], **settings)


def upload_and_deliver(aws: dict[str, Any], module: ModuleType, key: str, body: bytes) -> dict[str, Any]:
    aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=body)
    messages = drain(aws["sqs"], aws["queue_url"])
    assert messages, "S3 did not notify the queue"
    return module.lambda_handler(sqs_event(messages), LambdaContext(function_name="slimserve-batch"))


def get(aws: dict[str, Any], key: str) -> bytes:
    return aws["s3"].get_object(Bucket=aws["bucket"], Key=key)["Body"].read()


def messy_csv() -> bytes:
    lines = breast_cancer().head(40).to_csv(index=False).splitlines()
    lines[5] = "big," + lines[5].split(",", 1)[1]
    lines[9] = lines[9].rsplit(",", 3)[0]
    return ("\n".join(lines) + "\n").encode()


def test_upload_is_scored_end_to_end(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    response = upload_and_deliver(aws, module, "incoming/daily run.csv", messy_csv())
    assert response == {"batchItemFailures": []}
    manifest = json.loads(get(aws, "manifests/daily run.csv.json"))  # the key arrived URL-encoded
    assert manifest["status"] == "complete" and manifest["rows"] == {"in": 40, "scored": 38, "rejected": 2}
    assert manifest["source"]["etag"]  # (the emulated notification carries no versionId; S3's does)
    assert manifest["model"] == {"name": "cancer", "version": "v1", "role": "pinned"}  # MODEL_URI pins the bundle
    scored = list(csv.DictReader(io.StringIO(get(aws, "scored/daily run.csv").decode())))
    rejected = list(csv.DictReader(io.StringIO(get(aws, "rejected/daily run.csv").decode())))
    assert len(scored) == 38 and [r["line"] for r in rejected] == ["6", "10"]  # physical lines, header = 1


def test_redelivered_message_writes_nothing_twice(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    aws["s3"].put_object(Bucket=aws["bucket"], Key="incoming/a.csv", Body=messy_csv())
    messages = drain(aws["sqs"], aws["queue_url"])
    module.lambda_handler(sqs_event(messages), LambdaContext())
    first = aws["s3"].head_object(Bucket=aws["bucket"], Key="scored/a.csv")["LastModified"]
    versions_before = aws["s3"].list_object_versions(Bucket=aws["bucket"], Prefix="scored/a.csv")["Versions"]
    assert module.lambda_handler(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}
    versions_after = aws["s3"].list_object_versions(Bucket=aws["bucket"], Prefix="scored/a.csv")["Versions"]
    assert len(versions_after) == len(versions_before) == 1
    assert aws["s3"].head_object(Bucket=aws["bucket"], Key="scored/a.csv")["LastModified"] == first


def test_new_version_of_the_same_key_is_scored_again(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    upload_and_deliver(aws, module, "incoming/a.csv", messy_csv())
    upload_and_deliver(aws, module, "incoming/a.csv", breast_cancer().head(3).to_csv(index=False).encode())
    assert json.loads(get(aws, "manifests/a.csv.json"))["rows"]["in"] == 3


def test_poison_message_is_reported_as_a_failure_for_the_dlq(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    aws["s3"].put_object(Bucket=aws["bucket"], Key="incoming/ok.csv", Body=messy_csv())
    good = drain(aws["sqs"], aws["queue_url"])
    poison = {"MessageId": "poison-1", "ReceiptHandle": "r", "Body": "{not an s3 event"}
    response = module.lambda_handler(sqs_event([*good, poison]), LambdaContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": "poison-1"}]}
    assert json.loads(get(aws, "manifests/ok.csv.json"))["status"] == "complete"  # the good one still landed


def test_corrupt_file_gets_a_rejected_manifest(aws: dict[str, Any]) -> None:
    module = batch_function(aws)
    upload_and_deliver(aws, module, "incoming/broken.csv.gz", b"\x1f\x8b\x08\x00garbage")
    manifest = json.loads(get(aws, "manifests/broken.csv.gz.json"))
    assert manifest["status"] == "rejected" and manifest["reason"]["code"] == "corrupt_gzip"


def test_missing_model_fails_the_message_so_it_is_retried(aws: dict[str, Any]) -> None:
    module = load_function("functions.batch.handler", f"s3://{aws['bucket']}/models/none/", RETRY_LOAD_SECONDS="0")
    aws["s3"].put_object(Bucket=aws["bucket"], Key="incoming/x.csv", Body=messy_csv())
    messages = drain(aws["sqs"], aws["queue_url"])
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    with pytest.raises(BatchProcessingError):  # every record failed: the invocation fails, SQS redelivers
        module.lambda_handler(sqs_event(messages), LambdaContext())
    assert not aws["s3"].list_objects_v2(Bucket=aws["bucket"], Prefix="manifests/").get("Contents")


def test_big_csv_goes_to_the_distributed_map_once(aws: dict[str, Any]) -> None:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(name="scoring-map", roleArn="arn:aws:iam::123456789012:role/sfn",
                                       definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass",
                                                                                               "End": True}}}))
    module = batch_function(aws, DISTRIBUTED_THRESHOLD_BYTES="1000", STATE_MACHINE_ARN=machine["stateMachineArn"])
    aws["s3"].put_object(Bucket=aws["bucket"], Key="incoming/big.csv", Body=messy_csv())
    messages = drain(aws["sqs"], aws["queue_url"])
    assert module.lambda_handler(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}
    assert module.lambda_handler(sqs_event(messages), LambdaContext()) == {"batchItemFailures": []}  # redelivery
    executions = sfn.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"]
    assert len(executions) == 1
    run = json.loads(sfn.describe_execution(executionArn=executions[0]["executionArn"])["input"])
    assert run["key"] == "incoming/big.csv" and executions[0]["name"] == run["run_id"]
    assert (run["model_uri"], run["model_role"]) == (aws["model_uri"], "pinned")  # the run's bundle, fixed


def test_distributed_map_batches_and_finalize_give_one_manifest(aws: dict[str, Any]) -> None:
    """What the state machine does with the S3 CSV item reader and item batching, step by step."""
    module = batch_function(aws)
    body = messy_csv()
    aws["s3"].put_object(Bucket=aws["bucket"], Key="incoming/big.csv", Body=body)
    rows = list(csv.DictReader(io.StringIO(body.decode())))  # the item reader: header row -> one object a row
    run = {"bucket": aws["bucket"], "key": "incoming/big.csv", "version_id": None, "etag": "e", "run_id": "run1"}
    batch_input = {k: run[k] for k in ("bucket", "key", "version_id", "run_id")}
    for start in range(0, len(rows), 15):
        items = [{k: v or "" for k, v in r.items() if k is not None} for r in rows[start:start + 15]]
        summary = module.score_items_handler({"Items": items, "BatchInput": batch_input}, LambdaContext())
        retried = module.score_items_handler({"Items": items, "BatchInput": batch_input}, LambdaContext())
        assert retried["part"] == summary["part"]  # a retried batch rewrites its own part
    result = module.finalize_handler(run, LambdaContext())
    assert result["rows"]["in"] == 40 and result["rows"]["in"] == result["rows"]["scored"] + result["rows"]["rejected"]
    manifest = json.loads(get(aws, "manifests/big.csv.json"))
    assert manifest["mode"] == "distributed_map" and manifest["parts"] == 3
    assert sum(len(get(aws, p["key"]).decode().splitlines()) - 1 for p in manifest["outputs"]["scored_parts"]) == \
        result["rows"]["scored"]


def test_a_message_that_keeps_failing_ends_in_the_dlq(aws: dict[str, Any]) -> None:
    """The queue's redrive policy (3 receives) parks a poison message where its alarm watches."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    module = batch_function(aws)
    aws["sqs"].send_message(QueueUrl=aws["queue_url"], MessageBody="not an S3 event")
    for _ in range(3):
        messages = aws["sqs"].receive_message(QueueUrl=aws["queue_url"], VisibilityTimeout=0).get("Messages", [])
        assert len(messages) == 1
        with pytest.raises(BatchProcessingError):
            module.lambda_handler(sqs_event(messages), LambdaContext())
    assert not aws["sqs"].receive_message(QueueUrl=aws["queue_url"]).get("Messages")
    parked = aws["sqs"].receive_message(QueueUrl=aws["dlq_url"]).get("Messages", [])
    assert [m["Body"] for m in parked] == ["not an S3 event"]


def test_batch_metrics_carry_the_model_name_in_one_dimension_set(aws: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    module = batch_function(aws)
    capsys.readouterr()
    upload_and_deliver(aws, module, "incoming/named.csv", messy_csv())
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"RowsRejected"' in line]
    assert [(r["RowsScored"], r["RowsRejected"]) for r in records] == [([38.0], [2.0])]
    (directive,) = records[0]["_aws"]["CloudWatchMetrics"]
    (dimensions,) = directive["Dimensions"]  # one set: every metric is one custom metric, not two
    assert sorted(dimensions) == ["model_name", "model_version", "service"]  # the dashboard's SEARCH schema
    assert (records[0]["model_name"], records[0]["model_version"]) == ("cancer", "v1")
