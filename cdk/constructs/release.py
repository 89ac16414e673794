"""Release: model releases by canary, as a Step Functions state machine over one release function.

Models are routed inside the inference function (the registry's routing item names the champion, the
canary and its weight); this machine only moves that item, through the release function
(`functions/release/handler.py`, one `action` per step), and never touches alias `live`, which belongs
to code deploys.

State input of the release machine:

    {"model": "churn", "version": "8"}

Steps: check the input -> take the model's release lock (owner: the execution) -> admit (only a candidate
the gate admitted) -> first release of a model: champion at once; else, per canary weight: set the weight
-> bake -> compare canary with champion (a short bake is extended once) -> ... -> promote; a comparison
that fails, or any error once a canary exists, rolls back -> release the lock.

Output: the input plus `outcome` ("first_release", "promoted" or "rolled_back"), `compare` (the last
comparison: decision, reason, figures) and each step's answer. A refused or failed release fails with the
error's own name (LockHeld, NotAdmitted, UnknownVersion, slimserve.ReleaseInputRefused, ...) and its cause.

`ReleaseSteps` builds the states; the retraining machine builds its own copy (moto's interpreter cannot
run one machine from another, so each definition holds the states themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_cdk import CfnOutput, Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from functions.common.settings import ReleaseSettings, RollbackSettings, Settings

from .checks import check_range
from .function import LAMBDA_MAX_TIMEOUT_SECONDS, FunctionProps, SlimserveFunction
from .monitoring import Monitoring, model_alarm_prefix
from .nag import ack, arn_token
from .queues import managed_queue
from .state_machines import logged_state_machine
from .topology import DLQ_RETENTION_DAYS

HANDLER = "functions.release.handler.lambda_handler"
ROLLBACK_HANDLER = "functions.rollback.handler.lambda_handler"
ALARM_STATE_CHANGE = "CloudWatch Alarm State Change"

# The registry calls of the release function: routing item and lock by conditional writes, promotion in
# one transaction (IAM checks each item's own action: put, update, condition check), one model's versions
# by Query, the lock's delete. No Scan.
REGISTRY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                    "dynamodb:Query", "dynamodb:ConditionCheckItem")

# State names in the synthesized ASL (tests and the local emulation look them up by these names).
CHECK_INPUT_STATE = "CheckReleaseInput"
INPUT_REFUSED_STATE = "ReleaseInputRefused"
INPUT_REFUSED_ERROR = "slimserve.ReleaseInputRefused"
LOCK_STATE, ADMIT_STATE, UNLOCK_STATE = "TakeLock", "Admit", "Unlock"
FIRST_RELEASE_STATE, PROMOTE_STATE = "FirstRelease", "Promote"
ROLLBACK_STATE, ROLLBACK_ON_ERROR_STATE = "Rollback", "RollbackOnError"
FAILED_STATE, RELEASED_STATE = "ReleaseFailed", "Released"
OUTCOMES = ("first_release", "promoted", "rolled_back")


def canary_state(weight: int) -> str:
    return f"Canary{weight}"


def bake_state(weight: int) -> str:
    return f"Bake{weight}"


def compare_state(weight: int, extended: bool = False) -> str:
    return f"{'CompareAgain' if extended else 'Compare'}{weight}"


@dataclass(frozen=True)
class ReleaseMachineSettings:
    """The tunables of a release (what a stack or CDK context chooses); resources come in props."""

    canary_weights: tuple[int, ...] = (10, 50, 100)
    """Canary traffic in percent, stage by stage; the last stage is 100 (then promote)."""
    bake_seconds: int = 600
    """How long each stage serves before its comparison (and the one extension of a short bake)."""
    min_canary_requests: int = 100
    """A bake with fewer canary requests is extended once, then ends `insufficient_traffic`."""
    memory_size: int = 256
    timeout_seconds: int = 60
    reserved_concurrency: int = 5
    run_timeout_hours: int = 24
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting, before any resource is created."""
        owner = "ReleaseMachineSettings"
        weights = self.canary_weights
        if not weights or any(not 0 < w <= 100 for w in weights) or list(weights) != sorted(set(weights)) \
                or weights[-1] != 100:
            raise ValueError(f"{owner}.canary_weights must rise strictly within 1..100 and end at 100, "
                             f"got {weights}")
        check_range(owner, "bake_seconds", self.bake_seconds, 0, 24 * 3600)
        check_range(owner, "min_canary_requests", self.min_canary_requests, 0)
        check_range(owner, "memory_size", self.memory_size, 128, 10_240)
        check_range(owner, "timeout_seconds", self.timeout_seconds, 1, LAMBDA_MAX_TIMEOUT_SECONDS,
                    hint="Lambda's maximum")
        check_range(owner, "reserved_concurrency", self.reserved_concurrency, 1, 1000,
                    hint="0 would refuse every release")
        stages = len(weights) * 2 * self.bake_seconds
        check_range(owner, "run_timeout_hours", self.run_timeout_hours * 3600, stages + 3600,
                    hint="a run must outlast every stage's bake and its extension, plus an hour")


