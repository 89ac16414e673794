"""Training keeps its promises in the synthesized stack: two private, versioned, TLS-only, access-logged
buckets; a SageMaker role that reads training data, writes runs/ and nothing else; and a state machine whose
four tasks send exactly the CreateTrainingJob requests `slimserve train --on sagemaker` sends."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from aws_cdk import App, Environment, Stack, Validations
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import lint_all
from constructs import Construct
from synth_helpers import (
    MODEL_CONTEXT,
    STACK_ID,
    Synth,
    as_list,
    finished_execution,
    role_statements,
    synth_app,
    violations,
)
from test_cfn_lint import ALLOWED as ALLOWED_LINT_WARNINGS

from cdk.app import load_cdk_json_context, stack_props_from_context
from cdk.constructs.monitoring import Monitoring
from cdk.constructs.training import (
    CHECK_INPUT_STATE,
    INPUT_REFUSED_ERROR,
    INPUT_REFUSED_STATE,
    SAGEMAKER_LOG_GROUP,
    STATE_NAMES,
    Training,
    TrainingProps,
    TrainingSettings,
)
from cdk.stacks.serving_stack import ServingStack, ServingStackProps
from pipeline.training.sagemaker_jobs import STEPS, SageMakerPlan

slow = pytest.mark.slow  # reads a full synth (the first test in a session pays for it)

REQUEST_CONTEXT = {**MODEL_CONTEXT, "slimserve:trainingIntegration": "request"}
REGION = "eu-west-1"
ACCOUNT = "123456789012"
# One run's state input, as the retraining machine or an operator would start it.
RUN_INPUT = {"run_id": "20250601120000-0042", "data_prefix": "churn/2025-06", "hyperparameters": {"target": "churn"}}
JOB_S3_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:AbortMultipartUpload"}


# --- rendering the template ----------------------------------------------------------------------

def _render(part: Any, template: dict[str, Any], region: str) -> str:
    """One Fn::Join part as deploy time would see it: pseudo parameters for `region`, a resource's Ref as its
    lowercased logical id (a valid bucket name), a bucket's or role's Arn as such, FindInMap from the template."""
    if isinstance(part, str):
        return part
    if "Ref" in part:
        pseudo = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": ACCOUNT,
                  "AWS::URLSuffix": "amazonaws.com"}
        return pseudo.get(part["Ref"], part["Ref"].lower())
    if "Fn::GetAtt" in part:
        logical_id, attribute = part["Fn::GetAtt"]
        kind = template["Resources"][logical_id]["Type"]
        if attribute == "Arn" and kind == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{logical_id.lower()}"
        if attribute == "Arn" and kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{logical_id}"
        return f"<{logical_id}.{attribute}>"
    if "Fn::FindInMap" in part:
        mapping, first, second = part["Fn::FindInMap"]
        return str(template["Mappings"][mapping][_render(first, template, region)][second])
    if "Fn::Join" in part:
        separator, parts = part["Fn::Join"]
        return str(separator).join(_render(p, template, region) for p in parts)
    if isinstance(part.get("Fn::Sub"), str):  # the CDK assets bucket (the jobs' source bundle)
        return part["Fn::Sub"].replace("${AWS::AccountId}", ACCOUNT).replace("${AWS::Region}", region)
    raise AssertionError(f"unexpected token: {part}")


def _state_machine(synth: Synth) -> tuple[str, dict[str, Any]]:
    found = [(k, v["Properties"]) for k, v in synth.resources("AWS::StepFunctions::StateMachine").items()
             if k.startswith("Training")]
    assert len(found) == 1, f"expected one training state machine, found {[k for k, _ in found]}"
    return found[0]


def _definition(synth: Synth, region: str = REGION) -> dict[str, Any]:
    body = _state_machine(synth)[1]["DefinitionString"]
    return json.loads(body if isinstance(body, str) else _render(body, synth.template, region))


def _evaluate(value: Any, state_input: dict[str, Any]) -> Any:
    """Parameters as Step Functions evaluates them: `key.$` fields read JSONPaths or States.Format."""
    if isinstance(value, list):
        return [_evaluate(v, state_input) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key.endswith(".$"):
            out[key[:-2]] = _expression(item, state_input)
        else:
            out[key] = _evaluate(item, state_input)
    return out


def _path(path: str, state_input: dict[str, Any]) -> Any:
    assert path.startswith("$."), path
    value: Any = state_input
    for name in path[2:].split("."):
        value = value[name]
    return value


def _expression(expression: str, state_input: dict[str, Any]) -> Any:
    match = re.fullmatch(r"States\.Format\('((?:[^'\\]|\\.)*)'((?:, \$[\w.]+)*)\)", expression)
    if match is None:
        return _path(expression, state_input)
    text = match[1]
    for path in [p.strip() for p in match[2].split(",") if p.strip()]:
        text = text.replace("{}", str(_path(path, state_input)), 1)
    assert "{}" not in text, expression
    return text


def _ids(synth: Synth) -> dict[str, str]:
    """Logical ids of the training resources, found through the construct's outputs."""
    outputs = synth.template["Outputs"]

    def output(prefix: str) -> Any:
        (value,) = [v["Value"] for k, v in outputs.items() if k.startswith(prefix)]
        return value

    return {"data": output("TrainingDataBucketName")["Ref"], "artifacts": output("TrainingArtifactsBucketName")["Ref"],
            "role": output("TrainingSageMakerRoleArn")["Fn::GetAtt"][0],
            "state_machine": output("TrainingStateMachineArn")["Ref"]}


