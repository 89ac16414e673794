"""BatchScoring: S3 `incoming/` → SQS (+DLQ) → batch Lambda; big CSVs → Step Functions Distributed Map.

Bucket layout (the contract with `functions/batch`): the batch function reads `incoming/*`, writes
`scored/*` and `rejected/*`, and reads/writes run manifests under `manifests/*`; a Distributed Map
run writes its parts under `runs/*` and its finalize step writes the single run manifest.

Layers: the three batch functions get the runtime layer (shared with inference) and then the parquet
layer (pyarrow, `layers/build/parquet`, built by `make layer`) for Parquet input and output; Lambda
merges both into /opt/python. The inference function never gets the parquet layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from .nag import ack, arn_token
from .serving_api import METRICS_NAMESPACE, REPO_ROOT, function_code
from .state_machines import logged_state_machine

HANDLER = "functions.batch.handler.lambda_handler"
MAP_HANDLER = "functions.batch.handler.score_items_handler"
FINALIZE_HANDLER = "functions.batch.handler.finalize_handler"
SERVICE_NAME = "slimserve-batch"
DEFAULT_PARQUET_LAYER_DIR = REPO_ROOT / "layers" / "build" / "parquet"

INCOMING_PREFIX = "incoming/"
SCORED_PREFIX = "scored/"
REJECTED_PREFIX = "rejected/"
MANIFESTS_PREFIX = "manifests/"
RUNS_PREFIX = "runs/"

# State names in the synthesized ASL (tests and the local emulation look them up by these names).
MAP_STATE = "ScoreCsvChunks"
SCORE_CHUNK_STATE = "ScoreChunk"
FINALIZE_STATE = "WriteRunManifest"
MAP_RUN_LABEL = "ScoreChunks"

MIB = 1024 * 1024
GIB = 1024 * MIB
LAMBDA_MAX_TIMEOUT_SECONDS = 900
S3_MAX_OBJECT_BYTES = 5 * 1024 * GIB
# AWS: set an SQS event source's visibility timeout to at least six times the function timeout.
VISIBILITY_TIMEOUT_FACTOR = 6
DLQ_RETENTION = Duration.days(14)  # SQS maximum: the longest window to inspect and redrive failures
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class BatchScoringSettings:
    """The tunables of batch scoring (what a stack or CDK context chooses); resources come in props."""

    memory_size: int = 2048
    timeout_seconds: int = LAMBDA_MAX_TIMEOUT_SECONDS
    """Timeout of each batch function; the queue's visibility timeout is derived (6x), never set."""
    reserved_concurrency: int = 10
    """Reserved concurrency of the batch function, also the SQS event source's maximum concurrency."""
    batch_size: int = 1
    max_receive_count: int = 3
    """Receives of one message before it moves to the dead-letter queue."""
    max_file_bytes: int = 5 * GIB
    distributed_threshold_bytes: int = 256 * MIB
    """CSV files larger than this go to the Distributed Map instead of one function."""
    chunk_rows: int = 5000
    """Rows per Distributed Map child (MaxItemsPerBatch); Step Functions also caps a batch at 256 KiB."""
    map_max_concurrency: int = 20
    """Child executions at once; also the map function's reserved concurrency."""
    run_timeout_hours: int = 24
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH
    removal_policy: RemovalPolicy = RemovalPolicy.RETAIN
    """Scored files and manifests are the audit trail of a run: keep them when the stack goes."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting, before any resource is created."""
        _check_range("memory_size", self.memory_size, 128, 10_240)
        _check_range("timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS,
                      hint="Lambda's maximum")
        _check_range("reserved_concurrency", self.reserved_concurrency, 2, 1000,
                      hint="it is also the SQS event source's maximum concurrency, which allows 2 to 1000")
        _check_range("batch_size", self.batch_size, 1, 10,
                      hint="an SQS event source takes at most 10 messages without a batching window")
        _check_range("max_receive_count", self.max_receive_count, 1, 10)
        _check_range("max_file_bytes", self.max_file_bytes, 1, S3_MAX_OBJECT_BYTES, hint="S3's object size limit")
        _check_range("distributed_threshold_bytes", self.distributed_threshold_bytes, 1, None)
        if self.distributed_threshold_bytes >= self.max_file_bytes:
            raise ValueError(
                f"BatchScoringSettings.distributed_threshold_bytes ({self.distributed_threshold_bytes}) must be < "
                f"max_file_bytes ({self.max_file_bytes}): otherwise no accepted file ever reaches the Distributed Map")
        _check_range("chunk_rows", self.chunk_rows, 1, 100_000)
        _check_range("map_max_concurrency", self.map_max_concurrency, 1, 10_000,
                      hint="a Distributed Map runs at most 10000 children at once")
        _check_range("run_timeout_hours", self.run_timeout_hours, 1, 24 * 365)

    @property
    def visibility_timeout(self) -> Duration:
        return Duration.seconds(VISIBILITY_TIMEOUT_FACTOR * self.timeout_seconds)


