"""Training: the data and artifacts buckets, the SageMaker execution role, and the four training jobs
(validate → teacher → distil → export) as Step Functions tasks, wrapped in a state machine of their own.

The jobs are the requests `slimserve train --on sagemaker` sends (`pipeline/training/sagemaker_jobs.py`):
this construct builds them from the same `SageMakerPlan`, with the run id and the data prefix read from the
state input at run time instead of fixed at launch.

State input (the execution input of the training machine; the retraining machine passes the same fields):

    {"run_id": "20250601120000-0042",      # names the jobs slimserve-<run_id>-<step> (<= 63 characters)
     "data_prefix": "churn/2025-06",       # key prefix in the data bucket holding train/, validation/, holdout/
     "hyperparameters": {"target": "churn"}}   # the keys TrainingSettings.run_hyperparameters names

The jobs' code is a standing object: the stack ships `sagemaker_jobs.source_bundle()` (the sourcedir.tar.gz
`slimserve train --on sagemaker` uploads per run) as a file asset, deployed by `cdk deploy` into the CDK
assets bucket under its content hash, and every job's `sagemaker_submit_directory` names it. So a run needs
nothing uploaded first (a scheduled or drift-started run works on a freshly deployed stack), no step copies
code per run, and the hash in each job's hyperparameters says which code trained it. (An asset directory would
be zipped; script mode wants a tar.gz, so the asset is the archive file itself, built reproducibly at synth.)
The execution role may read that one object (the bootstrap bucket's default aws/s3 key needs no grant).
Each job writes `s3://<artifacts bucket>/runs/<run_id>/<step>/<job name>/output/model.tar.gz`; the export
job's holds the bundle. Each task leaves its result under `$.training.<step>` and passes its input on.

Integration: "sync" (`sagemaker:createTrainingJob.sync`, each task waits for its job: what AWS runs) or
"request" (`sagemaker:createTrainingJob`, returns once the job is created: what moto's interpreter can run,
for the local emulation; on AWS the steps would not wait for each other).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal

from aws_cdk import ArnFormat, Aws, CfnMapping, CfnOutput, Duration, Fn, RemovalPolicy, Size, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from functions.common.layout import RUNS_PREFIX
from pipeline.training.sagemaker_jobs import SKLEARN_VERSION, STEPS, XGBOOST_VERSION, SageMakerPlan, source_bundle

from .buckets import AccessLogs, abort_incomplete_uploads, secure_bucket
from .monitoring import Monitoring
from .nag import ack, arn_token
from .state_machines import logged_state_machine

# Job outputs and source bundles: `runs/<run_id>/...` in the artifacts bucket (the CLI's `--out` layout).
SAGEMAKER_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
"""Where SageMaker writes every training job's logs (one group per account and region, made by SageMaker)."""
SAGEMAKER_METRICS_NAMESPACE = "/aws/sagemaker/TrainingJobs"

# State names in the synthesized ASL (tests and the local emulation look them up by these names).
STATE_NAMES = {"validate": "ValidateData", "teacher": "TrainTeacher", "distil": "DistilStudent",
               "export": "ExportBundle"}
CHECK_INPUT_STATE = "CheckTrainingInput"
INPUT_REFUSED_STATE = "TrainingInputRefused"
INPUT_REFUSED_ERROR = "slimserve.TrainingInputRefused"
RESULT_ROOT = "$.training"

# Images, as `SageMakerPlan.image` names them: (framework, version) of the teacher's and of every other step's.
IMAGE_FRAMEWORKS = {"teacher": ("xgboost", XGBOOST_VERSION), "student": ("sklearn", SKLEARN_VERSION)}
REFERENCE_REGION = "us-east-1"
"""A region-agnostic stack reads the images' repository and tag from this region's URI (accounts per region
come from the SDK's image config, into a CfnMapping)."""

SAGEMAKER_MAX_RUNTIME_SECONDS = 28 * 24 * 3600
SOURCE_CACHE = Path(tempfile.gettempdir()) / "slimserve-training-source"
_PLAN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(SageMakerPlan)}
_RUN_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_INSTANCE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
_IMAGE_URI = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.(?P<suffix>[a-z0-9.]+)/"
                        r"(?P<repository>[a-z0-9._/-]+):(?P<tag>[A-Za-z0-9._-]+)$")

