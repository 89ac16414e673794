"""The synthesized retraining machine on moto's own interpreter: its SageMaker steps through the request
integration, its Lambda tasks by the real release, import and validation handlers (local dispatcher).

moto's SageMaker writes no artifact, so the happy path has the dispatcher put the export job's
`model.tar.gz` where the job would have written it, just before the import step reads it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.client
import pytest
from synth_helpers import ACCOUNT, Synth, finished_execution, function_by_handler, model_bucket_id, resource_id
from test_release_machine import RELEASE_CONTEXT

from cdk.constructs.model_registry import ValidationGate  # noqa: F401  (the gate's handler below)
from cdk.constructs.release import HANDLER
from cdk.constructs.retraining import IMPORT_HANDLER
from pipeline.local.emulation import REGION, STATE_MACHINES, emulated_account
from pipeline.local.lambdas import lambda_dispatch
from pipeline.local.server import load_function
from pipeline.local.stack import render
from tests.conftest import breast_cancer
from tests.integration.release_account import MODEL, TABLE, ReleaseAccount, bundle_version, release_account

pytestmark = pytest.mark.slow  # a full synth, a forest bundle, executions on moto's interpreter

GATE_HANDLER = "functions.validation.handler.lambda_handler"
CONTEXT = {**RELEASE_CONTEXT, "slimserve:modelName": MODEL}


@pytest.fixture(scope="module")
def retraining_synth(synth_once: Callable[..., Synth]) -> Synth:
    return synth_once(**CONTEXT)


def _render(value: Any, synth: Synth) -> Any:
    """A template value in moto's account, named as `slimserve up` names it (one render: pipeline.local.stack)."""
    return render(value, synth.template, REGION)