@dataclass(frozen=True)
class BatchScoringProps:
    model_bucket: s3.IBucket
    model_prefix: str
    """Key prefix of one model bundle, e.g. "models/churn/3/"; the functions may read nothing else there."""
    layer: lambda_.ILayerVersion
    """The runtime layer the inference function uses (onnxruntime, numpy): one layer, one version."""
    access_log_bucket: s3.IBucket
    """Where the scoring bucket's server access logs go (the model store's log bucket)."""
    model_manifest_sha256: str | None = None
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    parquet_layer_dir: Path = DEFAULT_PARQUET_LAYER_DIR
    """Prebuilt parquet layer folder holding `python/pyarrow` (written by `make layer`); attached to the
    batch functions after `layer`."""
    settings: BatchScoringSettings = field(default_factory=BatchScoringSettings)

    def parquet_layer_asset_dir(self) -> Path:
        """The parquet layer folder, or a FileNotFoundError that says how to build it."""
        layer_dir = Path(self.parquet_layer_dir)
        if not (layer_dir / "python").is_dir():
            raise FileNotFoundError(
                f"Lambda layer not built: {layer_dir / 'python'} does not exist. Run `make layer` first "
                "(or pass parquet_layer_dir / `-c slimserve:parquetLayerDir=...` pointing at a folder holding "
                "python/).")
        return layer_dir

    def validate(self) -> None:
        if (not self.model_prefix or not self.model_prefix.endswith("/") or self.model_prefix.startswith("/")
                or "*" in self.model_prefix or "//" in self.model_prefix):
            raise ValueError(
                "BatchScoringProps.model_prefix must be a relative key prefix ending with '/' and without '*' "
                f"or '//', e.g. 'models/churn/3/', got {self.model_prefix!r}")
        if self.model_manifest_sha256 is not None and not _SHA256.match(self.model_manifest_sha256):
            raise ValueError("BatchScoringProps.model_manifest_sha256 must be 64 hex characters (a sha256 digest)")
        self.settings.validate()


def _check_range(name: str, value: float, low: float, high: float | None, hint: str = "") -> None:
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        why = f" ({hint})" if hint else ""
        raise ValueError(f"BatchScoringSettings.{name} must be {bounds}, got {value}{why}")


class _PrefixScopedCsvReader(sfn.S3CsvItemReader):
    """S3CsvItemReader whose read grant covers one key prefix; the stock reader grants `<bucket>/*`."""

    def __init__(self, bucket: s3.IBucket, key: str, readable_prefix: str) -> None:
        super().__init__(bucket=bucket, key=key, csv_headers=sfn.CsvHeaders.use_first_row())
        self._readable_objects = bucket.arn_for_objects(f"{readable_prefix}*")

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [iam.PolicyStatement(actions=["s3:GetObject"], resources=[self._readable_objects])]


