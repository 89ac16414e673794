"""The kit every construct builds with: SlimserveFunction, the guardrail aspect, the state-machine
builder, the monitoring construct and its alarm specs."""

from __future__ import annotations

from pathlib import Path

import pytest
from aws_cdk import App, Aspects, Duration, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from synth_helpers import MODEL_CONTEXT, STACK_ID, Synth, build_app

from cdk.constructs.alarms import DEAD_LETTERS, FUNCTION_ERRORS, AlarmSpec
from cdk.constructs.checks import check_range
from cdk.constructs.function import FunctionProps, SlimserveFunction
from cdk.constructs.guardrails import FunctionGuardrails
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.state_machines import logged_state_machine
from functions.common.settings import ValidationSettings


def _kit_stack(layer_dir: Path) -> tuple[App, Stack, lambda_.ILayerVersion]:
    app = App()
    stack = Stack(app, "KitTest")
    Aspects.of(stack).add(FunctionGuardrails())
    return app, stack, Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime


def _function(stack: Stack, layer: lambda_.ILayerVersion, construct_id: str = "NextFunction",
              **overrides: int) -> SlimserveFunction:
    props = {"memory_size": 512, "timeout_seconds": 30, "reserved_concurrency": 2, **overrides}
    return SlimserveFunction(stack, construct_id, FunctionProps(
        handler="functions.next.handler.lambda_handler", description="slimserve next: a new function",
        settings=ValidationSettings(registry_table="table"), layers=[layer], **props))


# --- SlimserveFunction -----------------------------------------------------------------------------

def test_a_new_function_gets_role_retained_logs_tracing_concurrency_and_its_settings(layer_dir: Path) -> None:
    app, stack, layer = _kit_stack(layer_dir)
    fn = _function(stack, layer)
    template = app.synth().get_stack_by_name("KitTest").template
    resources = template["Resources"]
    props = resources[stack.resolve(fn.node.default_child.logical_id)]["Properties"]  # type: ignore[union-attr]
    assert props["TracingConfig"] == {"Mode": "Active"} and props["ReservedConcurrentExecutions"] == 2
    assert props["Environment"]["Variables"] == ValidationSettings(registry_table="table").to_env()
    group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]
    assert group["Properties"]["RetentionInDays"] == 30 and group["DeletionPolicy"] == "Retain"
    assert props["LoggingConfig"]["LogGroup"]["Ref"].startswith("NextFunctionLogs")
    assert props["Role"]["Fn::GetAtt"][0].startswith("NextFunctionRole")
    assert "EphemeralStorage" not in props  # Lambda's default 512 MiB unless asked


@pytest.mark.parametrize(("overrides", "message"), [
    ({"reserved_concurrency": 0}, r"NextFunction\.reserved_concurrency must be >= 1, got 0"),
    ({"timeout_seconds": 901}, r"NextFunction\.timeout_seconds must be between 1 and 900, got 901"),
    ({"ephemeral_storage_mib": 20_000}, r"NextFunction\.ephemeral_storage_mib must be between 512 and 10240"),
])
def test_bad_function_props_name_the_function_and_the_prop(layer_dir: Path, overrides: dict[str, int],
                                                           message: str) -> None:
    _, stack, layer = _kit_stack(layer_dir)
    with pytest.raises(ValueError, match=message):
        _function(stack, layer, **overrides)


def test_object_grants_bring_their_acknowledgements_once(layer_dir: Path) -> None:
    _, stack, layer = _kit_stack(layer_dir)
    fn = _function(stack, layer)
    bucket = s3.Bucket(stack, "Data")
    fn.grant_read_objects(bucket, {"a/*": "a/ only", "b/*": "b/ only"})
    fn.grant_put_objects(bucket, {"c/*": "c/ only"})
    acks = [m.data for m in fn.execution_role.node.metadata if m.type == "aws:cdk:acknowledged-rules"]
    rules = [rule for data in acks for rule in data]
    assert len(rules) == len(set(rules))
    token = f"<{stack.resolve(bucket.node.default_child.logical_id)}.Arn>"  # type: ignore[union-attr]
    assert {f"Annotation::AwsSolutions-IAM5[Resource::{token}/{p}/*]" for p in "abc"} <= set(rules)


# --- the guardrail aspect --------------------------------------------------------------------------

def test_a_function_without_tracing_concurrency_or_log_retention_stops_synth(layer_dir: Path, tmp_path: Path
                                                                             ) -> None:
    app = build_app(outdir=str(tmp_path), context=MODEL_CONTEXT, layer_dir=layer_dir)
    stack = app.node.find_child(STACK_ID)
    lambda_.Function(stack, "CarelessFunction", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.handler",
                     code=lambda_.Code.from_inline("def handler(event, context): pass"))
    with pytest.raises(RuntimeError, match=r"CarelessFunction.*X-Ray tracing must be Active.*reserved concurrency "
                                        r"must be set.*logs must go to a log group of this stack"):
        app.synth()