class Retraining:
    """The synthesized retraining machine in moto and the account it acts on."""

    def __init__(self, synth: Synth, account: ReleaseAccount, workdir: Path) -> None:
        self.account, self.workdir = account, workdir
        resources = synth.template["Resources"]
        machine_id = resource_id(synth, "RetrainingStateMachine", "AWS::StepFunctions::StateMachine")
        definition = _render(resources[machine_id]["Properties"]["DefinitionString"], synth)
        self.model_bucket = model_bucket_id(synth).lower()
        self.artifacts_bucket = resource_id(synth, "TrainingArtifactsBucket", "AWS::S3::Bucket").lower()
        for bucket in (self.model_bucket, self.artifacts_bucket):
            account.s3.create_bucket(Bucket=bucket)  # REGION is us-east-1: no location constraint
        account.s3.put_object(Bucket=self.model_bucket, Key=f"holdout/{MODEL}.csv",
                              Body=breast_cancer().to_csv(index=False).encode())
        topic_id = resource_id(synth, "ReleaseTopic", "AWS::SNS::Topic")
        topic = account.sns.create_topic(Name=topic_id)["TopicArn"]
        self.failures = account.sqs.create_queue(QueueName="retraining-failures")["QueueUrl"]
        arn = account.sqs.get_queue_attributes(QueueUrl=self.failures, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"]
        account.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        gate = load_function("functions.validation.handler", "", REGISTRY_TABLE=TABLE)
        self.handlers = {function_by_handler(synth, HANDLER)[0]: self.release_step,
                         function_by_handler(synth, IMPORT_HANDLER)[0]: self.import_step,
                         function_by_handler(synth, GATE_HANDLER)[0]: gate.lambda_handler}
        self.client = boto3.client("stepfunctions", region_name=REGION)
        self.arn = self.client.create_state_machine(name="retraining", definition=definition,
                                                    roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"]
        self.trained: str | None = None  # the version the export job "writes"; None: it writes nothing
        self.baked = 0

    def release_step(self, event: dict[str, Any], context: Any) -> Any:
        if event.get("action") == "compare":  # the canary serves while its stage bakes
            self.baked += 1
            self.account.traffic(200, start=self.baked * 1000)
        return self.account.release.lambda_handler(event, context)

    def import_step(self, event: dict[str, Any], context: Any) -> Any:
        if self.trained is not None:  # where the export job would have written its output
            folder = bundle_version(self.account.bundle, self.trained, self.workdir)
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w:gz") as archive:
                for path in sorted(folder.iterdir()):
                    archive.add(path, arcname=path.name)
            target = urlparse(event["artifact_uri"])
            self.account.s3.put_object(Bucket=target.netloc, Key=target.path.lstrip("/"), Body=data.getvalue())
        return self.account.release.import_handler(event, context)

    def run(self, name: str) -> dict[str, Any]:
        state_input = {"model": MODEL, "run_id": name, "data_prefix": f"{MODEL}/2026-11",
                       "hyperparameters": {"target": "target"},
                       "holdout_uri": f"s3://{self.model_bucket}/holdout/{MODEL}.csv"}
        with lambda_dispatch(self.handlers):
            execution = self.client.start_execution(stateMachineArn=self.arn, name=name,
                                                    input=json.dumps(state_input))
            return finished_execution(self.client, execution["executionArn"])

    def failure_notices(self) -> list[dict[str, Any]]:
        messages = self.account.sqs.receive_message(QueueUrl=self.failures, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


@pytest.fixture
def retraining(retraining_synth: Synth, rf_bundle: Path, tmp_path: Path) -> Iterator[Retraining]:
    with emulated_account(config=STATE_MACHINES):
        for account in release_account(rf_bundle, tmp_path):
            account.add_version("v1")
            account.step("first_release", version="v1")
            account.serve()
            yield Retraining(retraining_synth, account, tmp_path)


def test_a_training_failure_leaves_the_champion_serving_frees_the_lock_and_notifies(
        retraining: Retraining, monkeypatch: pytest.MonkeyPatch) -> None:
    real = botocore.client.BaseClient._make_api_call

    def teacher_fails(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "CreateTrainingJob" and params["TrainingJobName"].endswith("-teacher"):
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "ResourceLimitExceeded", "Message": "no GPU instance left"}}, operation)
        return real(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", teacher_fails)
    before = retraining.account.registry.list(MODEL)
    done = retraining.run("r-fails")
    assert done["status"] == "FAILED", done
    registry = retraining.account.registry
    assert registry.champion(MODEL).version == "v1" and registry.lock(MODEL) is None  # type: ignore[union-attr]
    assert registry.list(MODEL) == before
    assert retraining.account.traffic(5) == {"v1": 5}
    (notice,) = retraining.failure_notices()
    assert notice["event"] == "retraining_failed" and notice["run_id"] == "r-fails" and notice["error"]


def test_a_retrained_bundle_is_imported_judged_and_promoted_by_canary(retraining: Retraining) -> None:
    retraining.trained = "r2"
    done = retraining.run("r-good")
    assert done["status"] == "SUCCEEDED", done
    output = json.loads(done["output"])
    assert output["imported"]["version"] == "r2" and output["gate"]["admitted"] is True
    assert output["outcome"] == "promoted"
    registry = retraining.account.registry
    assert registry.champion(MODEL).version == "r2" and registry.lock(MODEL) is None  # type: ignore[union-attr]
    assert retraining.account.traffic(5) == {"r2": 5}
    assert retraining.failure_notices() == []


def test_a_run_whose_export_wrote_nothing_fails_by_name_and_frees_the_lock(retraining: Retraining) -> None:
    done = retraining.run("r-empty")
    assert done["status"] == "FAILED", done
    registry = retraining.account.registry
    assert registry.champion(MODEL).version == "v1" and registry.lock(MODEL) is None  # type: ignore[union-attr]
    (notice,) = retraining.failure_notices()
    assert notice["run_id"] == "r-empty"


def _alarm_event(name: str, state: str = "ALARM") -> dict[str, Any]:
    return {"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change", "account": ACCOUNT,
            "region": REGION, "detail": {"alarmName": name, "state": {"value": state}}}


def test_only_a_drift_alarm_of_the_model_entering_alarm_starts_a_retraining_run(retraining_synth: Synth) -> None:
    from moto.events.models import EventPattern

    rule = retraining_synth.template["Resources"][
        resource_id(retraining_synth, "RetrainingDriftAlarmRule", "AWS::Events::Rule")]["Properties"]
    pattern = EventPattern.load(json.dumps(rule["EventPattern"]))
    assert pattern.matches_event(_alarm_event(f"slimserve-{MODEL}-drift-psi"))
    assert not pattern.matches_event(_alarm_event(f"slimserve-{MODEL}-drift-psi", state="OK"))
    assert not pattern.matches_event(_alarm_event(f"slimserve-{MODEL}-champion-errors"))
    assert not pattern.matches_event(_alarm_event("slimserve-other-drift-psi"))
    (target,) = rule["Targets"]
    machine = resource_id(retraining_synth, "RetrainingStateMachine", "AWS::StepFunctions::StateMachine")
    assert target["Arn"] == {"Ref": machine} and "DeadLetterConfig" in target
