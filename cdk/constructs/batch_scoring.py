"""BatchScoring: S3 `incoming/` → SQS (+DLQ) → batch Lambda; big CSVs → Step Functions Distributed Map.

Bucket layout (the contract with `functions/batch`): the batch function reads `incoming/*`, writes
`scored/*` and `rejected/*`, and reads/writes run manifests under `manifests/*`; a Distributed Map
run writes its parts under `runs/*` and its finalize step writes the single run manifest.

Layers: the three batch functions get the runtime layer (shared with inference) and then the parquet
layer (pyarrow), both made by the stack's `Layers`; Lambda merges both into /opt/python. The inference
function never gets the parquet layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
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

from functions.batch import MAP_BATCH_INPUT
from functions.common.layout import (
    INCOMING_PREFIX,
    MANIFESTS_PREFIX,
    REJECTED_PREFIX,
    RUNS_PREFIX,
    SCORED_PREFIX,
    objects,
)
from functions.common.settings import EPHEMERAL_MIN_MIB, BatchSettings

from .buckets import AccessLogs, abort_incomplete_uploads, secure_bucket
from .checks import check_range
from .function import LAMBDA_MAX_TIMEOUT_SECONDS, FunctionProps, SlimserveFunction
from .monitoring import Monitoring
from .nag import ack, ack_notifications_handler, arn_token
from .queues import managed_queue
from .state_machines import logged_state_machine
from .topology import OBJECT_CREATED, BatchTopology

HANDLER = "functions.batch.handler.lambda_handler"
MAP_HANDLER = "functions.batch.handler.score_items_handler"
FINALIZE_HANDLER = "functions.batch.handler.finalize_handler"

# State names in the synthesized ASL (tests and the local emulation look them up by these names).
MAP_STATE = "ScoreCsvChunks"
SCORE_CHUNK_STATE = "ScoreChunk"
FINALIZE_STATE = "WriteRunManifest"
MAP_RUN_LABEL = "ScoreChunks"

MIB = 1024 * 1024
GIB = 1024 * MIB
S3_MAX_OBJECT_BYTES = 5 * 1024 * GIB
_SETTINGS, _PROPS = "BatchScoringSettings", "BatchScoringProps"


@dataclass(frozen=True)
class BatchScoringSettings:
    """The tunables of batch scoring (what a stack or CDK context chooses); resources come in props."""

    memory_size: int = 2048
    timeout_seconds: int = LAMBDA_MAX_TIMEOUT_SECONDS
    """Timeout of each batch function; the queue's visibility timeout is derived (6x), never set."""
    reserved_concurrency: int = 10
    """Reserved concurrency of the batch function, also the SQS event source's maximum concurrency."""
    batch_size: int = 1
    max_receive_count: int = BatchTopology.max_receive_count
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
        check_range(_SETTINGS, "memory_size", self.memory_size, 128, 10_240)
        check_range(_SETTINGS, "timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS,
                    hint="Lambda's maximum")
        check_range(_SETTINGS, "reserved_concurrency", self.reserved_concurrency, 2, 1000,
                    hint="it is also the SQS event source's maximum concurrency, which allows 2 to 1000")
        check_range(_SETTINGS, "batch_size", self.batch_size, 1, 10,
                    hint="an SQS event source takes at most 10 messages without a batching window")
        check_range(_SETTINGS, "max_receive_count", self.max_receive_count, 1, 10)
        check_range(_SETTINGS, "max_file_bytes", self.max_file_bytes, 1, S3_MAX_OBJECT_BYTES,
                    hint="S3's object size limit")
        check_range(_SETTINGS, "distributed_threshold_bytes", self.distributed_threshold_bytes, 1, None)
        if self.distributed_threshold_bytes >= self.max_file_bytes:
            raise ValueError(
                f"BatchScoringSettings.distributed_threshold_bytes ({self.distributed_threshold_bytes}) must be < "
                f"max_file_bytes ({self.max_file_bytes}): otherwise no accepted file ever reaches the Distributed Map")
        check_range(_SETTINGS, "chunk_rows", self.chunk_rows, 1, 100_000)
        check_range(_SETTINGS, "map_max_concurrency", self.map_max_concurrency, 1, 10_000,
                    hint="a Distributed Map runs at most 10000 children at once")
        check_range(_SETTINGS, "run_timeout_hours", self.run_timeout_hours, 1, 24 * 365)

    @property
    def topology(self) -> BatchTopology:
        """The wiring these settings make: what the construct synthesizes and the local emulation creates."""
        return BatchTopology(function_timeout_seconds=self.timeout_seconds, max_receive_count=self.max_receive_count)

    @property
    def visibility_timeout(self) -> Duration:
        return Duration.seconds(self.topology.visibility_timeout_seconds)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class BatchScoringProps:
    model_bucket: s3.IBucket
    model_name: str
    """The model scored: its champion in the registry, its bundles under `models/<model_name>/` (nothing else)."""
    registry_table: dynamodb.ITable
    """The model registry: the functions read this model's routing item only."""
    layer: lambda_.ILayerVersion
    """The runtime layer the inference function uses (onnxruntime, numpy): one layer, one version."""
    parquet_layer: lambda_.ILayerVersion
    """pyarrow, for Parquet input and output; attached to the batch functions after `layer`."""
    access_log_bucket: s3.IBucket
    """Where the scoring bucket's server access logs go (the model store's log bucket)."""
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: BatchScoringSettings = field(default_factory=BatchScoringSettings)

    def validate(self) -> None:
        if not _MODEL_NAME.match(self.model_name):
            raise ValueError(f"{_PROPS}.model_name must match {_MODEL_NAME.pattern}, got {self.model_name!r}")
        self.settings.validate()


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
        self.bucket = secure_bucket(
            # Versioned: the version id is part of a run's identity; an overwrite never loses a scored file.
            self, "ScoringBucket", removal_policy=self.settings.removal_policy,
            access_logs=AccessLogs(props.access_log_bucket, "scoring-bucket/"),
            lifecycle_rules=[abort_incomplete_uploads()])
        topology = self.settings.topology
        self.dead_letter_queue = self._queue("DeadLetterQueue",
                                             retention_period=Duration.days(topology.dlq_retention_days))
        self.queue = self._queue(
            "IncomingQueue",
            visibility_timeout=Duration.seconds(topology.visibility_timeout_seconds),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=topology.max_receive_count,
                                                  queue=self.dead_letter_queue),
        )
        events = {OBJECT_CREATED: s3.EventType.OBJECT_CREATED}
        for event in topology.events:
            self.bucket.add_event_notification(events[event], s3n.SqsDestination(self.queue),
                                               s3.NotificationKeyFilter(prefix=topology.incoming_prefix))

        self.map_function = self._function("ScoreChunk", MAP_HANDLER, self.settings.map_max_concurrency,
                                           "slimserve batch: score one Distributed Map chunk of rows",
                                           invoked_by="the Distributed Map (its retries, then a failed run)")
        self.map_function.grant_put_objects(self.bucket, {objects(RUNS_PREFIX): "scoring bucket runs/ only"})

        self.finalize_function = self._function("Finalize", FINALIZE_HANDLER, self.settings.reserved_concurrency,
                                                "slimserve batch: write the run manifest of a Distributed Map run",
                                                invoked_by="the batch state machine (its retries, then a failed run)")
        self._grant_run_parts_read(self.finalize_function)
        self.finalize_function.grant_put_objects(self.bucket,
                                                 {objects(MANIFESTS_PREFIX): "scoring bucket manifests/ only"})

        self.state_machine = self._state_machine()

        # Only this function spools whole files (Parquet) to /tmp: it alone gets /tmp sized for one.
        self.function = self._function("ScoreFile", HANDLER, self.settings.reserved_concurrency,
                                       "slimserve batch: score a file dropped under incoming/",
                                       state_machine_arn=self.state_machine.state_machine_arn, spools_files=True,
                                       invoked_by="the SQS event source (redelivery, then the queue's DLQ)")
        # The announced version of an incoming file is read by its version id.
        self.function.grant_read_objects(self.bucket,
                                         {objects(INCOMING_PREFIX): f"scoring bucket {INCOMING_PREFIX} only"},
                                         versions=True)
        self.function.grant_read_objects(self.bucket,
                                         {objects(MANIFESTS_PREFIX): f"scoring bucket {MANIFESTS_PREFIX} only"})
        # Unconditioned: "no manifest yet" (a file not scored) must read as NoSuchKey, not AccessDenied.
        self.function.grant_list_bucket(self.bucket)
        self.function.grant_put_objects(self.bucket, {
            objects(prefix): f"scoring bucket {prefix} only"
            for prefix in (SCORED_PREFIX, REJECTED_PREFIX, MANIFESTS_PREFIX)})
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

    def _queue(self, construct_id: str, **kwargs: Any) -> sqs.Queue:
        return managed_queue(self, construct_id, senders="S3 notifications", **kwargs)

    # --- functions --------------------------------------------------------------------------------

    def _function(self, name: str, handler: str, reserved_concurrency: int, description: str, *, invoked_by: str,
                  state_machine_arn: str | None = None, spools_files: bool = False) -> SlimserveFunction:
        """The three functions share their settings; only the batch function gets the state machine's ARN
        (the machine invokes the other two, so giving them its ARN would be a circular reference)."""
        settings = BatchSettings(
            model_name=self.props.model_name,
            registry_table=self.props.registry_table.table_name,
            max_file_bytes=self.settings.max_file_bytes,
            distributed_threshold_bytes=self.settings.distributed_threshold_bytes,
            chunk_rows=self.settings.chunk_rows,
            state_machine_arn=state_machine_arn,
        )
        fn = SlimserveFunction(self, f"{name}Function", FunctionProps(
            handler=handler,
            description=description,
            settings=settings,
            layers=[self.props.layer, self.props.parquet_layer],
            memory_size=self.settings.memory_size,
            timeout_seconds=self.settings.timeout_seconds,
            reserved_concurrency=reserved_concurrency,
            log_retention=self.settings.log_retention,
            architecture=self.props.architecture,
            ephemeral_storage_mib=settings.ephemeral_storage if spools_files else EPHEMERAL_MIN_MIB,
            invoked_by=invoked_by,
        ))
        # Every batch function reads bundles of its model only: the champion, or the one a map run started with.
        fn.grant_read_objects(self.props.model_bucket,
                              {f"models/{self.props.model_name}/*": "the scored model's versions only"})
        # The routing item only: GetItem on this model's partition key, nothing written, no other model.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadRouting", actions=["dynamodb:GetItem"], resources=[self.props.registry_table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [self.props.model_name]}}))
        return fn

    def _grant_run_parts_read(self, fn: SlimserveFunction) -> None:
        # It lists a run's parts under runs/ and reads only keys it listed: no other listing.
        fn.grant_read_objects(self.bucket, {objects(RUNS_PREFIX): "scoring bucket runs/ only"})
        fn.grant_list_bucket(self.bucket, [objects(RUNS_PREFIX)])

    # --- state machine ----------------------------------------------------------------------------

    def _state_machine(self) -> sfn.StateMachine:
        """Input: {"bucket", "key", "version_id", "etag", "run_id", "sequencer", "model_uri",
        "model_manifest_sha256", "model_role"} from the batch function: the bundle is fixed for the whole run."""
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
                # Every chunk gets the run's bundle (MAP_BATCH_INPUT): a promotion mid-run cannot mix versions.
                batch_input={f"{name}.$": f"$.{name}" for name in MAP_BATCH_INPUT},
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
        monitoring = self.props.monitoring
        self.dead_letter_alarm = monitoring.dead_letters(
            self, "DeadLetterAlarm", self.dead_letter_queue,
            f"Files under {INCOMING_PREFIX} failed {self.settings.max_receive_count} times and wait in the DLQ")
        self.function_errors_alarm = monitoring.function_errors(
            self, "ScoreFileErrorsAlarm", self.function, "The batch scoring function raised errors")
        self.executions_failed_alarm = monitoring.runs_failed(
            self, "RunsFailedAlarm", self.state_machine, "A Distributed Map scoring run failed")
        self.executions_timed_out_alarm = monitoring.runs_timed_out(
            self, "RunsTimedOutAlarm", self.state_machine,
            f"A Distributed Map scoring run exceeded {self.settings.run_timeout_hours} h")

    # --- cdk-nag ----------------------------------------------------------------------------------

    def _acknowledge_nag_findings(self) -> None:
        """Each finding acknowledged on the narrowest construct, reason on the same line."""
        bucket = arn_token(self.bucket)
        role = self.state_machine.role
        ack(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray and CloudWatch Logs delivery APIs take no resource scope")
        ack(role, f"AwsSolutions-IAM5[Resource::{bucket}/{INCOMING_PREFIX}*]", "item reader: incoming/ CSVs only")
        for fn in (self.map_function, self.finalize_function):
            ack(role, f"AwsSolutions-IAM5[Resource::{arn_token(fn)}:*]", "invoke: this function's versions only")
        self._acknowledge_distributed_map_policy()
        ack_notifications_handler(self)

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