def test_a_log_group_without_retention_stops_synth(layer_dir: Path) -> None:
    app, stack, layer = _kit_stack(layer_dir)
    fn = _function(stack, layer)
    group = fn.execution_log_group.node.default_child
    assert isinstance(group, logs.CfnLogGroup)
    group.retention_in_days = None
    with pytest.raises(RuntimeError, match=r"NextFunction/Resource: its log group .*NextFunctionLogs.* must have a "
                                        r"retention"):
        app.synth()


def test_every_function_of_the_stack_passes_the_guardrails(batch_synth: Synth) -> None:
    """The batch variant synthesized (the aspect ran on all its functions) and each has what it asserts."""
    for fn in batch_synth.resources("AWS::Lambda::Function").values():
        props = fn["Properties"]
        if props.get("Handler", "").startswith("functions."):
            assert props["TracingConfig"] == {"Mode": "Active"} and "ReservedConcurrentExecutions" in props


# --- state machines --------------------------------------------------------------------------------

def test_two_state_machines_can_share_a_scope(layer_dir: Path) -> None:
    app, stack, _ = _kit_stack(layer_dir)
    for name in ("Release", "Rollback"):
        logged_state_machine(stack, name, sfn.Pass(stack, f"{name}Start"), log_retention=logs.RetentionDays.ONE_WEEK,
                             timeout_hours=1, role_description=f"{name} machine", comment=name)
    resources = app.synth().get_stack_by_name("KitTest").template["Resources"]
    machines = {k: v for k, v in resources.items() if v["Type"] == "AWS::StepFunctions::StateMachine"}
    assert sorted(k[:-8] for k in machines) == ["Release", "Rollback"]
    groups = {m["Properties"]["LoggingConfiguration"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
              ["Fn::GetAtt"][0] for m in machines.values()}
    assert sorted(g[:-8] for g in groups) == ["ReleaseLogs", "RollbackLogs"]


# --- monitoring and alarm specs --------------------------------------------------------------------

def test_every_alarm_of_the_stack_is_made_by_monitoring(batch_synth: Synth) -> None:
    alarms = batch_synth.resources("AWS::CloudWatch::Alarm")
    assert alarms and all(k.startswith("Monitoring") for k in alarms)


def test_an_alarm_is_its_spec(batch_synth: Synth) -> None:
    (alarm,) = [a["Properties"] for k, a in batch_synth.resources("AWS::CloudWatch::Alarm").items()
                if k.startswith("MonitoringBatchDeadLetterAlarm")]
    spec = DEAD_LETTERS
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"], alarm["Period"]) == (
        spec.namespace, spec.metric_name, spec.statistic, spec.period_seconds)
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["ComparisonOperator"]) == (
        spec.threshold, spec.datapoints, spec.comparison)
    assert [d["Name"] for d in alarm["Dimensions"]] == [spec.dimension]
    assert alarm["TreatMissingData"] == "notBreaching"


@pytest.mark.parametrize(("spec", "values", "fires"), [
    (FUNCTION_ERRORS, [0, 0, 1], True),
    (FUNCTION_ERRORS, [3, 0], False),
    (FUNCTION_ERRORS, [None], False),  # no data never breaches
    (FUNCTION_ERRORS, [], False),
    (AlarmSpec("N", "M", "D", "Average", 60, threshold=5, datapoints=2, comparison="LessThanThreshold"),
     [9, 4, 1], True),
    (AlarmSpec("N", "M", "D", "Average", 60, threshold=5, datapoints=2, comparison="LessThanThreshold"),
     [4, 9, 1], False),
    (AlarmSpec("N", "M", "D", "Sum", 60, threshold=5, comparison="GreaterThanOrEqualToThreshold"), [5], True),
])
def test_a_local_evaluator_reads_the_same_spec(spec: AlarmSpec, values: list[float | None], fires: bool) -> None:
    assert spec.breaches(values) is fires


def test_alarm_specs_refuse_periods_cloudwatch_cannot_alarm_on() -> None:
    with pytest.raises(ValueError, match=r"period_seconds must be a multiple of 60, got 90"):
        AlarmSpec("N", "M", "D", "Sum", period_seconds=90)
    assert Duration.seconds(FUNCTION_ERRORS.period_seconds).to_minutes() == 5


# --- shared checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ((5, 1, 3), r"Owner\.prop must be between 1 and 3, got 5$"),
    ((0, 1, None), r"Owner\.prop must be >= 1, got 0$"),
    ((0, 1, 3, "why"), r"Owner\.prop must be between 1 and 3, got 0 \(why\)$"),
])
def test_range_checks_say_what_was_expected_and_what_came(args: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        check_range("Owner", "prop", *args)
    check_range("Owner", "prop", 2, 1, 3)
