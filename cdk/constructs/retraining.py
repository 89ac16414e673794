"""Retraining: train a new version, import it, let the gate judge it and release it by canary, as one
Step Functions state machine.

State input (by hand; the schedule and the drift rule send the same fields, from the props):

    {"model": "churn", "run_id": "20250601120000-0042", "data_prefix": "churn/2025-06",
     "hyperparameters": {"target": "churn"}, "holdout_uri": "s3://<model bucket>/holdout/churn.csv"}

Steps: check the input -> take the model's release lock (owner: the execution; it lasts as long as the
machine's own timeout, the training run's plus the release's, so it cannot expire under a live run) -> the
training machine's
four SageMaker jobs -> import the export job's `model.tar.gz` into `models/<model>/<version>/` (a candidate)
-> the validation gate -> the release machine's states (admit, canary stages, promote or roll back), built
by the same `ReleaseSteps` -> release the lock. Any failure notifies the Release topic and fails the run
under the error's name; the champion keeps serving, and the lock is released whenever it was taken.

Started by hand, by an EventBridge schedule (off unless `RetrainingSettings.schedule` is set), and by alarms
named `slimserve-<model>-drift-*` entering ALARM (`drift_alarm_prefix`): monitoring names its drift alarms
so to plug in. Triggered runs use the execution's event id as run id.

What a triggered run reads (the stack's standing settings; context `slimserve:retrainSchedule`,
`retrainTarget`, `retrainDataPrefix` in `cdk/app.py`): the data bucket's `<data_prefix>/train/`,
`validation/` and `holdout/` (one .csv or .parquet each; `<model>/latest` unless set) and the gate's holdout
`holdout/<model>.csv` in the model bucket. The jobs' code needs nothing uploaded: it is the source bundle
the stack deploys (`Training.source`), so a run works on a freshly deployed stack. The jobs name the bundle
after the stack's model (hyperparameter `name`), which the import requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from functions.common.layout import HOLDOUT_PREFIX, MODELS_PREFIX, RUNS_PREFIX
from functions.common.settings import ReleaseSettings

from .function import FunctionProps, SlimserveFunction
from .model_registry import ValidationGate
from .monitoring import Monitoring, model_alarm_prefix
from .nag import ack, arn_token
from .queues import managed_queue
from .release import ALARM_STATE_CHANGE, LOCK_STATE, Release, ReleaseSteps
from .state_machines import logged_state_machine
from .topology import DLQ_RETENTION_DAYS
from .training import Training, _as_nag_prints

# State names in the synthesized ASL (tests look them up by these names).
CHECK_INPUT_STATE = "CheckRetrainingInput"
INPUT_REFUSED_STATE = "RetrainingInputRefused"
INPUT_REFUSED_ERROR = "slimserve.RetrainingInputRefused"
IMPORT_STATE, GATE_STATE, NOTIFY_STATE = "ImportBundle", "JudgeCandidate", "NotifyFailure"
IMPORT_HANDLER = "functions.release.handler.import_handler"
IMPORT_REGISTRY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem")


def drift_alarm_prefix(model_name: str) -> str:
    """`slimserve-<model>-drift-`: a drift alarm named so (e.g. `-drift-psi`) starts a retraining run."""
    return model_alarm_prefix(model_name, "drift")


@dataclass(frozen=True)
class RetrainingSettings:
    """What triggered runs train on, and when the schedule starts one."""

    schedule: str | None = None
    """An EventBridge schedule expression ("rate(7 days)", "cron(0 3 ? * MON *)"); None: no scheduled runs."""
    data_prefix: str | None = None
    """Training data of triggered runs in the data bucket; None: `<model>/latest`."""
    holdout_key: str | None = None
    """The gate's holdout of triggered runs in the model bucket; None: `holdout/<model>.csv`."""
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    """The run hyperparameters of triggered runs (e.g. {"target": "churn"})."""
    import_memory_size: int = 1024
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH

    def validate(self) -> None:
        owner = "RetrainingSettings"
        if self.schedule is not None and not self.schedule.startswith(("rate(", "cron(")):
            raise ValueError(f"{owner}.schedule must be rate(...) or cron(...), got {self.schedule!r}")
        if self.data_prefix is not None and (not self.data_prefix or self.data_prefix.strip("/") != self.data_prefix):
            raise ValueError(f"{owner}.data_prefix must be a key prefix without a leading or trailing '/', "
                             f"got {self.data_prefix!r}")
        if self.holdout_key is not None and not self.holdout_key.startswith(HOLDOUT_PREFIX):
            raise ValueError(f"{owner}.holdout_key must be under {HOLDOUT_PREFIX} (the gate reads only there), "
                             f"got {self.holdout_key!r}")
        if not 128 <= self.import_memory_size <= 10_240:
            raise ValueError(f"{owner}.import_memory_size must be between 128 and 10240, got {self.import_memory_size}")


