"""The synthesized retraining machine on moto's own interpreter: its SageMaker steps through the request
integration, its Lambda tasks by the real release, import and validation handlers (local dispatcher).

moto's SageMaker runs no job: most tests have the dispatcher put the export job's `model.tar.gz` where the job
would have written it, just before the import step reads it; the end-to-end ones run the jobs for real through
the local SageMaker (`pipeline/local/sagemaker.py`) on a real-shaped CSV, from the stack's own source bundle."""

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
from pipeline.local.sagemaker import local_training_jobs, put_source_bundle
from pipeline.local.server import load_function
from pipeline.local.stack import render
from pipeline.training.sagemaker_jobs import STEPS
from tests.conftest import breast_cancer
from tests.integration.release_account import MODEL, TABLE, ReleaseAccount, bundle_version, release_account

pytestmark = pytest.mark.slow  # a full synth, a forest bundle, executions on moto's interpreter

GATE_HANDLER = "functions.validation.handler.lambda_handler"
CONTEXT = {**RELEASE_CONTEXT, "slimserve:modelName": MODEL, "slimserve:retrainSchedule": "rate(7 days)",
           "slimserve:retrainTarget": "target", "slimserve:retrainDataPrefix": f"{MODEL}/latest"}


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
        self.states = json.loads(definition)["States"]
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
        self.data_bucket = resource_id(synth, "TrainingDataBucket", "AWS::S3::Bucket").lower()
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


    def deploy_training(self) -> str:
        """What `cdk deploy` and a user leave for a real run: the stack's source bundle where every job's
        sagemaker_submit_directory names it, and a real-shaped CSV split under the run's data prefix."""
        source = self.states["ValidateData"]["Parameters"]["HyperParameters"]["sagemaker_submit_directory"]
        self.account.s3.create_bucket(Bucket=urlparse(source).netloc)
        put_source_bundle(self.account.s3, source)
        self.account.s3.create_bucket(Bucket=self.data_bucket)
        frame = breast_cancer().sample(frac=1.0, random_state=11)
        parts = {"train": frame.iloc[:340], "validation": frame.iloc[340:455], "holdout": frame.iloc[455:]}
        for name, part in parts.items():
            self.account.s3.put_object(Bucket=self.data_bucket, Key=f"{MODEL}/2026-11/{name}/{name}.csv",
                                       Body=part.to_csv(index=False).encode())
        return source


def _account_with_champion(synth: Synth, bundle: Path, tmp_path: Path) -> Iterator[Retraining]:
    with emulated_account(config=STATE_MACHINES):
        for account in release_account(bundle, tmp_path):
            account.add_version("v1")
            account.step("first_release", version="v1")
            account.serve()
            yield Retraining(synth, account, tmp_path)


@pytest.fixture
def retraining(retraining_synth: Synth, rf_bundle: Path, tmp_path: Path) -> Iterator[Retraining]:
    yield from _account_with_champion(retraining_synth, rf_bundle, tmp_path)


@pytest.fixture(scope="module")
def shallow_tree_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shallow tree as champion: a retrained model beats it at the gate (ROC AUC) and, answering much as it
    does on the same rows, passes the canary's comparison."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from pipeline.bundler import build_bundle

    frame = breast_cancer()
    model = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=3, random_state=7))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    out = tmp_path_factory.mktemp("shallow-tree") / "bundle"
    build_bundle(model, frame, out, name=MODEL, version="v1", target="target")
    return out


@pytest.fixture
def trained(retraining_synth: Synth, shallow_tree_bundle: Path, tmp_path: Path) -> Iterator[Retraining]:
    """An account whose training jobs really run (the local SageMaker), its data and source deployed."""
    pytest.importorskip("xgboost", reason="the teacher job runs XGBoost, as its SageMaker image does")
    for retraining in _account_with_champion(retraining_synth, shallow_tree_bundle, tmp_path):
        retraining.deploy_training()
        yield retraining


