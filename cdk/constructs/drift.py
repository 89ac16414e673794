"""Drift: the drift function on an EventBridge schedule, and the model's drift alarm that starts retraining.

The function reads the model's captured traffic (capture/<model>/), its bundles' manifests and its routing
item, nothing else, and writes nothing but metrics (`functions.drift`). Three signal alarms watch its
hourly metrics (DriftPsiMax, DriftKsMax, PredictionPsi; specs in `alarms.py`); they carry generated names,
so the retraining rule never hears them. One composite alarm, `slimserve-<model>-drift-any`
(`drift_alarm_prefix`), is in ALARM while any signal is: that is the alarm the retraining rule matches.

Why one shift starts one retraining: CloudWatch puts an event when an alarm changes state, not while it
stays in ALARM, and the composite changes once however many signals a shift raises. A signal needs two
breaching hours in a row, each over the whole window (24 h by default), so a burst moves it little; an
hour with too few rows publishes nothing and a missing datapoint keeps the state, so a quiet hour after
a new champion neither clears nor re-arms it. The retraining machine's release lock refuses a second run
while one holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from functions.common.layout import MODELS_PREFIX
from functions.common.settings import DriftSettings

from .alarms import DRIFT_PERIOD_SECONDS, DRIFT_SPECS
from .checks import check_range
from .function import FunctionProps, SlimserveFunction
from .model_store import ModelStore
from .monitoring import Monitoring
from .nag import ack
from .queues import managed_queue
from .retraining import drift_alarm_prefix
from .topology import DLQ_RETENTION_DAYS

HANDLER = "functions.drift.handler.lambda_handler"


def drift_alarm_name(model_name: str) -> str:
    """`slimserve-<model>-drift-any`: the composite alarm the retraining rule matches."""
    return f"{drift_alarm_prefix(model_name)}any"


@dataclass(frozen=True)
class DriftMonitorSettings:
    every_minutes: int = 60
    """How often the function runs; at most the alarms' period (an hour), so every period has a datapoint."""
    window_hours: int = 24
    min_samples: int = 1000
    """Fewer captured rows in the window: nothing published (at 1000, unshifted traffic never alarmed in 200 seeds)."""
    max_rows: int = 200_000
    per_feature_metrics: bool = True
    """DriftPsi, DriftKs and NullRateDelta per feature as custom metrics (`slimserve:driftPerFeatureMetrics`):
    one metric each, most of the monitoring bill. False: only the maxima and prediction PSI the alarms read
    are published; the per-feature figures stay in the run's log line and `slimserve monitor`."""
    memory_size: int = 1024
    timeout_seconds: int = 300
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH

    def validate(self) -> None:
        owner = "DriftMonitorSettings"
        check_range(owner, "every_minutes", self.every_minutes, 1, DRIFT_PERIOD_SECONDS // 60,
                    hint="the drift alarms' period: a longer gap leaves periods without data")
        DriftSettings(registry_table="t", model_name="m", model_bucket="b", window_hours=self.window_hours,
                      min_samples=self.min_samples, max_rows=self.max_rows)  # the function's own limits


@dataclass(frozen=True)
class DriftProps:
    model_name: str
    model_store: ModelStore
    table: dynamodb.ITable
    layer: lambda_.ILayerVersion
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: DriftMonitorSettings = field(default_factory=DriftMonitorSettings)

    def validate(self) -> None:
        if not self.model_name:
            raise ValueError("DriftProps.model_name must name the served model")
        self.settings.validate()


class Drift(Construct):
    def __init__(self, scope: Construct, construct_id: str, props: DriftProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        settings = props.settings
        self.dead_letters = managed_queue(self, "DeadLetters", senders="EventBridge and Lambda",
                                          retention_period=Duration.days(DLQ_RETENTION_DAYS))
        ack(self.dead_letters, "AwsSolutions-SQS3", "it is the dead-letter queue of the drift schedule")
        self.function = SlimserveFunction(self, "Function", FunctionProps(
            handler=HANDLER,
            description=f"slimserve drift: captured traffic of {props.model_name} against its feature profile",
            settings=DriftSettings(registry_table=props.table.table_name, model_name=props.model_name,
                                   model_bucket=props.model_store.bucket.bucket_name,
                                   window_hours=settings.window_hours, min_samples=settings.min_samples,
                                   max_rows=settings.max_rows, per_feature_metrics=settings.per_feature_metrics),
            layers=[props.layer],
            memory_size=settings.memory_size,
            timeout_seconds=settings.timeout_seconds,
            reserved_concurrency=1,  # one run at a time: two would publish the same hour twice
            log_retention=settings.log_retention,
            architecture=props.architecture,
            dead_letter_queue=self.dead_letters,  # EventBridge invokes it asynchronously
        ))
        self._grant()
        props.monitoring.drift_per_feature = settings.per_feature_metrics  # the dashboard draws them, or says where
        self.schedule_rule = events.Rule(
            self, "ScheduleRule", description=f"Drift of {props.model_name} every {settings.every_minutes} min",
            schedule=events.Schedule.rate(Duration.minutes(settings.every_minutes)),
            targets=[targets.LambdaFunction(self.function, dead_letter_queue=self.dead_letters, retry_attempts=2,
                                            max_event_age=Duration.hours(1))])
        self.signal_alarms: dict[str, cloudwatch.Alarm] = {
            signal: props.monitoring.alarm(
                self, f"{signal.title()}Alarm", spec, props.model_name,
                f"{props.model_name}: {spec.metric_name} above {spec.threshold:g}, {spec.datapoints} hours running",
                notify=False)  # the composite below notifies: one shift, one message
            for signal, spec in DRIFT_SPECS.items()}
        self.alarm = props.monitoring.any_of(
            self, "Alarm", list(self.signal_alarms.values()), drift_alarm_name(props.model_name),
            f"Inputs or predictions of {props.model_name} drifted from its profile: starts a retraining run")
        self.errors_alarm = props.monitoring.function_errors(
            self, "ErrorsAlarm", self.function, "The drift function raised errors (no drift figures this hour)")
        self.dead_letter_alarm = props.monitoring.dead_letters(
            self, "DeadLetterAlarm", self.dead_letters, "A scheduled drift run never ran")

    def _grant(self) -> None:
        """Read-only: the model's captures, its manifests and its routing item."""
        props, fn = self.props, self.function
        props.model_store.grant_read_capture(fn, props.model_name)
        fn.grant_read_objects(props.model_store.bucket, {
            f"{MODELS_PREFIX}{props.model_name}/*/manifest.json": "the model's manifests (profiles) only"})
        # The routing item only: GetItem on this model's partition key, nothing written, no other model.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadRouting", actions=["dynamodb:GetItem"], resources=[props.table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [props.model_name]}}))
