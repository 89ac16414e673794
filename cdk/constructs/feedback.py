"""Feedback: the labels table, the feedback functions (POST /feedback and files under feedback/), the key that
signs prediction ids, the review queue, and the live accuracy alarm.

Who may do what: the inference function reads the key and sends to the review queue; the feedback functions
read the key, read the served model's manifests, and put labels (never read, update or delete them).
POST /feedback is its own API resource with IAM auth, so a caller may be allowed to predict but not to label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from functions.common.layout import FEEDBACK_PREFIX, FEEDBACK_RESULTS_PREFIX, model_prefix, objects
from functions.common.settings import FeedbackSettings as FeedbackFunctionSettings
from functions.common.settings import InferenceSettings

from .alarms import LIVE_ACCURACY_THRESHOLD, live_accuracy_spec, live_mae_spec
from .checks import check_range
from .function import FunctionProps, SlimserveFunction
from .monitoring import Monitoring
from .nag import ack, ack_notifications_handler, checkov_skip
from .queues import managed_queue
from .serving_api import ServingApi

API_HANDLER = "functions.feedback.handler.lambda_handler"
FILES_HANDLER = "functions.feedback.handler.files_handler"
KEY_CHARS = 64  # the generated key: 64 letters and digits, about 380 bits


@dataclass(frozen=True)
class FeedbackSettings:
    """What a deployment tunes: the live accuracy alarm, the review queue's threshold, labels' lifetime, limits."""

    live_accuracy_threshold: float = LIVE_ACCURACY_THRESHOLD
    """LiveAccuracy (hourly average of labelled classifier rows) below this raises the alarm."""
    live_mae_threshold: float | None = None
    """LiveMae (hourly average absolute error of labelled regressor rows) above this raises an alarm; None: none."""
    review_confidence_below: float | None = None
    """Classifier rows whose top probability is below this go to the review queue; None: off."""
    label_ttl_days: int = 365
    reserved_concurrency: int = 5
    throttle_rate_limit: float = 10
    throttle_burst_limit: int = 20
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH

    def validate(self) -> None:
        owner = "FeedbackSettings"
        if not 0 < self.live_accuracy_threshold <= 1:
            raise ValueError(f"{owner}.live_accuracy_threshold must be in (0, 1], got {self.live_accuracy_threshold}")
        if self.live_mae_threshold is not None and self.live_mae_threshold <= 0:
            raise ValueError(f"{owner}.live_mae_threshold must be > 0, got {self.live_mae_threshold}")
        if self.review_confidence_below is not None and not 0 < self.review_confidence_below <= 1:
            raise ValueError(f"{owner}.review_confidence_below must be in (0, 1], got {self.review_confidence_below}")
        check_range(owner, "label_ttl_days", self.label_ttl_days, 1, None)
        check_range(owner, "reserved_concurrency", self.reserved_concurrency, 1, None)
        if self.throttle_rate_limit <= 0 or self.throttle_burst_limit < self.throttle_rate_limit:
            raise ValueError(f"{owner}.throttle_rate_limit must be > 0 and throttle_burst_limit >= it")


@dataclass(frozen=True)
class FeedbackProps:
    model_name: str
    model_bucket: s3.IBucket
    serving: ServingApi
    """The inference function signs ids with the key; POST /feedback joins its REST API."""
    layer: lambda_.ILayerVersion
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: FeedbackSettings = field(default_factory=FeedbackSettings)

    def validate(self) -> None:
        self.settings.validate()


class Feedback(Construct):
    def __init__(self, scope: Construct, construct_id: str, props: FeedbackProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.key = secretsmanager.Secret(
            self, "PredictionIdKey", description="Signs prediction ids (HMAC-SHA256): read by inference and feedback",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=KEY_CHARS,
                                                                        exclude_punctuation=True))
        self.table = dynamodb.Table(
            self, "Table", partition_key=dynamodb.Attribute(name="prediction_id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST, encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            time_to_live_attribute="expires_at", deletion_protection=True, removal_policy=RemovalPolicy.RETAIN)
        self.review_dead_letters = self._queue("ReviewDeadLetters", retention_period=Duration.days(14))
        self.review_queue = self._queue(
            "ReviewQueue", retention_period=Duration.days(14),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.review_dead_letters))
        self.files_dead_letters = self._queue("FilesDeadLetters", retention_period=Duration.days(14))
        self.function = self._function("Function", API_HANDLER, "slimserve feedback: POST /feedback labels",
                                       invoked_by="API Gateway (the REST API's Lambda proxy integration)")
        self.files_function = self._function("FilesFunction", FILES_HANDLER,
                                             "slimserve feedback: label files under feedback/",
                                             dead_letter_queue=self.files_dead_letters)
        self._grant()
        self._wire_inference()
        props.model_bucket.add_event_notification(s3.EventType.OBJECT_CREATED,
                                                  s3n.LambdaDestination(self.files_function),
                                                  s3.NotificationKeyFilter(prefix=FEEDBACK_PREFIX))
        # The function, not an alias: alias `live` is there for inference's CodeDeploy canary, which feedback lacks.
        self.method = props.serving.add_route("feedback", "POST", self.function,
                                              rate_limit=props.settings.throttle_rate_limit,
                                              burst_limit=props.settings.throttle_burst_limit)
        self.alarms = self._alarms()
        self._acknowledge_nag_findings()
        CfnOutput(self, "TableName", value=self.table.table_name, description="Labels posted back, one per id")
        CfnOutput(self, "ReviewQueueUrl", value=self.review_queue.queue_url,
                  description="Prediction ids (and rows where capture allows) below the review threshold")

    def _queue(self, construct_id: str, **kwargs: object) -> sqs.Queue:
        return managed_queue(self, construct_id, senders="the senders (inference, Lambda's failed invocations)",
                             **kwargs)

    def _function(self, construct_id: str, handler: str, description: str, *, invoked_by: str | None = None,
                  dead_letter_queue: sqs.IQueue | None = None) -> SlimserveFunction:
        props = self.props
        return SlimserveFunction(self, construct_id, FunctionProps(
            handler=handler, description=description,
            settings=FeedbackFunctionSettings(prediction_id_secret_arn=self.key.secret_arn,
                                      feedback_table=self.table.table_name,
                                      model_bucket=props.model_bucket.bucket_name, model_name=props.model_name,
                                      label_ttl_days=props.settings.label_ttl_days),
            layers=[props.layer], memory_size=512, timeout_seconds=10 if invoked_by else 300,
            reserved_concurrency=props.settings.reserved_concurrency, log_retention=props.settings.log_retention,
            architecture=props.architecture, invoked_by=invoked_by, dead_letter_queue=dead_letter_queue))

    def _grant(self) -> None:
        bucket, manifests = self.props.model_bucket, f"{model_prefix(self.props.model_name, '*')}/manifest.json"
        for fn in (self.function, self.files_function):
            self.key.grant_read(fn)
            self.table.grant(fn, "dynamodb:PutItem")  # conditional puts only: no read, update or delete
            fn.grant_read_objects(bucket, {manifests: "the served model's manifests (their classes) only"})
        self.files_function.grant_read_objects(bucket, {objects(FEEDBACK_PREFIX): "label files only"})
        self.files_function.grant_put_objects(bucket, {objects(FEEDBACK_RESULTS_PREFIX): "file outcomes only"})

    def _wire_inference(self) -> None:
        """The inference function signs ids with the key and sends low-confidence rows for review."""
        inference = self.props.serving.function
        self.key.grant_read(inference)
        self.review_queue.grant_send_messages(inference)
        settings = {"prediction_id_secret_arn": self.key.secret_arn, "review_queue_url": self.review_queue.queue_url}
        if self.props.settings.review_confidence_below is not None:
            settings["review_confidence_below"] = str(self.props.settings.review_confidence_below)
        for name, value in settings.items():
            assert name in InferenceSettings.model_fields  # the names the handler reads back
            inference.add_environment(name.upper(), value)

    def _alarms(self) -> list[cloudwatch.Alarm]:
        props, monitoring, tuned = self.props, self.props.monitoring, self.props.settings
        alarms = [monitoring.alarm(self, "LiveAccuracyAlarm", live_accuracy_spec(tuned.live_accuracy_threshold),
                                   props.model_name, f"Labelled predictions of {props.model_name}: hourly accuracy "
                                                     f"below {tuned.live_accuracy_threshold:g}"),
                  monitoring.function_errors(self, "ErrorsAlarm", self.function, "The feedback function failed"),
                  monitoring.function_errors(self, "FilesErrorsAlarm", self.files_function,
                                             "A feedback file could not be recorded"),
                  monitoring.dead_letters(self, "FilesDeadLetterAlarm", self.files_dead_letters,
                                          "A feedback file was never recorded"),
                  monitoring.dead_letters(self, "ReviewDeadLetterAlarm", self.review_dead_letters,
                                          "A review message was received five times and never deleted")]
        if props.settings.live_mae_threshold is not None:
            alarms.append(monitoring.alarm(self, "LiveMaeAlarm", live_mae_spec(props.settings.live_mae_threshold),
                                           props.model_name, f"Labelled predictions of {props.model_name}: hourly "
                                                             f"MAE above {props.settings.live_mae_threshold:g}"))
        return alarms

    def _acknowledge_nag_findings(self) -> None:
        ack(self.key, "AwsSolutions-SMG4", "rotating the key would refuse every prediction id already handed out")
        checkov_skip(self.table, "CKV_AWS_119", "KMS-encrypted under the AWS managed key; only PutItem is granted, "
                                                "to the two feedback roles")
        checkov_skip(self.key, "CKV_AWS_149", "Secrets Manager's AWS-managed key; only the two roles granted read it")
        ack(self.review_dead_letters, "AwsSolutions-SQS3", "it is the review queue's dead-letter queue")
        ack(self.files_dead_letters, "AwsSolutions-SQS3", "it is the feedback files function's dead-letter queue")
        ack_notifications_handler(self)