@dataclass(frozen=True)
class RetrainingProps:
    model_name: str
    training: Training
    validation: ValidationGate
    release: Release
    model_bucket: s3.IBucket
    table: dynamodb.ITable
    layer: lambda_.ILayerVersion
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: RetrainingSettings = field(default_factory=RetrainingSettings)

    def validate(self) -> None:
        self.settings.validate()
        if self.training.settings.hyperparameters.get("name", self.model_name) != self.model_name:
            raise ValueError(f"TrainingSettings.hyperparameters['name'] must be the model's name "
                             f"{self.model_name!r} (the import refuses another model's bundle)")
        missing = [k for k in self.training.settings.run_hyperparameters if k not in self.settings.hyperparameters]
        if self.settings.schedule is not None and missing:
            raise ValueError(f"RetrainingSettings.hyperparameters needs {missing} for scheduled runs")


class Retraining(Construct):
    """The import function, the retraining state machine and its triggers (schedule, drift alarms)."""

    def __init__(self, scope: Construct, construct_id: str, props: RetrainingProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.import_function = self._import_function()
        self.timeout_hours = props.training.settings.run_timeout_hours + props.release.settings.run_timeout_hours
        self.lock_ttl_seconds = self.timeout_hours * 3600
        """The run's release lock outlives the run: a run cannot last longer than the machine's timeout."""
        self.state_machine = logged_state_machine(
            self, "StateMachine", self._definition(),
            log_retention=props.settings.log_retention,
            timeout_hours=self.timeout_hours,
            role_description="slimserve retraining state machine: training jobs, import, gate, release steps",
            comment="slimserve retraining: lock, train, import, gate, canary release, unlock")
        self.dead_letters = managed_queue(self, "TriggerDeadLetters", senders="EventBridge",
                                          retention_period=Duration.days(DLQ_RETENTION_DAYS))
        self.drift_rule = events.Rule(
            self, "DriftAlarmRule", description=f"A drift alarm of {props.model_name} starts a retraining run",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"], detail_type=[ALARM_STATE_CHANGE],
                detail={"alarmName": events.Match.prefix(drift_alarm_prefix(props.model_name)),
                        "state": {"value": ["ALARM"]}}),
            targets=[self._target()])
        self.schedule_rule: events.Rule | None = None
        if props.settings.schedule is not None:
            self.schedule_rule = events.Rule(
                self, "ScheduleRule", description=f"Scheduled retraining of {props.model_name}",
                schedule=events.Schedule.expression(props.settings.schedule), targets=[self._target()])
        self.runs_failed_alarm = props.monitoring.runs_failed(
            self, "RunsFailedAlarm", self.state_machine, "A retraining run failed (the champion kept serving)")
        self.import_errors_alarm = props.monitoring.function_errors(
            self, "ImportErrorsAlarm", self.import_function, "The bundle import raised errors")
        self.dead_letter_alarm = props.monitoring.dead_letters(
            self, "TriggerDeadLetterAlarm", self.dead_letters, "A retraining trigger never started a run")
        self._acknowledge_nag_findings()
        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn,
                  description='Start with {"model", "run_id", "data_prefix", "hyperparameters", "holdout_uri"}')

    def triggered_input(self) -> dict[str, Any]:
        """The state input of a scheduled or drift-started run (the run id is the event's id)."""
        props, model = self.props, self.props.model_name
        return {"model": model, "run_id": events.EventField.event_id,
                "data_prefix": props.settings.data_prefix or f"{model}/latest",
                "hyperparameters": dict(props.settings.hyperparameters),
                "holdout_uri": f"s3://{props.model_bucket.bucket_name}/"
                               f"{props.settings.holdout_key or f'{HOLDOUT_PREFIX}{model}.csv'}"}

    def _target(self) -> targets.SfnStateMachine:
        return targets.SfnStateMachine(self.state_machine, input=events.RuleTargetInput.from_object(
            self.triggered_input()), dead_letter_queue=self.dead_letters, retry_attempts=4,
            max_event_age=Duration.hours(1))

    def _import_function(self) -> SlimserveFunction:
        """The release function's code with its own role: reads runs/ of the artifacts bucket, writes this
        model's bundles, registers candidates; it never moves routing or the champion."""
        props = self.props
        fn = SlimserveFunction(self, "ImportFunction", FunctionProps(
            handler=IMPORT_HANDLER,
            description="slimserve retraining: import the export job's bundle as a candidate",
            settings=ReleaseSettings(registry_table=props.table.table_name,
                                     notify_topic_arn=props.release.topic.topic_arn),
            layers=[props.layer],
            memory_size=props.settings.import_memory_size,
            timeout_seconds=300,
            reserved_concurrency=1,
            log_retention=props.settings.log_retention,
            architecture=props.architecture,
            invoked_by="the retraining state machine",
        ))
        fn.grant_read_objects(props.training.artifacts_bucket,
                              {f"{RUNS_PREFIX}*": "the export job's model.tar.gz, named by the run at run time"})
        fn.grant_put_objects(props.model_bucket, {f"{MODELS_PREFIX}{props.model_name}/*":
                                                  "this model's bundles, versioned by the trained manifest"})
        props.table.grant(fn, *IMPORT_REGISTRY_ACTIONS)
        return fn

    def _definition(self) -> sfn.IChainable:
        props = self.props
        steps_scope, jobs_scope = Construct(self, "Steps"), Construct(self, "Jobs")
        notify = tasks.SnsPublish(
            steps_scope, NOTIFY_STATE, state_name=NOTIFY_STATE, topic=props.release.topic,
            message=sfn.TaskInput.from_object({
                "event": "retraining_failed", "model": sfn.JsonPath.string_at("$.model"),
                "run_id": sfn.JsonPath.string_at("$.run_id"), "error": sfn.JsonPath.string_at("$.error.Error"),
                "cause": sfn.JsonPath.string_at("$.error.Cause"), "champion": "unchanged"}),
            result_path="$.notified", comment="a failed run tells the release topic; the champion keeps serving")
        steps = ReleaseSteps(steps_scope, props.release, entry=False, version_path="$.imported.version",
                             on_error=notify)
        notify.add_catch(steps.failed, result_path="$.notify_error")
        lock = steps.invoke(LOCK_STATE, {"action": "lock", "owner": sfn.JsonPath.execution_id,
                                         "ttl_seconds": self.lock_ttl_seconds, "may_be_new": True}, "$.lock")
        lock.add_catch(notify, result_path="$.error")  # not ours: nothing to unlock
        chain: sfn.IChainable = lock
        last: sfn.INextable = lock
        for job in props.training.training_tasks(jobs_scope, {"name": props.model_name}):
            job.add_catch(steps.unlock, result_path="$.error")
            last.next(job)
            last = job
        imported = tasks.LambdaInvoke(
            steps_scope, IMPORT_STATE, state_name=IMPORT_STATE, lambda_function=self.import_function,
            payload=sfn.TaskInput.from_object({
                "action": "import_bundle", "model": sfn.JsonPath.string_at("$.model"),
                "artifact_uri": props.training.export_artifact(),
                "model_bucket": props.model_bucket.bucket_name}),
            payload_response_only=True, result_path="$.imported", comment="export's model.tar.gz -> a candidate")
        imported.add_catch(steps.unlock, result_path="$.error")
        gate = tasks.LambdaInvoke(
            steps_scope, GATE_STATE, state_name=GATE_STATE, lambda_function=props.validation.function,
            payload=sfn.TaskInput.from_object({"candidate_uri": sfn.JsonPath.string_at("$.imported.bundle_uri"),
                                               "holdout_uri": sfn.JsonPath.string_at("$.holdout_uri")}),
            payload_response_only=True, result_path="$.gate", comment="validation gate: its verdict admits or not")
        gate.add_catch(steps.unlock, result_path="$.error")
        last.next(imported)
        imported.next(gate)
        gate.next(steps.start)
        refused = sfn.Fail(self, INPUT_REFUSED_STATE, state_name=INPUT_REFUSED_STATE, error=INPUT_REFUSED_ERROR,
                           cause=f"the input needs model {props.model_name!r}, run_id, data_prefix, the run "
                                 "hyperparameters and holdout_uri (strings)")
        return sfn.Choice(self, CHECK_INPUT_STATE, state_name=CHECK_INPUT_STATE).when(sfn.Condition.and_(
            sfn.Condition.is_present("$.model"), sfn.Condition.is_string("$.model"),
            sfn.Condition.string_equals("$.model", props.model_name),
            sfn.Condition.is_present("$.holdout_uri"), sfn.Condition.is_string("$.holdout_uri"),
            props.training.input_is_valid()), chain).otherwise(refused)

    def _acknowledge_nag_findings(self) -> None:
        ack(self.import_function.execution_role, "AwsSolutions-IAM5[Resource::*]",
            "X-Ray writes take no resource scope")
        ack(self.dead_letters, "AwsSolutions-SQS3", "it is the dead-letter queue of the retraining triggers")
        role = self.state_machine.role
        ack(role, "AwsSolutions-IAM5[Resource::*]",
            "X-Ray, CloudWatch Logs delivery and sagemaker:ListTags take no resource scope")
        jobs = Stack.of(self).format_arn(service="sagemaker", resource="training-job", resource_name="*")
        ack(role, f"AwsSolutions-IAM5[Resource::{_as_nag_prints(Stack.of(self), jobs)}]",
            "job names come from the run id at run time (slimserve-<run_id>-<step>)")
        for fn in (self.props.release.function, self.import_function, self.props.validation.function):
            ack(role, f"AwsSolutions-IAM5[Resource::{arn_token(fn)}:*]", "invoke: this function's versions only")