def _source_uri(synth: Synth, region: str = REGION) -> str:
    """The jobs' source bundle as deployed: the stack's .tar.gz file asset in the CDK assets bucket."""
    assets = json.loads(next(synth.outdir.glob("*.assets.json")).read_text())["files"]
    (source,) = [asset for asset in assets.values() if asset["source"]["path"].endswith(".tar.gz")]
    key = next(iter(source["destinations"].values()))["objectKey"]
    return f"s3://cdk-hnb659fds-assets-{ACCOUNT}-{region}/{key}"


def _with_source_normalised(parameters: dict[str, Any], synth: Synth) -> Any:
    """A task's parameters with this synth's source bundle URI (present: asserted) replaced by a placeholder."""
    text, source = json.dumps(parameters), _source_uri(synth)
    assert source in text, f"the task does not name the stack's source asset {source}"
    return json.loads(text.replace(source, "<training source>"))


def _plan(synth: Synth, state_input: dict[str, Any], region: str = REGION) -> SageMakerPlan:
    """The CLI's plan for the same run: `--data s3://<data>/<prefix> --out s3://<artifacts>/runs/`."""
    ids = _ids(synth)
    data, artifacts = ids["data"].lower(), ids["artifacts"].lower()
    run = state_input["run_id"]
    return SageMakerPlan(data_uri=f"s3://{data}/{state_input['data_prefix']}", output_uri=f"s3://{artifacts}/runs/",
                         role_arn=f"arn:aws:iam::{ACCOUNT}:role/{ids['role']}", region=region, run_id=run,
                         source_uri=_source_uri(synth, region),
                         hyperparameters=dict(state_input["hyperparameters"]))


def _jobs(definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The task states in execution order from the input check: (name, state)."""
    states = definition["States"]
    assert definition["StartAt"] == CHECK_INPUT_STATE
    (choice,) = states[CHECK_INPUT_STATE]["Choices"]
    name, jobs = choice["Next"], []
    while True:
        state = states[name]
        jobs.append((name, state))
        if state.get("End"):
            return jobs
        name = state["Next"]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def request_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The default app with `-c slimserve:trainingIntegration=request` (what the local emulation runs)."""
    return synth_once(**REQUEST_CONTEXT)


@pytest.fixture(scope="module")
def regional_synth(tmp_path_factory: pytest.TempPathFactory, layer_dir: Path) -> Synth:
    """The stack pinned to one region: image URIs straight from the SDK, no mapping. cdk-nag attached."""
    outdir = tmp_path_factory.mktemp("cdk.out.regional")
    app = App(outdir=str(outdir), context={**load_cdk_json_context(), **MODEL_CONTEXT})
    ServingStack(app, STACK_ID, stack_props_from_context(app, layer_dir), env=Environment(region=REGION))
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return synth_app(app, outdir)


# --- buckets -------------------------------------------------------------------------------------

@slow
def test_training_buckets_are_private_encrypted_versioned_logged_and_retained(default_synth: Synth) -> None:
    ids = _ids(default_synth)
    resources = default_synth.template["Resources"]
    (log_bucket,) = [k for k in default_synth.resources("AWS::S3::Bucket") if k.startswith("ModelStoreAccessLog")]
    for name, prefix in (("data", "training-data-bucket/"), ("artifacts", "training-artifacts-bucket/")):
        bucket = resources[ids[name]]
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}, name
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] in ("AES256", "aws:kms"), name
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, name
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}, name
        assert props["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": log_bucket}, "LogFilePrefix": prefix}
        assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain", name