# Stand-ins for what is known only at run time. `_runtime` turns a plan string holding them into a literal,
# a JSONPath, or a States.Format expression over the state input.
_SENTINEL = re.compile(r"@(RUN_ID|DATA_PREFIX|HP:[a-z0-9_]+)@")
_RUN, _DATA = "@RUN_ID@", "@DATA_PREFIX@"
_CDK_TOKEN = re.compile(r"\$\{Token\[[^\]]+\]\}")
_INPUT_MODES = {"File": tasks.InputMode.FILE}
_S3_DATA_TYPES = {"S3Prefix": tasks.S3DataType.S3_PREFIX}
_DISTRIBUTIONS = {"FullyReplicated": tasks.S3DataDistributionType.FULLY_REPLICATED}

Integration = Literal["sync", "request"]


@dataclass(frozen=True)
class TrainingSettings:
    """The tunables of the training jobs and their state machine (what a stack or CDK context chooses)."""

    integration: Integration = "sync"
    """"sync": each task waits for its job (AWS). "request": tasks only create the jobs (the local emulation)."""
    gpu_instance: str = _PLAN_DEFAULTS["gpu_instance"]
    """The teacher's instance (XGBoost image, CUDA)."""
    cpu_instance: str = _PLAN_DEFAULTS["cpu_instance"]
    """Every other step's instance (scikit-learn image)."""
    max_runtime_seconds: int = _PLAN_DEFAULTS["max_runtime_s"]
    """Each job's StoppingCondition."""
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    """Fixed at deploy time, sent to every job (e.g. {"student": "hgb", "seed": "7"})."""
    run_hyperparameters: tuple[str, ...] = ("target",)
    """Read from the state input's `hyperparameters` object at run time; each one is required there."""
    run_timeout_hours: int = 24
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    """Training data and job outputs are the lineage of every bundle: keep them when the stack goes."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting, before any resource is created."""
        if self.integration not in ("sync", "request"):
            raise ValueError(f"TrainingSettings.integration must be 'sync' or 'request', got {self.integration!r}")
        for name in ("gpu_instance", "cpu_instance"):
            if not _INSTANCE.match(getattr(self, name)):
                raise ValueError(f"TrainingSettings.{name} must be a SageMaker instance type like ml.m5.xlarge, "
                                 f"got {getattr(self, name)!r}")
        if not 1 <= self.max_runtime_seconds <= SAGEMAKER_MAX_RUNTIME_SECONDS:
            raise ValueError(f"TrainingSettings.max_runtime_seconds must be between 1 and "
                             f"{SAGEMAKER_MAX_RUNTIME_SECONDS} (SageMaker's 28 days), got {self.max_runtime_seconds}")
        if self.run_timeout_hours * 3600 < len(STEPS) * self.max_runtime_seconds:
            raise ValueError(f"TrainingSettings.run_timeout_hours ({self.run_timeout_hours}) must cover the "
                             f"{len(STEPS)} jobs at max_runtime_seconds ({self.max_runtime_seconds}) each")
        for key, value in self.hyperparameters.items():
            if key.startswith("sagemaker_") or not isinstance(value, str) or not key:
                raise ValueError(f"TrainingSettings.hyperparameters: {key!r} must be a non-empty name outside "
                                 f"sagemaker_* with a string value, got {value!r}")
        for key in self.run_hyperparameters:
            if not _RUN_KEY.match(key):
                raise ValueError(f"TrainingSettings.run_hyperparameters: {key!r} must match {_RUN_KEY.pattern} "
                                 "(it becomes a JSONPath into the state input)")
        if clash := sorted(set(self.run_hyperparameters) & set(self.hyperparameters)):
            raise ValueError(f"TrainingSettings: {clash} are both fixed (hyperparameters) and read at run time "
                             "(run_hyperparameters); choose one")
        if len(set(self.run_hyperparameters)) != len(self.run_hyperparameters):
            raise ValueError("TrainingSettings.run_hyperparameters repeats a key")

    @property
    def integration_pattern(self) -> sfn.IntegrationPattern:
        return sfn.IntegrationPattern.RUN_JOB if self.integration == "sync" else sfn.IntegrationPattern.REQUEST_RESPONSE