@dataclass(frozen=True)
class ReleaseProps:
    model_name: str
    """The model the stack serves: its champion alarms (`slimserve-<model>-champion-*`) start a rollback."""
    table: dynamodb.ITable
    """The model registry: versions, champion pointer, routing item and release lock."""
    layer: lambda_.ILayerVersion
    """The runtime layer (Powertools, the registry's dependencies)."""
    monitoring: Monitoring
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    settings: ReleaseMachineSettings = field(default_factory=ReleaseMachineSettings)
    function_settings: Mapping[str, Any] = field(default_factory=dict)
    """Extra fields of the function's ReleaseSettings (comparison thresholds); the table and topic are set here."""

    def validate(self) -> None:
        self.settings.validate()


class Release(Construct):
    """The release function, the notification topic and the release state machine."""

    def __init__(self, scope: Construct, construct_id: str, props: ReleaseProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        self.settings = props.settings
        self.topic = self._topic()
        table, topic = props.table.table_name, self.topic.topic_arn
        self.function = self._function(
            "Function", HANDLER, props.settings.reserved_concurrency,
            "slimserve release: lock, admit, canary weight, compare, promote, roll back",
            ReleaseSettings(registry_table=table, notify_topic_arn=topic, **props.function_settings),
            invoked_by="the release and retraining state machines")
        # Both the rule's undeliverable events and the function's failed asynchronous invocations land here.
        self.rollback_dead_letters = managed_queue(self, "RollbackDeadLetters", senders="EventBridge and Lambda",
                                                   retention_period=Duration.days(DLQ_RETENTION_DAYS))
        # One at a time: two alarms of one incident must not race for the same champion.
        self.rollback_function = self._function(
            "RollbackFunction", ROLLBACK_HANDLER, 1,
            "slimserve rollback: a champion alarm puts the last known-good version back",
            RollbackSettings(registry_table=table, notify_topic_arn=topic),
            dead_letter_queue=self.rollback_dead_letters)  # EventBridge invokes it asynchronously
        self.champion_alarm_rule = events.Rule(
            self, "ChampionAlarmRule", description=f"A champion alarm of {props.model_name} rolls the champion back",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"], detail_type=[ALARM_STATE_CHANGE],
                detail={"alarmName": events.Match.prefix(model_alarm_prefix(props.model_name, "champion")),
                        "state": {"value": ["ALARM"]}}),
            targets=[targets.LambdaFunction(self.rollback_function, dead_letter_queue=self.rollback_dead_letters,
                                            retry_attempts=4, max_event_age=Duration.hours(1))])
        self.state_machine = logged_state_machine(
            self, "StateMachine", ReleaseSteps(self, self, entry=True).start,
            log_retention=self.settings.log_retention, timeout_hours=self.settings.run_timeout_hours,
            role_description="slimserve release state machine: invokes the release function only",
            comment="slimserve release: lock, admit, canary stages with bake and comparison, promote or roll back")
        self.errors_alarm = props.monitoring.function_errors(
            self, "ErrorsAlarm", self.function, "The release function raised errors (a step did not complete)")
        self.rollback_errors_alarm = props.monitoring.function_errors(
            self, "RollbackErrorsAlarm", self.rollback_function, "The rollback function raised errors")
        self.rollback_dead_letter_alarm = props.monitoring.dead_letters(
            self, "RollbackDeadLetterAlarm", self.rollback_dead_letters, "A champion alarm event was never handled")
        self.runs_failed_alarm = props.monitoring.runs_failed(
            self, "RunsFailedAlarm", self.state_machine, "A model release was refused or failed")
        self._acknowledge_nag_findings()
        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn,
                  description='Start with {"model", "version"}: canary, compare, promote or roll back')
        CfnOutput(self, "FunctionName", value=self.function.function_name,
                  description="The release function (steps of the release and retraining machines)")
        CfnOutput(self, "TopicArn", value=self.topic.topic_arn,
                  description="Release notifications: rollbacks and failed runs")

    def _topic(self) -> sns.Topic:
        # SNS's AWS-managed key: encrypted at rest with nothing to administer; publishers need no key grant.
        key = kms.Alias.from_alias_name(self, "TopicKey", "alias/aws/sns")
        return sns.Topic(self, "Topic", display_name="slimserve releases", master_key=key, enforce_ssl=True)

    def _function(self, construct_id: str, handler: str, reserved_concurrency: int, description: str,
                  function_settings: Settings, *, invoked_by: str | None = None,
                  dead_letter_queue: sqs.IQueue | None = None) -> SlimserveFunction:
        """The release or rollback function: the same registry rights and topic."""
        settings = self.settings
        fn = SlimserveFunction(self, construct_id, FunctionProps(
            handler=handler,
            description=description,
            settings=function_settings,
            layers=[self.props.layer],
            memory_size=settings.memory_size,
            timeout_seconds=settings.timeout_seconds,
            reserved_concurrency=reserved_concurrency,
            log_retention=settings.log_retention,
            architecture=self.props.architecture,
            invoked_by=invoked_by,
            dead_letter_queue=dead_letter_queue,
        ))
        self.props.table.grant(fn, *REGISTRY_ACTIONS)
        # Not grant_publish: that adds kms on key/*; SNS's managed key already serves the account's publishers.
        fn.add_to_role_policy(iam.PolicyStatement(sid="PublishReleaseNotices", actions=["sns:Publish"],
                                                  resources=[self.topic.topic_arn]))
        # Metric reads take no resource, and AWS evaluates cloudwatch:namespace for PutMetricData only: a
        # namespace condition here would never match and deny every read.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadServingMetrics", actions=["cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData"],
            resources=["*"]))
        return fn

    def _acknowledge_nag_findings(self) -> None:
        for fn in (self.function, self.rollback_function):
            ack(fn.execution_role, "AwsSolutions-IAM5[Resource::*]",
                "X-Ray writes and metric reads take no resource scope (CloudWatch has none for reads)")
        ack(self.rollback_dead_letters, "AwsSolutions-SQS3", "it is the dead-letter queue of the champion alarm rule")
        machine_role = self.state_machine.role
        ack(machine_role, "AwsSolutions-IAM5[Resource::*]", "X-Ray and CloudWatch Logs delivery take no resource scope")
        ack(machine_role, f"AwsSolutions-IAM5[Resource::{arn_token(self.function)}:*]",
            "invoke: the release function's versions only")