@slow
def test_training_buckets_deny_requests_without_tls(default_synth: Synth) -> None:
    ids = _ids(default_synth)
    denied = set()
    for policy in default_synth.resources("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
                denied.add(policy["Properties"]["Bucket"]["Ref"])
    assert {ids["data"], ids["artifacts"]} <= denied


# --- the jobs' role ------------------------------------------------------------------------------

@slow
def test_sagemaker_role_is_assumed_by_sagemaker_only_and_has_no_managed_policy(default_synth: Synth) -> None:
    role = default_synth.template["Resources"][_ids(default_synth)["role"]]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}}]
    assert "ManagedPolicyArns" not in role and "Policies" not in role


@slow
def test_sagemaker_role_touches_only_the_two_buckets_and_its_source_bundle_and_never_deletes(
        default_synth: Synth) -> None:
    ids = _ids(default_synth)
    data, artifacts = ({"Fn::GetAtt": [ids[k], "Arn"]} for k in ("data", "artifacts"))
    grants: dict[str, set[str]] = {}
    for statement in role_statements(default_synth, ids["role"]):
        actions = [a for a in as_list(statement["Action"]) if a.startswith("s3:")]
        if not actions:
            continue
        assert set(actions) <= JOB_S3_ACTIONS, statement  # no s3:Delete*, no wildcards
        for resource in as_list(statement["Resource"]):
            rendered = _render(resource, default_synth.template, REGION)
            assert isinstance(resource, dict), statement  # never "*"
            if statement.get("Sid") == "ReadTrainingSource":  # the one deployed source bundle, read only
                assert rendered.startswith(f"arn:aws:s3:::cdk-hnb659fds-assets-{ACCOUNT}-{REGION}/"), statement
                assert actions == ["s3:GetObject"] and not rendered.endswith("*"), statement
                continue
            assert resource in (data, artifacts) or resource["Fn::Join"][1][0] in (data, artifacts), statement
            grants.setdefault(rendered, set()).update(actions)
    data_arn, artifacts_arn = (f"arn:aws:s3:::{ids[k].lower()}" for k in ("data", "artifacts"))
    assert grants == {
        data_arn: {"s3:ListBucket"},
        f"{data_arn}/*": {"s3:GetObject"},
        artifacts_arn: {"s3:ListBucket"},
        f"{artifacts_arn}/runs/*": {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"},
    }
    (list_runs,) = [s for s in role_statements(default_synth, ids["role"]) if s["Resource"] == artifacts]
    assert list_runs["Condition"] == {"StringLike": {"s3:prefix": ["runs/*"]}}


@slow
def test_sagemaker_role_logs_images_and_metrics_are_scoped(default_synth: Synth) -> None:
    statements = role_statements(default_synth, _ids(default_synth)["role"])
    by_action = {a: s for s in statements for a in as_list(s["Action"])}
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{SAGEMAKER_LOG_GROUP}"

    def resources(action: str) -> list[str]:
        return [_render(r, default_synth.template, REGION) for r in as_list(by_action[action]["Resource"])]

    assert resources("logs:CreateLogGroup") == [group]
    for action in ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"):
        assert resources(action) == [f"{group}:*"], action
    # ECR pulls: the two SageMaker image repositories of the region the stack deploys to, nothing else.
    plan = _plan(default_synth, RUN_INPUT)
    repositories = set()
    for step in ("teacher", "validate"):
        account, rest = plan.image(step).split(".dkr.ecr.", 1)
        repositories.add(f"arn:aws:ecr:{REGION}:{account}:repository/{rest.split('/', 1)[1].split(':')[0]}")
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"):
        assert set(resources(action)) == repositories, action
    # The only statements on "*": the ECR login (takes no resource) and metrics held to SageMaker's namespace.
    on_star = [s for s in statements if "*" in as_list(s["Resource"])]
    assert sorted(s["Action"] for s in on_star) == ["cloudwatch:PutMetricData", "ecr:GetAuthorizationToken"]
    assert by_action["cloudwatch:PutMetricData"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}}
    assert not [a for s in statements for a in as_list(s["Action"]) if a.startswith(("iam:", "sagemaker:"))]


