"""Batch scoring follows the registry's champion: each file is scored by the champion when it starts,
and a Distributed Map run keeps the version it started with, whatever is promoted meanwhile."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest

from functions.batch import MAP_BATCH_INPUT, distributed
from functions.common import aws as common_aws
from functions.common.manifest import MANIFEST_FILE, sha256_hex
from functions.common.registry import ModelEntry, Registry
from pipeline.local.apigw import LambdaContext
from pipeline.local.emulation import (
    REGION,
    create_registry_table,
    create_scoring_resources,
    emulated_account,
    sqs_event,
    upload_bundle,
)
from pipeline.local.server import load_function
from tests.conftest import breast_cancer
from tests.integration.release_account import bundle_version

TABLE, MODEL = "slimserve-models", "cancer"


class Account:
    def __init__(self, bundle: Path, workdir: Path) -> None:
        self.bundle, self.workdir = bundle, workdir
        self.s3, self.sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
        create_registry_table(boto3.client("dynamodb", region_name=REGION), TABLE)
        self.registry = Registry(boto3.client("dynamodb", region_name=REGION), TABLE)
        self.scoring = create_scoring_resources(self.s3, self.sqs)
        self.bucket = self.scoring["bucket"]
        for message in self.receive():  # S3's test event
            self.sqs.delete_message(QueueUrl=self.scoring["queue_url"], ReceiptHandle=message["ReceiptHandle"])
        self.routing_reads = 0
        common_aws.client("dynamodb").meta.events.register("before-call.dynamodb.GetItem", self._count_read)

    def _count_read(self, **_: Any) -> None:
        self.routing_reads += 1

    def champion(self, version: str) -> None:
        """Upload ``version``'s bundle, register it and make it champion (what a release ends with)."""
        folder = bundle_version(self.bundle, version, self.workdir)
        entry = self.registry.register(ModelEntry(
            model=MODEL, version=version, bundle_uri=upload_bundle(self.s3, folder),
            manifest_sha256=sha256_hex((folder / MANIFEST_FILE).read_bytes())))
        self.registry.promote(entry, "test release")

    def receive(self) -> list[dict[str, Any]]:
        return self.sqs.receive_message(QueueUrl=self.scoring["queue_url"], MaxNumberOfMessages=10,
                                        VisibilityTimeout=0).get("Messages", [])

    def upload(self, key: str, body: bytes) -> list[dict[str, Any]]:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        messages = self.receive()
        assert messages, "S3 did not notify the queue"
        return messages

    def manifest(self, name: str) -> dict[str, Any]:
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"manifests/{name}.json")["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])]


@pytest.fixture
def account(rf_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    # load_function writes the environment; monkeypatch puts back what was there after the test.
    for name in ("MODEL_URI", "MODEL_NAME", "REGISTRY_TABLE", "STATE_MACHINE_ARN", "DISTRIBUTED_THRESHOLD_BYTES"):
        monkeypatch.setenv(name, "")
    with emulated_account():
        yield Account(rf_bundle, tmp_path)


def batch_function(**settings: str) -> ModuleType:
    """A fresh batch execution environment routed by the registry (no pinned bundle)."""
    return load_function("functions.batch.handler", "", MODEL_NAME=MODEL, REGISTRY_TABLE=TABLE, **settings)


def rows_csv(rows: int = 40) -> bytes:
    return breast_cancer().drop(columns=["target"]).head(rows).to_csv(index=False).encode()


def deliver(module: ModuleType, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(module.lambda_handler(sqs_event(messages), LambdaContext(function_name="slimserve-batch")))


def test_each_file_is_scored_by_the_champion_when_it_starts(account: Account) -> None:
    account.champion("v1")
    module = batch_function()
    before = account.routing_reads
    assert deliver(module, account.upload("incoming/monday.csv", rows_csv())) == {"batchItemFailures": []}
    assert account.routing_reads - before == 1  # one read of the routing item for the whole file
    account.champion("v2")
    assert deliver(module, account.upload("incoming/tuesday.csv", rows_csv())) == {"batchItemFailures": []}
    monday, tuesday = account.manifest("monday.csv"), account.manifest("tuesday.csv")
    assert monday["model"] == {"name": MODEL, "version": "v1", "role": "champion"}
    assert tuesday["model"] == {"name": MODEL, "version": "v2", "role": "champion"}
    assert monday["rows"]["scored"] == tuesday["rows"]["scored"] == 40


def test_no_champion_fails_the_message_until_the_dlq_and_writes_nothing(account: Account) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    module = batch_function()
    account.s3.put_object(Bucket=account.bucket, Key="incoming/early.csv", Body=rows_csv())
    for _ in range(3):  # the queue's receive limit, then the DLQ
        messages = account.receive()
        assert len(messages) == 1
        with pytest.raises(BatchProcessingError):
            deliver(module, messages)
    assert account.receive() == []
    parked = account.sqs.receive_message(QueueUrl=account.scoring["dlq_url"]).get("Messages", [])
    assert [unquote_plus(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"]) for m in parked] == \
        ["incoming/early.csv"]
    assert [k for k in account.keys("") if not k.startswith("incoming/")] == []


def test_a_distributed_map_run_keeps_the_version_it_started_with(account: Account) -> None:
    """What the state machine does with the run's input, step by step, across a promotion mid-run."""
    account.champion("v1")
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(name="scoring-map", roleArn="arn:aws:iam::123456789012:role/sfn",
                                       definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass",
                                                                                               "End": True}}}))
    module = batch_function(DISTRIBUTED_THRESHOLD_BYTES="1000", STATE_MACHINE_ARN=machine["stateMachineArn"])
    body = rows_csv(45)
    assert deliver(module, account.upload("incoming/big.csv", body)) == {"batchItemFailures": []}
    execution = sfn.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"][0]
    run = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert run["model_uri"].endswith("/models/cancer/v1/") and run["model_role"] == "champion"
    assert set(MAP_BATCH_INPUT) == set(distributed.BatchInput.model_fields)

    batch_input = {k: run[k] for k in MAP_BATCH_INPUT}  # the item batcher's BatchInput
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    chunks = [rows[i:i + 15] for i in range(0, len(rows), 15)]
    module.score_items_handler({"Items": chunks[0], "BatchInput": batch_input}, LambdaContext())
    account.champion("v2")
    module = batch_function()  # a fresh environment for the rest of the run: nothing cached from its start
    reads = account.routing_reads
    for items in chunks[1:]:
        module.score_items_handler({"Items": items, "BatchInput": batch_input}, LambdaContext())
    result = module.finalize_handler(run, LambdaContext())
    assert account.routing_reads == reads  # chunks and finalize never read the routing item

    parts = [json.loads(account.s3.get_object(Bucket=account.bucket, Key=k)["Body"].read())
             for k in account.keys(f"runs/{run['run_id']}/parts/")]
    assert len(parts) == 3 and {p["model"]["version"] for p in parts} == {"v1"}
    manifest = account.manifest("big.csv")
    assert manifest["model"] == {"name": MODEL, "version": "v1", "role": "champion"}
    assert result["rows"]["scored"] == 45


def test_a_run_whose_input_names_no_bundle_is_refused_in_routing_mode(account: Account) -> None:
    account.champion("v1")
    module = batch_function()
    run = {"bucket": account.bucket, "key": "incoming/big.csv", "run_id": "r1"}
    from functions.common.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="names no model bundle"):
        module.finalize_handler(run, LambdaContext())