class ReleaseSteps:
    """The states of one release, built under `scope` for one machine: `start` is its first state.

    `entry=True` (the release machine) checks the input and takes the lock first; the retraining machine
    holds the lock already (same owner: its execution) and enters at `admit` with `$.model` and `$.version`
    set. Every path ends at `unlock` -> Succeed, or Fail with the caught error's name when `$.error` is set.
    `version_path` is where the version is read (the retraining machine's import step answers it);
    `on_error` runs before that Fail (the retraining machine notifies there).
    """

    def __init__(self, scope: Construct, release: Release, *, entry: bool, version_path: str = "$.version",
                 on_error: sfn.INextable | None = None) -> None:
        self.scope, self.function, self.settings = scope, release.function, release.settings
        self.version_path = version_path
        self.succeeded = sfn.Succeed(scope, RELEASED_STATE, state_name=RELEASED_STATE)
        self.failed = sfn.Fail(scope, FAILED_STATE, state_name=FAILED_STATE,
                               error_path="$.error.Error", cause_path="$.error.Cause")
        failing: sfn.IChainable = self.failed
        if on_error is not None:
            on_error.next(self.failed)
            failing = on_error  # type: ignore[assignment]
        self.outcome = sfn.Choice(scope, "Outcome", state_name="Outcome",
                                  comment="a caught error fails the run under its own name").when(
            sfn.Condition.is_present("$.error"), failing).otherwise(self.succeeded)
        self.unlock = self.invoke(UNLOCK_STATE, {"action": "unlock", "owner": sfn.JsonPath.execution_id},
                                  "$.unlock")
        # The lock expires by itself: a failed unlock must not turn a release into a failure.
        self.unlock.add_catch(self.outcome, result_path="$.unlock_error")
        self.unlock.next(self.outcome)
        self.rollback = self._rollback()
        self.rollback_on_error = self._rollback_on_error()
        self.admit = self._admit()
        self.start: sfn.State = self.admit
        if entry:
            lock = self.invoke(LOCK_STATE, {"action": "lock", "owner": sfn.JsonPath.execution_id}, "$.lock")
            lock.add_catch(self.failed, result_path="$.error")  # not ours: nothing to unlock
            lock.next(self.admit)
            refused = sfn.Fail(scope, INPUT_REFUSED_STATE, state_name=INPUT_REFUSED_STATE, error=INPUT_REFUSED_ERROR,
                               cause="the input needs model and version, both strings")
            self.start = sfn.Choice(scope, CHECK_INPUT_STATE, state_name=CHECK_INPUT_STATE).when(
                sfn.Condition.and_(sfn.Condition.is_present("$.model"), sfn.Condition.is_string("$.model"),
                                   sfn.Condition.is_present("$.version"), sfn.Condition.is_string("$.version")),
                lock).otherwise(refused)

    def invoke(self, state_name: str, payload: dict[str, Any], result_path: str) -> tasks.LambdaInvoke:
        """One release function step; model (and version, where the step names one) come from the state."""
        fields: dict[str, Any] = {"model": sfn.JsonPath.string_at("$.model")}
        if payload["action"] not in ("lock", "unlock"):
            fields["version"] = sfn.JsonPath.string_at(self.version_path)
        return tasks.LambdaInvoke(
            self.scope, state_name, state_name=state_name, lambda_function=self.function,
            payload=sfn.TaskInput.from_object({**payload, **fields}), payload_response_only=True,
            result_path=result_path, comment=f"release function: {payload['action']}")

    def _outcome(self, name: str, outcome: str) -> sfn.Pass:
        done = sfn.Pass(self.scope, name, state_name=name, result=sfn.Result.from_string(outcome),
                        result_path="$.outcome")
        done.next(self.unlock)
        return done

    def _rollback(self) -> tasks.LambdaInvoke:
        """A comparison said no: canary weight 0, status rolled back with the reason and figures, notify."""
        task = self.invoke(ROLLBACK_STATE, {"action": "rollback",
                                            "reason": sfn.JsonPath.string_at("$.compare.reason"),
                                            "figures": sfn.JsonPath.object_at("$.compare.figures")}, "$.rollback")
        task.add_catch(self.unlock, result_path="$.error")
        task.next(self._outcome("RolledBack", "rolled_back"))
        return task

    def _rollback_on_error(self) -> tasks.LambdaInvoke:
        """A step failed with a canary in place: take it out of traffic, keep the first error for the end."""
        task = self.invoke(ROLLBACK_ON_ERROR_STATE, {"action": "rollback",
                                                     "reason": sfn.JsonPath.string_at("$.error.Error"),
                                                     "figures": {}}, "$.rollback")
        task.add_catch(self.unlock, result_path="$.rollback_error")
        task.next(self.unlock)
        return task

    def _admit(self) -> tasks.LambdaInvoke:
        admit = self.invoke(ADMIT_STATE, {"action": "admit"}, "$.admit")
        admit.add_catch(self.unlock, result_path="$.error")
        first = self.invoke(FIRST_RELEASE_STATE, {"action": "first_release"}, "$.promotion")
        first.add_catch(self.unlock, result_path="$.error")
        first.next(self._outcome("BecameChampion", "first_release"))
        promote = self.invoke(PROMOTE_STATE, {"action": "promote", "reason": "the canary passed every stage"},
                              "$.promotion")
        promote.add_catch(self.rollback_on_error, result_path="$.error")
        promote.next(self._outcome("Promoted", "promoted"))
        following: sfn.IChainable = promote
        for weight in reversed(self.settings.canary_weights):
            following = self._stage(weight, following)
        admit.next(sfn.Choice(self.scope, "IsFirstRelease", state_name="IsFirstRelease",
                              comment="no champion yet: the gate's word is enough").when(
            sfn.Condition.boolean_equals("$.admit.first_release", True), first).otherwise(following))
        return admit

    def _stage(self, weight: int, following: sfn.IChainable) -> sfn.State:
        """Set the weight, bake, compare (extend a short bake once); on to `following` or roll back.
        At 100 the champion serves nothing to compare with: that stage bakes only (alarms still watch)."""
        scope, bake = self.scope, Duration.seconds(self.settings.bake_seconds)
        stage = self.invoke(canary_state(weight), {"action": "set_weight", "weight": weight}, "$.stage")
        stage.add_catch(self.rollback_on_error, result_path="$.error")
        wait = sfn.Wait(scope, bake_state(weight), state_name=bake_state(weight), time=sfn.WaitTime.duration(bake))
        stage.next(wait)
        if weight == 100:
            wait.next(following)
            return stage
        compare, again = (self.invoke(compare_state(weight, extended), {
            "action": "compare", "since": sfn.JsonPath.string_at("$.stage.since"),
            "min_requests": self.settings.min_canary_requests, "extended": extended}, "$.compare")
            for extended in (False, True))
        compare.add_catch(self.rollback_on_error, result_path="$.error")
        again.add_catch(self.rollback_on_error, result_path="$.error")
        wait.next(compare)
        extend = sfn.Wait(scope, f"ExtendBake{weight}", state_name=f"ExtendBake{weight}",
                          time=sfn.WaitTime.duration(bake))
        extend.next(again)
        decision = "$.compare.decision"
        compare.next(sfn.Choice(scope, f"Judge{weight}", state_name=f"Judge{weight}").when(
            sfn.Condition.string_equals(decision, "continue"), following).when(
            sfn.Condition.string_equals(decision, "extend"), extend).otherwise(self.rollback))
        again.next(sfn.Choice(scope, f"JudgeAgain{weight}", state_name=f"JudgeAgain{weight}").when(
            sfn.Condition.string_equals(decision, "continue"), following).otherwise(self.rollback))
        return stage