class BatchScoring(Construct):
    """Scoring bucket, S3 → SQS (+DLQ) → batch function, the Distributed Map for big CSVs, and alarms."""

    def __init__(self, scope: Construct, construct_id: str, props: BatchScoringProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.settings = props.settings
        self.parquet_layer = self._parquet_layer(props.parquet_layer_asset_dir())
        self.bucket = self._scoring_bucket()
        self.dead_letter_queue = self._queue("DeadLetterQueue", retention_period=DLQ_RETENTION)
        self.queue = self._queue(
            "IncomingQueue",
            visibility_timeout=self.settings.visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=self.settings.max_receive_count,
                                                  queue=self.dead_letter_queue),
        )
        self.bucket.add_event_notification(s3.EventType.OBJECT_CREATED, s3n.SqsDestination(self.queue),
                                           s3.NotificationKeyFilter(prefix=INCOMING_PREFIX))

        self.map_function = self._function("ScoreChunk", MAP_HANDLER, self.settings.map_max_concurrency,
                                           "slimserve batch: score one Distributed Map chunk of rows")
        self._grant_model_read(self.map_function)
        self.bucket.grant_put(self.map_function, f"{RUNS_PREFIX}*")

        self.finalize_function = self._function("Finalize", FINALIZE_HANDLER, self.settings.reserved_concurrency,
                                                "slimserve batch: write the run manifest of a Distributed Map run")
        self._grant_model_read(self.finalize_function)  # the manifest names the model version it verified
        self._grant_run_parts_read(self.finalize_function)
        self.bucket.grant_put(self.finalize_function, f"{MANIFESTS_PREFIX}*")

        self.state_machine = self._state_machine()

        self.function = self._function("ScoreFile", HANDLER, self.settings.reserved_concurrency,
                                       "slimserve batch: score a file dropped under incoming/",
                                       extra_env={"STATE_MACHINE_ARN": self.state_machine.state_machine_arn})
        self._grant_model_read(self.function)
        for prefix in (INCOMING_PREFIX, MANIFESTS_PREFIX):
            self.bucket.grant_read(self.function, f"{prefix}*")
        for prefix in (SCORED_PREFIX, REJECTED_PREFIX, MANIFESTS_PREFIX):
            self.bucket.grant_put(self.function, f"{prefix}*")
        self.state_machine.grant_start_execution(self.function)
        self.function.add_event_source(event_sources.SqsEventSource(
            self.queue,
            batch_size=self.settings.batch_size,
            report_batch_item_failures=True,
            # Capped at the reserved concurrency so Lambda never throttles a receive (which counts toward the DLQ).
            max_concurrency=self.settings.reserved_concurrency,
        ))

        self._add_alarms()
        self._acknowledge_nag_findings()
        CfnOutput(self, "ScoringBucketName", value=self.bucket.bucket_name,
                  description=f"Drop files under {INCOMING_PREFIX} of this bucket to score them")
        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn,
                  description="Distributed Map scoring of files past the size threshold")

    # --- storage and queues -----------------------------------------------------------------------

    def _scoring_bucket(self) -> s3.Bucket:
        return s3.Bucket(
            self, "ScoringBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,  # the version id is part of a run's identity; an overwrite never loses a scored file
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=self.settings.removal_policy,
            server_access_logs_bucket=self.props.access_log_bucket,
            server_access_logs_prefix="scoring-bucket/",
            lifecycle_rules=[s3.LifecycleRule(
                id="abort-incomplete-multipart-uploads",
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )],
        )

    def _queue(self, construct_id: str, **kwargs: Any) -> sqs.Queue:
        # SQS-managed SSE: S3 can publish to it without a KMS key policy, unlike a customer managed key.
        return sqs.Queue(self, construct_id, encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True, **kwargs)

    # --- functions --------------------------------------------------------------------------------

    def _parquet_layer(self, layer_dir: Path) -> lambda_.LayerVersion:
        return lambda_.LayerVersion(
            self, "ParquetLayer",
            code=lambda_.Code.from_asset(str(layer_dir)),  # prebuilt folder: no bundling, no Docker
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
            compatible_architectures=[self.props.architecture],
            description="slimserve pyarrow for Parquet batch scoring, over the runtime layer "
                        "(prebuilt by `make layer`)",
        )

    def _function(self, name: str, handler: str, reserved_concurrency: int, description: str,
                  extra_env: dict[str, str] | None = None) -> lambda_.Function:
        log_group = logs.LogGroup(self, f"{name}FunctionLogs", retention=self.settings.log_retention,
                                  removal_policy=RemovalPolicy.RETAIN)
        # Own role instead of AWSLambdaBasicExecutionRole: logs may go to this function's group only.
        role = iam.Role(self, f"{name}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"{description}: own log group, granted prefixes only")
        log_group.grant_write(role)
        fn = lambda_.Function(
            self, f"{name}Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=self.props.architecture,
            handler=handler,
            code=function_code(REPO_ROOT),
            layers=[self.props.layer, self.parquet_layer],
            role=role,
            memory_size=self.settings.memory_size,
            timeout=Duration.seconds(self.settings.timeout_seconds),
            reserved_concurrent_executions=reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment={**self._environment(), **(extra_env or {})},
            description=description,
        )
        # Runtime layer first (numpy, onnxruntime), then pyarrow: Lambda extracts layers into /opt in the
        # listed order. CDK would list them sorted by construct path (cdk.json turns on
        # @aws-cdk/aws-lambda:recognizeLayerVersion), i.e. Batch/ParquetLayer first, so the order is pinned here.
        cfn = fn.node.default_child
        if not isinstance(cfn, lambda_.CfnFunction):
            raise TypeError(f"BatchScoring: {name}Function has no CfnFunction to pin its layer order on")
        cfn.add_property_override("Layers", [self.props.layer.layer_version_arn, self.parquet_layer.layer_version_arn])
        return fn

    def _environment(self) -> dict[str, str]:
        """Shared by all three functions; STATE_MACHINE_ARN is the batch function's alone (the state
        machine invokes the other two, so giving them its ARN would be a circular reference)."""
        env = {
            "MODEL_URI": f"s3://{self.props.model_bucket.bucket_name}/{self.props.model_prefix}",
            "SCORING_BUCKET": self.bucket.bucket_name,
            "MAX_FILE_BYTES": str(self.settings.max_file_bytes),
            "DISTRIBUTED_THRESHOLD_BYTES": str(self.settings.distributed_threshold_bytes),
            "CHUNK_ROWS": str(self.settings.chunk_rows),
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        if self.props.model_manifest_sha256:
            env["MODEL_MANIFEST_SHA256"] = self.props.model_manifest_sha256
        return env

    def _grant_model_read(self, fn: lambda_.Function) -> None:
        self.props.model_bucket.grant_read(fn, f"{self.props.model_prefix}*")

    def _grant_run_parts_read(self, fn: lambda_.Function) -> None:
        # Not grant_read: that would also allow listing every key in the bucket.
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[self.bucket.arn_for_objects(f"{RUNS_PREFIX}*")]))
        fn.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[self.bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{RUNS_PREFIX}*"]}}))

    # --- state machine ----------------------------------------------------------------------------

    def _state_machine(self) -> sfn.StateMachine:
        """Input: {"bucket", "key", "version_id", "etag", "run_id", "sequencer"} from the batch function."""
        score_chunk = tasks.LambdaInvoke(
            self, "ScoreChunkTask", state_name=SCORE_CHUNK_STATE,
            lambda_function=self.map_function,
            payload=sfn.TaskInput.from_json_path_at("$"),  # the child input: {"Items": [...], "BatchInput": {...}}
            retry_on_service_exceptions=True,
            # Children's outputs are collected by the Map state: keep each one tiny.
            result_selector={"StatusCode.$": "$.StatusCode"},
        )
        score_chunk.add_retry(errors=["Lambda.TooManyRequestsException"], interval=Duration.seconds(2),
                              max_attempts=8, backoff_rate=2, jitter_strategy=sfn.JitterType.FULL)
        chunks = sfn.DistributedMap(
            self, "ScoreCsvChunksMap", state_name=MAP_STATE,
            item_reader=_PrefixScopedCsvReader(self.bucket, sfn.JsonPath.string_at("$.key"), INCOMING_PREFIX),
            item_batcher=sfn.ItemBatcher(
                max_items_per_batch=self.settings.chunk_rows,
                # A child's input is capped at 256 KiB: wide rows end a batch before chunk_rows do.
                max_input_bytes_per_batch=240 * 1024,
                batch_input={"bucket.$": "$.bucket", "key.$": "$.key",
                             "version_id.$": "$.version_id", "run_id.$": "$.run_id"},
            ),
            max_concurrency=self.settings.map_max_concurrency,
            tolerated_failure_percentage=0,
            label=MAP_RUN_LABEL,
            result_path=sfn.JsonPath.DISCARD,  # parts are in S3 under runs/; the input passes on to finalize
        )
        chunks.item_processor(score_chunk)
        finalize = tasks.LambdaInvoke(
            self, "FinalizeTask", state_name=FINALIZE_STATE,
            lambda_function=self.finalize_function,
            payload=sfn.TaskInput.from_json_path_at("$"),  # the run's original input
            retry_on_service_exceptions=True,
            output_path="$.Payload",
        )
        return logged_state_machine(
            self, "StateMachine", chunks.next(finalize), log_retention=self.settings.log_retention,
            timeout_hours=self.settings.run_timeout_hours,
            role_description="slimserve batch state machine: reads incoming/ CSVs, invokes its two functions",
            comment="slimserve batch scoring of one big CSV: Distributed Map over row chunks, then the run manifest")

    # --- alarms -----------------------------------------------------------------------------------

    def _add_alarms(self) -> None:
        def above_zero(construct_id: str, metric: cloudwatch.Metric, description: str) -> cloudwatch.Alarm:
            return metric.create_alarm(
                self, construct_id, threshold=0, evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description)

        self.dead_letter_alarm = above_zero(
            "DeadLetterAlarm",
            self.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic=cloudwatch.Stats.MAXIMUM),
            f"Files under {INCOMING_PREFIX} failed {self.settings.max_receive_count} times and wait in the DLQ")
        self.function_errors_alarm = above_zero(
            "ScoreFileErrorsAlarm",
            self.function.metric_errors(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
            "The batch scoring function raised errors")
        self.executions_failed_alarm = above_zero(
            "RunsFailedAlarm",
            self.state_machine.metric_failed(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
            "A Distributed Map scoring run failed")
        self.executions_timed_out_alarm = above_zero(
            "RunsTimedOutAlarm",
            self.state_machine.metric_timed_out(period=Duration.minutes(5), statistic=cloudwatch.Stats.SUM),
            f"A Distributed Map scoring run exceeded {self.settings.run_timeout_hours} h")

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        bucket = arn_token(self.bucket)
        model = arn_token(self.props.model_bucket)
        functions = (self.function, self.map_function, self.finalize_function)
        for fn in functions:
            ack(fn, "AwsSolutions-L1", "python3.12 is the runtime the product and its onnxruntime layer are built for")
            ack(fn.role, "AwsSolutions-IAM5[Resource::*]", "X-Ray trace writes take no resource scope")
        for fn in functions:
            ack(fn.role, "AwsSolutions-IAM5[Action::s3:GetObject*]", "grant_read: read-only, granted prefixes only")
            ack(fn.role, "AwsSolutions-IAM5[Action::s3:GetBucket*]", "grant_read: bucket metadata of granted buckets")
            ack(fn.role, "AwsSolutions-IAM5[Action::s3:List*]", "grant_read: key listing of granted buckets")
            if model is not None:
                ack(fn.role, f"AwsSolutions-IAM5[Resource::{model}/{self.props.model_prefix}*]",
                     "one bundle prefix only")
        for fn in functions:
            ack(fn.role, "AwsSolutions-IAM5[Action::s3:Abort*]", "grant_put: abort uploads, granted prefixes only")
        prefixes = {self.function: (INCOMING_PREFIX, SCORED_PREFIX, REJECTED_PREFIX, MANIFESTS_PREFIX),
                    self.map_function: (RUNS_PREFIX,), self.finalize_function: (RUNS_PREFIX, MANIFESTS_PREFIX)}
        for fn, fn_prefixes in prefixes.items():
            for prefix in fn_prefixes:
                ack(fn.role, f"AwsSolutions-IAM5[Resource::{bucket}/{prefix}*]", f"scoring bucket {prefix} only")
        role = self.state_machine.role
        ack(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray and CloudWatch Logs delivery APIs take no resource scope")
        ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{INCOMING_PREFIX}*]", "item reader: incoming/ CSVs only")
        for fn in (self.map_function, self.finalize_function):
            ack(role, f"AwsSolutions-IAM5[Resource::{arn_token(fn)}:*]", "invoke: this function's versions only")
        self._acknowledge_distributed_map_policy()
        self._acknowledge_notifications_handler()

    def _acknowledge_distributed_map_policy(self) -> None:
        """CDK's grants for the Map Run's child executions, whose ids exist only at run time."""
        policy = self.state_machine.node.try_find_child("DistributedMapPolicy")
        cfn = self.state_machine.node.default_child
        if not isinstance(cfn, sfn.CfnStateMachine):
            raise TypeError("BatchScoring: the state machine has no CfnStateMachine to name in the acknowledgement")
        name = f'{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{Stack.of(cfn).resolve(cfn.logical_id)}"}}]}}]}}'
        executions = f"arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{name}"
        ack(policy, f"AwsSolutions-IAM5[Resource::{executions}:*]", "describe/stop this machine's own executions")
        ack(policy, f"AwsSolutions-IAM5[Resource::{executions}/{MAP_RUN_LABEL}:*]",
             "redrive this machine's own Map Run children")

    def _acknowledge_notifications_handler(self) -> None:
        """CDK's stack-wide helper that writes the bucket's notification configuration."""
        handler = next((c for c in Stack.of(self).node.children
                        if c.node.id.startswith("BucketNotificationsHandler")), None)
        role = handler.node.try_find_child("Role") if handler is not None else None
        basic = "arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        ack(role, f"AwsSolutions-IAM4[Policy::{basic}]", "CDK's notification helper, deploy time; role is fixed")