# --- state machine -------------------------------------------------------------------------------

@slow
def test_state_machine_is_standard_logged_without_data_and_traced(default_synth: Synth) -> None:
    _, props = _state_machine(default_synth)
    assert props["StateMachineType"] == "STANDARD"
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL" and logging["IncludeExecutionData"] is False
    group_id = logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert default_synth.template["Resources"][group_id]["DeletionPolicy"] == "Retain"
    assert props["TracingConfiguration"] == {"Enabled": True}


@slow
def test_definition_runs_the_four_jobs_in_order_behind_an_input_check(default_synth: Synth) -> None:
    definition = _definition(default_synth)
    assert definition["TimeoutSeconds"] == 24 * 3600
    jobs = _jobs(definition)
    assert [name for name, _ in jobs] == [STATE_NAMES[step] for step in STEPS]
    assert [name for name, _ in jobs] == ["ValidateData", "TrainTeacher", "DistilStudent", "ExportBundle"]
    for name, state in jobs:
        assert state["Type"] == "Task", name
        assert state["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync", name
        assert "Retry" not in state, name  # a job name is single-use: a retry would fail on the name
    check = definition["States"][CHECK_INPUT_STATE]
    assert definition["States"][check["Default"]] == {
        "Type": "Fail", "Error": INPUT_REFUSED_ERROR, "Cause": definition["States"][INPUT_REFUSED_STATE]["Cause"]}
    conditions = check["Choices"][0]["And"]
    assert {c["Variable"] for c in conditions if c.get("IsPresent")} == {
        "$.run_id", "$.data_prefix", "$.hyperparameters.target"}
    assert {"Not": {"Variable": "$.data_prefix", "StringMatches": "*/"}} in conditions


@slow
def test_teacher_runs_on_a_gpu_with_xgboost_and_the_rest_on_cpu_with_scikit_learn(default_synth: Synth) -> None:
    plan = _plan(default_synth, RUN_INPUT)
    for step, (name, state) in zip(STEPS, _jobs(_definition(default_synth)), strict=True):
        parameters = state["Parameters"]
        image = parameters["AlgorithmSpecification"]["TrainingImage"]
        assert image == plan.image(step), name  # the SDK's URI for the region, through the mapping
        if step == "teacher":
            assert parameters["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
            assert image == f"141502667606.dkr.ecr.{REGION}.amazonaws.com/sagemaker-xgboost:3.0-5"
            assert parameters["HyperParameters"]["teacher"] == "xgboost"
        else:
            assert parameters["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge", name
            assert image == f"141502667606.dkr.ecr.{REGION}.amazonaws.com/sagemaker-scikit-learn:1.4-2-cpu-py3", name


@slow
def test_each_job_runs_its_own_script_from_the_source_bundle_the_stack_deploys(default_synth: Synth) -> None:
    for step, (name, state) in zip(STEPS, _jobs(_definition(default_synth)), strict=True):
        hyperparameters = _evaluate(state["Parameters"]["HyperParameters"], RUN_INPUT)
        assert hyperparameters["sagemaker_program"] == f"pipeline/training/{step}_job.py", name
        # A standing object deployed with the stack: no run has to upload it first.
        assert hyperparameters["sagemaker_submit_directory"] == _source_uri(default_synth)
        assert hyperparameters["target"] == "churn"  # read from the run's input


@slow
def test_distil_and_export_read_the_earlier_jobs_model_artifacts(default_synth: Synth) -> None:
    ids = _ids(default_synth)
    run, data, runs = RUN_INPUT["run_id"], f"s3://{ids['data'].lower()}/churn/2025-06", f"s3://{ids['artifacts'].lower()}/runs"
    channels = {}
    for step, (_, state) in zip(STEPS, _jobs(_definition(default_synth)), strict=True):
        config = _evaluate(state["Parameters"]["InputDataConfig"], RUN_INPUT)
        channels[step] = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in config}
    teacher = f"{runs}/{run}/teacher/slimserve-{run}-teacher/output/model.tar.gz"
    student = f"{runs}/{run}/distil/slimserve-{run}-distil/output/model.tar.gz"
    assert channels == {
        "validate": {"train": f"{data}/train/"},
        "teacher": {"train": f"{data}/train/", "validation": f"{data}/validation/"},
        "distil": {"train": f"{data}/train/", "validation": f"{data}/validation/", "teacher": teacher},
        "export": {"train": f"{data}/train/", "holdout": f"{data}/holdout/", "teacher": teacher, "student": student},
    }


@slow
@pytest.mark.parametrize("variant", ["default_synth", "regional_synth"])
def test_every_task_sends_the_request_the_cli_sends(variant: str, request: pytest.FixtureRequest) -> None:
    """Evaluated for one run input, each task's parameters are `SageMakerPlan.request(step)` exactly."""
    synth: Synth = request.getfixturevalue(variant)
    plan = _plan(synth, RUN_INPUT)
    for step, (name, state) in zip(STEPS, _jobs(_definition(synth)), strict=True):
        assert _evaluate(state["Parameters"], RUN_INPUT) == plan.request(step), name


@slow
def test_tasks_pass_their_input_on_and_keep_a_small_result(default_synth: Synth) -> None:
    for step, (name, state) in zip(STEPS, _jobs(_definition(default_synth)), strict=True):
        assert state["ResultPath"] == f"$.training.{step}", name
        assert state["ResultSelector"] == {"job_arn.$": "$.TrainingJobArn",
                                           "model_artifacts.$": "$.ModelArtifacts.S3ModelArtifacts"}, name


@slow
def test_state_machine_role_starts_jobs_and_passes_only_the_job_role(default_synth: Synth) -> None:
    ids = _ids(default_synth)
    _, props = _state_machine(default_synth)
    statements = role_statements(default_synth, props["RoleArn"]["Fn::GetAtt"][0])
    (pass_role,) = [s for s in statements if "iam:PassRole" in as_list(s["Action"])]
    assert pass_role["Resource"] == {"Fn::GetAtt": [ids["role"], "Arn"]}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert not [s for s in statements if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    jobs = [s for s in statements if "sagemaker:CreateTrainingJob" in as_list(s["Action"])]
    assert [_render(s["Resource"], default_synth.template, REGION) for s in jobs] == [
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/*"]


# --- integration variants and regions ------------------------------------------------------------

@slow
def test_request_integration_only_changes_the_resource_and_the_result(default_synth: Synth,
                                                                       request_synth: Synth) -> None:
    synced, requested = _jobs(_definition(default_synth)), _jobs(_definition(request_synth))
    for (name, sync_state), (_, request_state) in zip(synced, requested, strict=True):
        assert request_state["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob", name
        assert request_state["ResultSelector"] == {"job_arn.$": "$.TrainingJobArn"}, name
        # Each synth names its own source asset, whose hash follows the sources at that synth's moment.
        assert _with_source_normalised(request_state["Parameters"], request_synth) == \
            _with_source_normalised(sync_state["Parameters"], default_synth), name
    # Only .sync needs the managed EventBridge rule that reports job completion.
    role = _state_machine(request_synth)[1]["RoleArn"]["Fn::GetAtt"][0]
    assert not [s for s in role_statements(request_synth, role) if any(a.startswith("events:")
                                                                   for a in as_list(s["Action"]))]


@slow
def test_region_agnostic_stack_maps_image_accounts_for_every_sdk_region(default_synth: Synth) -> None:
    (mapping,) = default_synth.template["Mappings"].values()
    assert {"us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1"} <= set(mapping)
    for region in ("us-east-1", "ap-southeast-2"):
        plan = _plan(default_synth, RUN_INPUT, region=region)
        accounts = {k: plan.image(step).split(".", 1)[0] for k, step in (("xgboost", "teacher"), ("sklearn", "distil"))}
        assert mapping[region] == accounts, region
        teacher = _jobs(_definition(default_synth, region=region))[1][1]
        assert teacher["Parameters"]["AlgorithmSpecification"]["TrainingImage"] == plan.image("teacher")


@slow
def test_stack_with_a_region_takes_the_images_straight_from_the_sdk(regional_synth: Synth) -> None:
    assert "Mappings" not in regional_synth.template
    plan = _plan(regional_synth, RUN_INPUT)
    body = _state_machine(regional_synth)[1]["DefinitionString"]
    assert plan.image("teacher") in json.dumps(body) and plan.image("export") in json.dumps(body)


# --- the request variant on moto's interpreter -----------------------------------------------------

@slow
def test_request_variant_runs_on_moto_and_sends_the_clis_requests(request_synth: Synth,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    region = "us-east-1"
    sent: list[dict[str, Any]] = []
    real = botocore.client.BaseClient._make_api_call

    def record(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "CreateTrainingJob":
            sent.append(params)
        return real(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    definition = json.dumps(_definition(request_synth, region=region))
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn_client = boto3.client("stepfunctions", region_name=region)
        arn = sfn_client.create_state_machine(name="training", definition=definition,
                                              roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"]

        def run(name: str, state_input: dict[str, Any]) -> dict[str, Any]:
            execution = sfn_client.start_execution(stateMachineArn=arn, name=name, input=json.dumps(state_input))
            return finished_execution(sfn_client, execution["executionArn"])

        done = run("good", RUN_INPUT)
        assert done["status"] == "SUCCEEDED", done
        plan = _plan(request_synth, RUN_INPUT, region=region)
        assert sent == [plan.request(step) for step in STEPS]
        output = json.loads(done["output"])
        assert {k: v for k, v in output.items() if k != "training"} == RUN_INPUT  # the input passes through
        assert output["training"]["export"]["job_arn"].endswith(f"training-job/{plan.job_name('export')}")

        sent.clear()
        for name, bad in (("slash", {**RUN_INPUT, "data_prefix": "churn/2025-06/"}),
                          ("no-target", {**RUN_INPUT, "hyperparameters": {}})):
            refused = run(name, bad)
            assert (refused["status"], refused.get("error")) == ("FAILED", INPUT_REFUSED_ERROR), name
        assert sent == []  # refused before any job started


# --- outputs, cdk-nag, cfn-lint ------------------------------------------------------------------

@slow
def test_outputs_name_the_buckets_the_role_and_the_state_machine(default_synth: Synth) -> None:
    ids = _ids(default_synth)
    resources = default_synth.template["Resources"]
    assert resources[ids["data"]]["Type"] == resources[ids["artifacts"]]["Type"] == "AWS::S3::Bucket"
    assert resources[ids["role"]]["Type"] == "AWS::IAM::Role"
    assert ids["state_machine"] == _state_machine(default_synth)[0]


@slow
@pytest.mark.parametrize("variant", ["default_synth", "request_synth", "regional_synth"])
def test_training_passes_cdk_nag(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    assert synth.nag_error is None, "cdk-nag findings:\n" + "\n".join(violations(synth))
    assert violations(synth) == []
    ours = {k: reason for k, reason in synth.acknowledgements().items() if k.startswith(f"/{STACK_ID}/Training")}
    assert {k.split(" ", 1)[0] for k in ours} == {f"/{STACK_ID}/Training/SageMakerPolicy",
                                                  f"/{STACK_ID}/Training/StateMachineRole"}
    assert all(reason.strip() and "\n" not in reason for reason in ours.values())


@slow
@pytest.mark.parametrize("variant", ["request_synth", "regional_synth"])  # default_synth: test_cfn_lint
def test_training_variants_have_no_lint_findings(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    (template,) = sorted(synth.outdir.glob("*.template.json"))
    problems = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in lint_all(template.read_text())
                if m.rule.id[0] in "EW" and m.rule.id not in ALLOWED_LINT_WARNINGS]
    assert problems == []


# --- settings and reuse --------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    ({"integration": "async"}, r"\.integration must be 'sync' or 'request', got 'async'"),
    ({"gpu_instance": "g5.xlarge"}, r"\.gpu_instance must be a SageMaker instance type like ml\.m5\.xlarge"),
    ({"max_runtime_seconds": 0}, r"\.max_runtime_seconds must be between 1 and 2419200"),
    ({"max_runtime_seconds": 8 * 3600, "run_timeout_hours": 24},
     r"\.run_timeout_hours \(24\) must cover the 4 jobs at max_runtime_seconds \(28800\) each"),
    ({"hyperparameters": {"sagemaker_program": "x.py"}},
     r"\.hyperparameters: 'sagemaker_program' must be a non-empty name outside sagemaker_\*"),
    ({"run_hyperparameters": ("max-iter",)}, r"\.run_hyperparameters: 'max-iter' must match"),
    ({"hyperparameters": {"target": "y"}}, r": \['target'\] are both fixed"),
    ({"run_hyperparameters": ("target", "target")}, r"\.run_hyperparameters repeats a key"),
])
def test_bad_training_settings_raise_value_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^TrainingSettings" + message):
        TrainingSettings(**overrides).validate()


def test_the_construct_refuses_bad_settings_before_creating_anything() -> None:
    stack = Stack(App(), "TrainingPropsTest")
    with pytest.raises(ValueError, match=r"TrainingSettings\.integration"):
        Training(stack, "Training", TrainingProps(access_log_bucket=s3.Bucket(stack, "Logs"),
                                                  monitoring=Monitoring(stack, "Monitoring"),
                                                  settings=TrainingSettings(integration="async")))  # type: ignore[arg-type]
    training = stack.node.try_find_child("Training")
    assert training is None or not training.node.children


def test_integration_comes_from_context() -> None:
    assert stack_props_from_context(App(context=REQUEST_CONTEXT)).training.integration == "request"
    assert stack_props_from_context(App(context=MODEL_CONTEXT)).training.integration == "sync"
    assert ServingStackProps().training == TrainingSettings()
    with pytest.raises(ValueError, match=r"trainingIntegration must be 'sync' or 'request', got 'later'"):
        stack_props_from_context(App(context={"slimserve:trainingIntegration": "later"}))


def test_a_fresh_chain_can_be_embedded_in_another_state_machine() -> None:
    """The retraining machine will chain its own copy of the four jobs (a state belongs to one machine)."""
    app = App(context=load_cdk_json_context())
    stack = Stack(app, "ChainReuse")
    training = Training(stack, "Training", TrainingProps(access_log_bucket=s3.Bucket(stack, "Logs"),
                                                         monitoring=Monitoring(stack, "Monitoring")))
    scope = Construct(stack, "Retraining")
    sfn.StateMachine(scope, "Machine", definition_body=sfn.DefinitionBody.from_chainable(
        training.training_chain(scope).next(sfn.Succeed(scope, "Done"))))
    template = app.synth().get_stack_by_name("ChainReuse").template
    machines = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::StepFunctions::StateMachine"}
    (other,) = [v for k, v in machines.items() if k.startswith("Retraining")]
    body = json.loads(_render(other["Properties"]["DefinitionString"], template, REGION))
    assert body["StartAt"] == "ValidateData" and body["States"]["ExportBundle"]["Next"] == "Done"
    # The other machine's role gets its own permission to pass the job role.
    role = other["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = [s for p in template["Resources"].values() if p["Type"] == "AWS::IAM::Policy"
                  and {"Ref": role} in p["Properties"]["Roles"] for s in p["Properties"]["PolicyDocument"]["Statement"]]
    assert any("iam:PassRole" in as_list(s["Action"]) for s in statements)


def test_a_failed_training_run_raises_an_alarm(default_synth: Synth) -> None:
    machine = next(k for k in default_synth.resources("AWS::StepFunctions::StateMachine") if k.startswith("Training"))
    alarms = [a["Properties"] for a in default_synth.resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == "ExecutionsFailed"
              and any(d.get("Value", {}).get("Ref") == machine for d in a["Properties"].get("Dimensions", []))]
    assert len(alarms) == 1
    assert alarms[0]["Threshold"] == 0 and alarms[0]["ComparisonOperator"] == "GreaterThanThreshold"