@dataclass(frozen=True)
class TrainingProps:
    access_log_bucket: s3.IBucket
    """Where both buckets' server access logs go (the model store's log bucket)."""
    monitoring: Monitoring
    settings: TrainingSettings = field(default_factory=TrainingSettings)

    def validate(self) -> None:
        self.settings.validate()


class _TemplatePlan(SageMakerPlan):
    """The CLI's plan with run-time stand-ins and images that may be CloudFormation expressions."""

    _images: dict[str, str]

    def __init__(self, images: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_images", dict(images))  # the plan is a frozen dataclass

    def image(self, step: str) -> str:
        return self._images["teacher" if step == "teacher" else "student"]


class Training(Construct):
    """Training data and artifacts buckets, the SageMaker execution role, and the training state machine."""

    def __init__(self, scope: Construct, construct_id: str, props: TrainingProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.settings = props.settings
        self.data_bucket = self._bucket("DataBucket", "training-data-bucket/")
        self.artifacts_bucket = self._bucket("ArtifactsBucket", "training-artifacts-bucket/")
        self.images = _Images(self, self.settings)
        self.source = s3_assets.Asset(self, "TrainingSource", path=str(staged_source_bundle()))
        """The jobs' sourcedir.tar.gz, deployed with the stack (`source.s3_object_url`)."""
        self.role = self._sagemaker_role()
        self.plan = self._plan()
        self.state_machine = self._state_machine()
        self.runs_failed_alarm = props.monitoring.runs_failed(
            self, "RunsFailedAlarm", self.state_machine, "A training run (validate, teacher, distil, export) failed")
        self._acknowledge_nag_findings()
        CfnOutput(self, "DataBucketName", value=self.data_bucket.bucket_name,
                  description="Training data: <prefix>/train/, <prefix>/validation/, <prefix>/holdout/")
        CfnOutput(self, "ArtifactsBucketName", value=self.artifacts_bucket.bucket_name,
                  description=f"Source bundles and job outputs under {RUNS_PREFIX}<run_id>/")
        CfnOutput(self, "SageMakerRoleArn", value=self.role.role_arn,
                  description="Execution role of the training jobs (also `slimserve train --on sagemaker --role`)")
        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn,
                  description='Start with {"run_id", "data_prefix", "hyperparameters"}: validate, teacher, '
                              "distil, export")

    # --- storage ----------------------------------------------------------------------------------

    def _bucket(self, construct_id: str, log_prefix: str) -> s3.Bucket:
        # Versioned: a data set or artifact overwritten by mistake stays recoverable.
        return secure_bucket(self, construct_id, removal_policy=self.settings.removal_policy,
                             access_logs=AccessLogs(self.props.access_log_bucket, log_prefix),
                             lifecycle_rules=[abort_incomplete_uploads()])

    # --- the jobs' role ---------------------------------------------------------------------------

    def _sagemaker_role(self) -> iam.Role:
        """What a script-mode job needs, no more: no AmazonSageMakerFullAccess, no s3:Delete*."""
        role = iam.Role(self, "SageMakerRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="slimserve training jobs: read training data, read/write runs/, logs, images")
        stack = Stack.of(self)
        data, artifacts = self.data_bucket, self.artifacts_bucket
        statements = [
            # Channels (S3Prefix, File mode) list and copy the data prefix the run names.
            iam.PolicyStatement(sid="ListTrainingData", actions=["s3:ListBucket"], resources=[data.bucket_arn]),
            iam.PolicyStatement(sid="ReadTrainingData", actions=["s3:GetObject"],
                                resources=[data.arn_for_objects("*")]),
            # Source bundles and earlier steps' model.tar.gz in; this step's outputs out. Never a delete.
            iam.PolicyStatement(sid="ListRuns", actions=["s3:ListBucket"], resources=[artifacts.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{RUNS_PREFIX}*"]}}),
            iam.PolicyStatement(sid="ReadWriteRuns",
                                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                                resources=[artifacts.arn_for_objects(f"{RUNS_PREFIX}*")]),
            # The jobs' code: the one deployed source bundle, read by script mode at each job's start.
            iam.PolicyStatement(sid="ReadTrainingSource", actions=["s3:GetObject"],
                                resources=[self.source.bucket.arn_for_objects(self.source.s3_object_key)]),
            iam.PolicyStatement(sid="TrainingJobLogGroup", actions=["logs:CreateLogGroup"],
                                resources=[self._log_group_arn("")]),
            iam.PolicyStatement(sid="TrainingJobLogStreams",
                                actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                                resources=[self._log_group_arn(":*")]),
            iam.PolicyStatement(sid="PullSageMakerImages",
                                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                         "ecr:BatchCheckLayerAvailability"],
                                resources=[stack.format_arn(service="ecr", account=self.images.account(image),
                                                            resource="repository",
                                                            resource_name=self.images.repository(image))
                                           for image in IMAGE_FRAMEWORKS]),
            iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(sid="TrainingMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringEquals": {"cloudwatch:namespace": SAGEMAKER_METRICS_NAMESPACE}}),
        ]
        iam.Policy(self, "SageMakerPolicy", roles=[role], statements=statements)
        return role

    def _log_group_arn(self, suffix: str) -> str:
        return Stack.of(self).format_arn(service="logs", resource="log-group",
                                         resource_name=f"{SAGEMAKER_LOG_GROUP}{suffix}",
                                         arn_format=ArnFormat.COLON_RESOURCE_NAME)

    # --- the jobs ---------------------------------------------------------------------------------

    def _plan(self) -> _TemplatePlan:
        """The CLI's plan, with the run id and data prefix as stand-ins and `--out s3://<artifacts>/runs/`."""
        artifacts = f"s3://{self.artifacts_bucket.bucket_name}/{RUNS_PREFIX}"
        return _TemplatePlan(
            images={image: self.images.uri(image) for image in IMAGE_FRAMEWORKS},
            data_uri=f"s3://{self.data_bucket.bucket_name}/{_DATA}",
            output_uri=artifacts,
            role_arn=self.role.role_arn,
            region=Stack.of(self).region,
            run_id=_RUN,
            source_uri=self.source.s3_object_url,
            hyperparameters={**self.settings.hyperparameters,
                             **{key: f"@HP:{key}@" for key in self.settings.run_hyperparameters}},
            gpu_instance=self.settings.gpu_instance,
            cpu_instance=self.settings.cpu_instance,
            max_runtime_s=self.settings.max_runtime_seconds,
        )

    def training_chain(self, scope: Construct) -> sfn.Chain:
        """A fresh validate → teacher → distil → export chain (states belong to one machine each), its
        tasks created under `scope`; the training machine uses one."""
        chain: sfn.Chain | None = None
        for task in self.training_tasks(scope):
            chain = sfn.Chain.start(task) if chain is None else chain.next(task)
        assert chain is not None
        return chain

    def training_tasks(self, scope: Construct, hyperparameters: Mapping[str, str] | None = None,
                       ) -> list[tasks.SageMakerCreateTrainingJob]:
        """Fresh validate, teacher, distil and export tasks under `scope`, not yet chained: a machine that
        embeds them chains them itself and catches each one's failure. `hyperparameters` are fixed ones of
        that machine (the retraining machine names its model), over the settings' own."""
        extra = dict(hyperparameters or {})
        if clash := sorted(set(extra) & {*self.settings.run_hyperparameters, *(k for k in extra
                                                                                if k.startswith("sagemaker_"))}):
            raise ValueError(f"Training: {clash} cannot be fixed by the machine (read at run time or SageMaker's)")
        return [self._task(scope, step, extra) for step in STEPS]

    def export_artifact(self) -> str:
        """The export job's `model.tar.gz` (the bundle) as a States.Format expression over the state input."""
        return _runtime(self.plan.model_artifact("export"))

    def input_is_valid(self) -> sfn.Condition:
        """What the jobs need from the state input; anything else would fail a job, or worse, read the
        wrong prefix (`churn/` + `/train/` is `churn//train/`, another key)."""
        present = [sfn.Condition.is_present(p) for p in ("$.run_id", "$.data_prefix")]
        present += [sfn.Condition.is_present(f"$.hyperparameters.{key}") for key in self.settings.run_hyperparameters]
        return sfn.Condition.and_(
            *present,
            sfn.Condition.is_string("$.run_id"),
            sfn.Condition.is_string("$.data_prefix"),
            sfn.Condition.not_(sfn.Condition.string_matches("$.data_prefix", "*/")),
            sfn.Condition.not_(sfn.Condition.string_matches("$.data_prefix", "/*")),
        )

    def guarded_chain(self, scope: Construct) -> sfn.Chain:
        """`training_chain` behind a check of the state input: a bad input fails before any job starts."""
        keys = ", ".join(self.settings.run_hyperparameters) or "no keys"
        refused = sfn.Fail(scope, "InputRefused", state_name=INPUT_REFUSED_STATE, error=INPUT_REFUSED_ERROR,
                           cause=f"the input needs run_id, data_prefix (no leading or trailing '/') and "
                                 f"hyperparameters with {keys}")
        jobs = self.training_chain(scope)
        check = sfn.Choice(scope, "CheckInput", state_name=CHECK_INPUT_STATE,
                           comment="run_id, data_prefix and the run hyperparameters are there").when(
            self.input_is_valid(), jobs).otherwise(refused)
        return sfn.Chain.custom(check, jobs.end_states, jobs)

    def _task(self, scope: Construct, step: str, extra: Mapping[str, str] | None = None,
              ) -> tasks.SageMakerCreateTrainingJob:
        request = self.plan.request(step)
        request["HyperParameters"] = {**request["HyperParameters"], **(extra or {})}
        known = {"TrainingJobName", "RoleArn", "AlgorithmSpecification", "HyperParameters", "InputDataConfig",
                 "OutputDataConfig", "ResourceConfig", "StoppingCondition", "EnableNetworkIsolation", "Tags"}
        if set(request) != known:  # a field added to the CLI's request must be carried over here on purpose
            raise ValueError(f"Training: the plan's request has fields {sorted(set(request) ^ known)} "
                             "this construct does not translate")
        algorithm, resources = request["AlgorithmSpecification"], request["ResourceConfig"]
        return tasks.SageMakerCreateTrainingJob(
            scope, f"{STATE_NAMES[step]}Job", state_name=STATE_NAMES[step],
            integration_pattern=self.settings.integration_pattern,
            training_job_name=_runtime(request["TrainingJobName"]),
            # S3 locations read from the input would grant s3:GetObject/ListBucket/PutObject on "*" to the
            # role they bind to; the role's own policy already names the two buckets, so it takes no grants here.
            role=self.role.without_policy_updates(),
            algorithm_specification=tasks.AlgorithmSpecification(
                training_image=tasks.DockerImage.from_registry(algorithm["TrainingImage"]),
                training_input_mode=_pick(_INPUT_MODES, algorithm["TrainingInputMode"]),
            ),
            hyperparameters={k: _runtime(v) for k, v in request["HyperParameters"].items()},
            input_data_config=[tasks.Channel(
                channel_name=channel["ChannelName"],
                data_source=tasks.DataSource(s3_data_source=_s3_data_source(channel["DataSource"]["S3DataSource"])),
            ) for channel in request["InputDataConfig"]],
            output_data_config=tasks.OutputDataConfig(
                s3_output_location=_s3_uri(request["OutputDataConfig"]["S3OutputPath"])),
            resource_config=tasks.ResourceConfig(
                instance_count=resources["InstanceCount"],
                instance_type=ec2.InstanceType(resources["InstanceType"].removeprefix("ml.")),
                volume_size=Size.gibibytes(resources["VolumeSizeInGB"]),
            ),
            stopping_condition=tasks.StoppingCondition(
                max_runtime=Duration.seconds(request["StoppingCondition"]["MaxRuntimeInSeconds"])),
            enable_network_isolation=request["EnableNetworkIsolation"],
            tags={tag["Key"]: _runtime(tag["Value"]) for tag in request["Tags"]},
            result_selector=self._result_selector(),
            result_path=f"{RESULT_ROOT}.{step}",  # keep the input: the next step reads run_id and data_prefix
            comment=f"SageMaker training job: pipeline/training/{step}_job.py",
        )

    def _result_selector(self) -> dict[str, str]:
        if self.settings.integration == "sync":  # DescribeTrainingJob's answer once the job has ended
            return {"job_arn": sfn.JsonPath.string_at("$.TrainingJobArn"),
                    "model_artifacts": sfn.JsonPath.string_at("$.ModelArtifacts.S3ModelArtifacts")}
        return {"job_arn": sfn.JsonPath.string_at("$.TrainingJobArn")}  # CreateTrainingJob's answer

    def _state_machine(self) -> sfn.StateMachine:
        return logged_state_machine(
            self, "Pipeline", self.guarded_chain(self), log_retention=self.settings.log_retention,
            log_group_id="StateMachineLogs", role_id="StateMachineRole",  # the ids it was first deployed with
            timeout_hours=self.settings.run_timeout_hours,
            role_description="slimserve training state machine: starts the four jobs, passes the job role",
            comment="slimserve training: validate data, teacher (GPU), distil student, export the ONNX bundle")

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        stack = Stack.of(self)
        policy = self.node.find_child("SageMakerPolicy")
        ack(policy, "AwsSolutions-IAM5[Resource::*]",
             "ecr:GetAuthorizationToken takes no resource; PutMetricData is held to SageMaker's namespace")
        ack(policy, f"AwsSolutions-IAM5[Resource::{arn_token(self.data_bucket)}/*]",
             "read-only: a run names its data prefix at run time")
        ack(policy, f"AwsSolutions-IAM5[Resource::{arn_token(self.artifacts_bucket)}/{RUNS_PREFIX}*]",
             "runs/ only, no delete: each job writes under a run id known at run time")
        ack(policy, f"AwsSolutions-IAM5[Resource::{_as_nag_prints(stack, self._log_group_arn(':*'))}]",
             "SageMaker's training log group only; streams are named by job at run time")
        role = self.state_machine.role
        ack(role, "AwsSolutions-IAM5[Resource::*]",
             "X-Ray, CloudWatch Logs delivery and sagemaker:ListTags take no resource scope")
        jobs = stack.format_arn(service="sagemaker", resource="training-job", resource_name="*")
        ack(role, f"AwsSolutions-IAM5[Resource::{_as_nag_prints(stack, jobs)}]",
             "job names come from the run id at run time (slimserve-<run_id>-<step>)")


def staged_source_bundle(cache: Path = SOURCE_CACHE) -> Path:
    """`source_bundle()` written to a content-addressed file (the asset's path): synthesizing again reuses it."""
    data = source_bundle()
    path = cache / hashlib.sha256(data).hexdigest()[:32] / "sourcedir.tar.gz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:
            partial.write(data)
        Path(partial.name).replace(path)  # atomic: a concurrent synth reads a whole file or none
    return path


def _as_nag_prints(stack: Stack, arn: str) -> str:
    """An ARN as cdk-nag prints it in a finding id: pseudo parameters as `<AWS::Region>`, literals as they are
    (a stack with a concrete region or partition prints those literally)."""
    resolved = stack.resolve(arn)
    if isinstance(resolved, str):
        return resolved
    parts = []
    for part in resolved["Fn::Join"][1]:
        if isinstance(part, str):
            parts.append(part)
        elif "Ref" in part:
            parts.append(f"<{part['Ref']}>")
        else:
            raise ValueError(f"Training: cannot print {part} as cdk-nag does")
    return "".join(parts)


class _Images:
    """The jobs' image URIs and ECR repositories, from `sagemaker.core.image_uris` through `SageMakerPlan.image`.

    A stack with a concrete region gets that region's URIs as they are. A region-agnostic stack gets a
    CfnMapping of the images' registry account per region (the SDK's image config, every region it lists),
    read with `Fn::FindInMap` on AWS::Region: a region SageMaker has no images in fails the deploy, not a run.
    """

    def __init__(self, scope: Construct, settings: TrainingSettings) -> None:
        stack = Stack.of(scope)
        self.region = None if Token.is_unresolved(stack.region) else stack.region
        self.reference = _reference_images(settings.gpu_instance, settings.cpu_instance,
                                           self.region or REFERENCE_REGION)
        self.mapping: CfnMapping | None = None
        if self.region is None:
            self.mapping = CfnMapping(scope, "SageMakerImageAccounts", mapping=_image_accounts())
            for role, (framework, _) in IMAGE_FRAMEWORKS.items():
                listed = _image_accounts()[REFERENCE_REGION][framework]
                if listed != self.reference[role]["account"]:
                    raise ValueError(f"Training: the SDK's {framework} registry for {REFERENCE_REGION} ({listed}) "
                                     f"differs from its image URI ({self.reference[role]['account']})")

    def account(self, role: str) -> str:
        if self.mapping is None:
            return self.reference[role]["account"]
        return self.mapping.find_in_map(Aws.REGION, IMAGE_FRAMEWORKS[role][0])

    def repository(self, role: str) -> str:
        return self.reference[role]["repository"]

    def uri(self, role: str) -> str:
        ref = self.reference[role]
        if self.mapping is None:
            return ref["uri"]
        return Fn.join("", [self.account(role), ".dkr.ecr.", Aws.REGION, ".", Aws.URL_SUFFIX, "/",
                            f"{ref['repository']}:{ref['tag']}"])


@cache
def _reference_images(gpu_instance: str, cpu_instance: str, region: str) -> dict[str, dict[str, str]]:
    """The CLI's image URIs for one region, parsed: {"teacher"|"student": {uri, account, repository, tag}}."""
    plan = SageMakerPlan(data_uri="s3://unused/", output_uri="s3://unused/", role_arn="", region=region,
                         run_id="unused", source_uri="s3://unused/", gpu_instance=gpu_instance,
                         cpu_instance=cpu_instance)
    images: dict[str, dict[str, str]] = {}
    for role, step in (("teacher", "teacher"), ("student", "validate")):
        uri = plan.image(step)
        match = _IMAGE_URI.match(uri)
        if match is None or match["region"] != region:
            raise ValueError(f"Training: unexpected SageMaker image URI {uri!r} for {region}")
        images[role] = {"uri": uri, **match.groupdict()}
    return images


@cache
def _image_accounts() -> dict[str, dict[str, str]]:
    """{region: {framework: registry account}} for the two images, every region the SDK's config lists."""
    from sagemaker.core import image_uris

    accounts: dict[str, dict[str, str]] = {}
    for framework, version in IMAGE_FRAMEWORKS.values():
        registries = image_uris.config_for_framework(framework)["training"]["versions"][version]["registries"]
        for region, account in registries.items():
            accounts.setdefault(region, {})[framework] = account
    return {region: value for region, value in sorted(accounts.items()) if len(value) == len(IMAGE_FRAMEWORKS)}


def _input_path(sentinel: str) -> str:
    name = sentinel.strip("@")
    if name == "RUN_ID":
        return "$.run_id"
    if name == "DATA_PREFIX":
        return "$.data_prefix"
    return f"$.hyperparameters.{name.removeprefix('HP:')}"


def _runtime(text: str) -> str:
    """A plan string: itself when it holds no stand-in, else a JSONPath or States.Format expression
    (CDK-encoded) that reads the stand-ins from the state input."""
    found = [m.group(0) for m in _SENTINEL.finditer(text)]
    if not found:
        return text
    if found == [text]:
        return sfn.JsonPath.string_at(_input_path(text))
    literal = _SENTINEL.sub("{}", text)
    if re.search(r"[{}\\]", _CDK_TOKEN.sub("", _SENTINEL.sub("", text))):
        raise ValueError(f"Training: {text!r} holds characters States.Format would read as placeholders")
    return sfn.JsonPath.format(literal, *(sfn.JsonPath.string_at(_input_path(s)) for s in found))


def _s3_uri(text: str) -> tasks.S3Location:
    expression = _runtime(text)
    if expression == text:
        raise ValueError(f"Training: {text!r} is fixed; every job's S3 location depends on the run")
    return tasks.S3Location.from_json_expression(expression)


def _s3_data_source(source: Mapping[str, str]) -> tasks.S3DataSource:
    return tasks.S3DataSource(
        s3_location=_s3_uri(source["S3Uri"]),
        s3_data_type=_pick(_S3_DATA_TYPES, source["S3DataType"]),
        s3_data_distribution_type=_pick(_DISTRIBUTIONS, source["S3DataDistributionType"]),
    )


def _pick(choices: Mapping[str, Any], value: str) -> Any:
    if value not in choices:
        raise ValueError(f"Training: the plan's {value!r} has no translation here (known: {sorted(choices)})")
    return choices[value]