def test_a_scheduled_run_trains_for_real_imports_gates_and_promotes_by_canary(trained: Retraining) -> None:
    with local_training_jobs() as jobs:
        done = trained.run("r-real")
    assert [(job["TrainingJobName"], job["TrainingJobStatus"]) for job in jobs] == [
        (f"slimserve-r-real-{step}", "Completed") for step in STEPS]
    assert done["status"] == "SUCCEEDED", done
    output = json.loads(done["output"])
    version = output["imported"]["version"]
    assert output["gate"]["admitted"] is True and output["outcome"] == "promoted", output.get("compare")
    registry = trained.account.registry
    champion = registry.champion(MODEL)
    assert champion is not None and champion.version == version != "v1" and registry.lock(MODEL) is None
    assert registry.get(MODEL, "v1").status == "retired"
    manifest = json.loads(trained.account.s3.get_object(Bucket=trained.model_bucket,
                                                        Key=f"models/{MODEL}/{version}/manifest.json")["Body"].read())
    assert manifest["name"] == MODEL and manifest["target"] == "target"
    assert trained.account.traffic(5) == {version: 5}
    assert trained.failure_notices() == []


def test_a_failed_teacher_job_leaves_the_champion_serving_and_notifies(trained: Retraining) -> None:
    before = trained.account.registry.list(MODEL)

    def no_gpu(request: dict[str, Any]) -> str | None:
        return "CapacityError: no ml.g5.xlarge capacity" if request["TrainingJobName"].endswith("-teacher") else None

    with local_training_jobs(fail=no_gpu) as jobs:
        done = trained.run("r-no-gpu")
    assert done["status"] == "FAILED", done
    status = {job["TrainingJobName"].rsplit("-", 1)[1]: (job["TrainingJobStatus"], job["FailureReason"])
              for job in jobs}
    assert status["validate"] == ("Completed", None)
    assert status["teacher"] == ("Failed", "CapacityError: no ml.g5.xlarge capacity")
    assert status["export"][0] == "Failed"  # the teacher's model never came
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    described = sagemaker.describe_training_job(TrainingJobName="slimserve-r-no-gpu-teacher")
    assert described["TrainingJobStatus"] == "Failed" and "CapacityError" in described["FailureReason"]
    registry = trained.account.registry
    assert registry.champion(MODEL).version == "v1" and registry.lock(MODEL) is None  # type: ignore[union-attr]
    assert registry.list(MODEL) == before
    assert trained.account.traffic(5) == {"v1": 5}
    (notice,) = trained.failure_notices()
    assert notice["event"] == "retraining_failed" and notice["run_id"] == "r-no-gpu"
    assert notice["champion"] == "unchanged"


def test_the_runs_lock_outlives_every_job_and_bake(retraining_synth: Synth) -> None:
    resources = retraining_synth.template["Resources"]
    machine = resources[resource_id(retraining_synth, "RetrainingStateMachine", "AWS::StepFunctions::StateMachine")]
    definition = json.loads(_render(machine["Properties"]["DefinitionString"], retraining_synth))
    states = definition["States"]
    ttl = states["TakeLock"]["Parameters"]["ttl_seconds"]
    jobs = sum(states[name]["Parameters"]["StoppingCondition"]["MaxRuntimeInSeconds"]
               for name in ("ValidateData", "TrainTeacher", "DistilStudent", "ExportBundle"))
    bakes = sum(state.get("Seconds", 0) for state in states.values() if state["Type"] == "Wait")
    assert ttl >= definition["TimeoutSeconds"] >= jobs + bakes  # the run ends, by timeout at worst, before the lock
    assert ttl > 6 * 3600  # the release function's own default would expire under four 4-hour jobs
    assert states["TakeLock"]["Parameters"]["may_be_new"] is True


def test_the_schedule_starts_runs_on_the_standing_data_prefix(retraining_synth: Synth) -> None:
    rule = retraining_synth.template["Resources"][
        resource_id(retraining_synth, "RetrainingScheduleRule", "AWS::Events::Rule")]["Properties"]
    assert rule["ScheduleExpression"] == "rate(7 days)" and rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    template = _render(target["InputTransformer"]["InputTemplate"], retraining_synth)
    assert f'"data_prefix":"{MODEL}/latest"' in template and '"hyperparameters":{"target":"target"}' in template
    assert f'"holdout_uri":"s3://{model_bucket_id(retraining_synth).lower()}/holdout/{MODEL}.csv"' in template
    assert target["InputTransformer"]["InputPathsMap"] == {"id": "$.id"}  # the run id is the event's id


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
