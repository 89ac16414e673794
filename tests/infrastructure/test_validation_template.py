"""The registry table and the validation gate keep their promises in the synthesized stack: a durable,
encrypted table shaped as `functions/common/registry.py` expects; a gate function that reads bundles and
holdouts, writes only each bundle's report, and touches the registry with four item-level actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from cfnlint.api import lint_all
from synth_helpers import STACK_ID, Synth, as_list, function_by_handler, resource_id, role_statements
from test_cfn_lint import ALLOWED as ALLOWED_LINT_WARNINGS

from cdk.app import load_cdk_json_context
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.model_registry import (
    HANDLER,
    ValidationGate,
    ValidationGateProps,
    ValidationGateSettings,
)
from cdk.constructs.monitoring import Monitoring
from cdk.stacks.serving_stack import ServingStack, ServingStackProps
from pipeline.local.emulation import create_registry_table as create_table

INFERENCE_HANDLER = "functions.inference.handler.lambda_handler"
READ_ACTIONS = ("s3:Get", "s3:List")
REGISTRY_ACTIONS = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"}
slow = pytest.mark.slow  # reads a full synth (the first test in a session pays for it)


# --- helpers -------------------------------------------------------------------------------------

def _function(synth: Synth, handler: str = HANDLER) -> tuple[str, dict[str, Any]]:
    return function_by_handler(synth, handler)


def _role_id(synth: Synth) -> str:
    return _function(synth)[1]["Role"]["Fn::GetAtt"][0]


def _table(synth: Synth) -> tuple[str, dict[str, Any]]:
    """The registry table (the feedback construct's labels table sits beside it)."""
    table_id = resource_id(synth, "RegistryTable", "AWS::DynamoDB::Table")
    return table_id, synth.template["Resources"][table_id]


def _model_bucket_id(synth: Synth) -> str:
    """The model store's bucket (bundles and holdouts)."""
    (found,) = [k for k in synth.resources("AWS::S3::Bucket") if k.startswith("ModelStoreModelBucket")]
    return found


def _object_pattern(resource: Any, bucket_id: str) -> str | None:
    """'models/*' for `<bucket ARN>/models/*`; None for anything else (another bucket, a bucket ARN)."""
    if isinstance(resource, dict) and "Fn::Join" in resource:
        parts = resource["Fn::Join"][1]
        if len(parts) == 2 and parts[0] == {"Fn::GetAtt": [bucket_id, "Arn"]} and isinstance(parts[1], str):
            return parts[1].removeprefix("/")
    return None


def _s3_grants(synth: Synth, write: bool) -> dict[str, set[str]]:
    """Per resource kind, what the gate may read (write=False) or write (write=True): object key patterns
    of the model bucket, plus 'bucket' for the model bucket ARN and 'other' for any other resource."""
    bucket_id = _model_bucket_id(synth)
    grants: dict[str, set[str]] = {"objects": set(), "bucket": set(), "other": set()}
    for statement in role_statements(synth, _role_id(synth)):
        actions = [a for a in as_list(statement["Action"]) if a.startswith("s3:")]
        if not actions or any(not a.startswith(READ_ACTIONS) for a in actions) != write:
            continue
        for resource in as_list(statement["Resource"]):
            if (pattern := _object_pattern(resource, bucket_id)) is not None:
                grants["objects"].add(pattern)
            elif resource == {"Fn::GetAtt": [bucket_id, "Arn"]}:
                grants["bucket"].add(bucket_id)
            else:
                grants["other"].add(str(resource))
    return grants


# --- registry table ------------------------------------------------------------------------------

@slow
def test_registry_table_has_the_schema_the_registry_code_creates(default_synth: Synth) -> None:
    """`create_table` (local emulation, moto tests) and the stack must describe the same table."""
    created: dict[str, Any] = {}

    class _Recorder:
        def create_table(self, **kwargs: Any) -> None:
            created.update(kwargs)

    create_table(_Recorder(), "registry")
    props = _table(default_synth)[1]["Properties"]
    assert props["KeySchema"] == created["KeySchema"] == [
        {"AttributeName": "model", "KeyType": "HASH"}, {"AttributeName": "version", "KeyType": "RANGE"}]
    assert props["AttributeDefinitions"] == created["AttributeDefinitions"]
    assert props["BillingMode"] == created["BillingMode"] == "PAY_PER_REQUEST"
    assert "TableName" not in props  # a generated name, handed to the function through REGISTRY_TABLE


@slow
def test_registry_table_is_encrypted_recoverable_and_protected(default_synth: Synth) -> None:
    _, table = _table(default_synth)
    props = table["Properties"]
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"


# --- validation function -------------------------------------------------------------------------

@slow
def test_validation_function_runtime_handler_tracing_and_limits(default_synth: Synth) -> None:
    _, fn = _function(default_synth)
    assert fn["Runtime"] == "python3.12"
    assert fn["Architectures"] == ["x86_64"]
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["MemorySize"] == 2048
    assert fn["Timeout"] == 300
    assert fn["ReservedConcurrentExecutions"] == 2


@slow
def test_validation_function_shares_the_inference_code_and_layer(default_synth: Synth) -> None:
    _, fn = _function(default_synth)
    _, inference = _function(default_synth, INFERENCE_HANDLER)
    layer_id, _ = default_synth.one("AWS::Lambda::LayerVersion")
    assert fn["Layers"] == inference["Layers"] == [{"Ref": layer_id}]
    assert fn["Code"] == inference["Code"]  # the same `functions/` asset


@slow
def test_validation_function_environment_names_the_registry(default_synth: Synth) -> None:
    table_id, _ = _table(default_synth)
    assert _function(default_synth)[1]["Environment"]["Variables"] == {
        "REGISTRY_TABLE": {"Ref": table_id},
        "POWERTOOLS_SERVICE_NAME": "slimserve-validation",
        "POWERTOOLS_METRICS_NAMESPACE": "Slimserve",
    }


@slow
def test_validation_function_logs_to_its_own_retained_group(default_synth: Synth) -> None:
    _, fn = _function(default_synth)
    group_id = fn["LoggingConfig"]["LogGroup"]["Ref"]
    group = default_synth.template["Resources"][group_id]
    assert group["Properties"]["RetentionInDays"] == 30
    assert group["DeletionPolicy"] == "Retain"
    _, inference = _function(default_synth, INFERENCE_HANDLER)
    assert inference["LoggingConfig"]["LogGroup"]["Ref"] != group_id
    logs = [s for s in role_statements(default_synth, _role_id(default_synth))
            if any(a.startswith("logs:") for a in as_list(s["Action"]))]
    assert logs == [{"Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Effect": "Allow",
                     "Resource": {"Fn::GetAtt": [group_id, "Arn"]}}]


@slow
def test_arm64_context_switches_the_validation_function(api_key_synth: Synth) -> None:
    assert _function(api_key_synth)[1]["Architectures"] == ["arm64"]


# --- least privilege -----------------------------------------------------------------------------

@slow
@pytest.mark.parametrize("variant", ["default_synth", "batch_synth"])
def test_validation_reads_models_and_holdouts_of_the_model_bucket_only(
        variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    reads = _s3_grants(synth, write=False)
    assert reads["objects"] == {"models/*", "holdout/*"}
    assert reads["bucket"] == set()  # no listing: the gate reads the keys it is given
    assert reads["other"] == set()  # never the scoring or access-log bucket, never "*"


@slow
@pytest.mark.parametrize("variant", ["default_synth", "batch_synth"])
def test_validation_writes_only_each_bundles_report(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    assert _s3_grants(synth, write=True) == {"objects": {"models/*/validation-report.json"}, "bucket": set(),
                                             "other": set()}
    s3_actions = {a for s in role_statements(synth, _role_id(synth)) for a in as_list(s["Action"])
                  if a.startswith("s3:")}
    assert not {a for a in s3_actions if a.startswith("s3:Delete") or a in ("s3:*", "s3:Put*")}
    assert "s3:PutObject" in s3_actions and "s3:PutObjectAcl" not in s3_actions


@slow
def test_validation_role_has_no_managed_policies(default_synth: Synth) -> None:
    role = default_synth.template["Resources"][_role_id(default_synth)]["Properties"]
    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}


@slow
def test_registry_access_is_four_item_actions_on_the_table_only(default_synth: Synth) -> None:
    table_id, _ = _table(default_synth)
    dynamo = [s for s in role_statements(default_synth, _role_id(default_synth))
              if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    assert len(dynamo) == 1
    assert dynamo[0]["Effect"] == "Allow"
    assert set(as_list(dynamo[0]["Action"])) == REGISTRY_ACTIONS  # no Scan, no Delete, no transactions
    assert as_list(dynamo[0]["Resource"]) == [{"Fn::GetAtt": [table_id, "Arn"]}]


@slow
def test_no_other_role_touches_the_registry(default_synth: Synth) -> None:
    """Besides the gate, only the release and rollback functions (tested with them), the code release hooks'
    lock (test_code_release.py), the retraining import (test_retraining_machine.py) and the inference and
    drift functions' reads of their routing item (tested with serving and drift) hold registry actions. Any
    other DynamoDB grant (the feedback functions' puts) names the labels table alone."""
    labels_arn = {"Fn::GetAtt": [resource_id(default_synth, "FeedbackTable", "AWS::DynamoDB::Table"), "Arn"]}
    allowed = [_role_id(default_synth)] + [
        _function(default_synth, handler)[1]["Role"]["Fn::GetAtt"][0]
        for handler in ("functions.release.handler.lambda_handler", "functions.rollback.handler.lambda_handler",
                        INFERENCE_HANDLER, "functions.release.hooks.before_allow_traffic_handler",
                        "functions.release.hooks.after_allow_traffic_handler",
                        "functions.release.handler.import_handler", "functions.drift.handler.lambda_handler")]
    for policy in default_synth.resources("AWS::IAM::Policy").values():
        if any({"Ref": role} in policy["Properties"]["Roles"] for role in allowed):
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if any(a.startswith("dynamodb:") for a in as_list(statement["Action"])):
                assert as_list(statement["Resource"]) == [labels_arn], policy["Properties"]["PolicyName"]


# --- alarm and outputs ---------------------------------------------------------------------------

@slow
def test_validation_errors_raise_an_alarm(default_synth: Synth) -> None:
    fn_id, _ = _function(default_synth)
    (alarm,) = [a["Properties"] for a in default_synth.resources("AWS::CloudWatch::Alarm").values()
                if a["Properties"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": fn_id}}]]
    assert alarm["Namespace"] == "AWS/Lambda" and alarm["MetricName"] == "Errors"
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 300 and alarm["EvaluationPeriods"] == 1
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


@slow
def test_outputs_name_the_registry_table_and_validation_function(default_synth: Synth) -> None:
    outputs = default_synth.template["Outputs"]
    (table_output,) = [v for k, v in outputs.items() if k.startswith("RegistryTableName")]
    (function_output,) = [v for k, v in outputs.items() if k.startswith("ValidationFunctionName")]
    assert table_output["Value"] == {"Ref": _table(default_synth)[0]}
    assert function_output["Value"] == {"Ref": _function(default_synth)[0]}


# --- cdk-nag and cfn-lint ------------------------------------------------------------------------

@slow
def test_registry_and_validation_pass_cdk_nag_with_narrow_acknowledgements(default_synth: Synth) -> None:
    assert default_synth.nag_error is None
    violations = [c["constructPath"] for r in default_synth.validation_report()["pluginReports"]
                  for v in r["violations"] for c in v["violatingConstructs"]]
    assert violations == []
    ours = {key.split(" ", 1)[0]: reason for key, reason in default_synth.acknowledgements().items()
            if key.startswith((f"/{STACK_ID}/Registry", f"/{STACK_ID}/Validation"))}
    # The table passes on its own merits (PITR, encryption); only the function and its role are acknowledged.
    assert set(ours) == {f"/{STACK_ID}/Validation/Function", f"/{STACK_ID}/Validation/FunctionRole"}
    assert all(reason.strip() and "\n" not in reason for reason in ours.values())


@slow
def test_registry_and_validation_resources_have_no_lint_findings(default_synth: Synth) -> None:
    (template,) = sorted(default_synth.outdir.glob("*.template.json"))
    # Logical ids and output ids of the two constructs, and the gate's alarm (made by Monitoring).
    ours = ("Registry", "Validation", "MonitoringValidation")
    assert len([k for k in default_synth.template["Resources"] if k.startswith(ours)]) >= 6
    problems = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in lint_all(template.read_text())
                if m.rule.id[0] in "EW" and m.rule.id not in ALLOWED_LINT_WARNINGS
                and any(str(part).startswith(ours) for part in m.path)]
    assert problems == []


# --- props ---------------------------------------------------------------------------------------

def _build(layer_dir: Path, settings: ValidationGateSettings) -> ValidationGate:
    stack = Stack(App(), "ValidationPropsTest")
    layer = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime
    table = dynamodb.Table(stack, "Registry",
                           partition_key=dynamodb.Attribute(name="model", type=dynamodb.AttributeType.STRING))
    props = ValidationGateProps(model_bucket=s3.Bucket(stack, "Models"), table=table, layer=layer,
                                monitoring=Monitoring(stack, "Monitoring"), settings=settings)
    return ValidationGate(stack, "Validation", props)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"memory_size": 64}, r"memory_size must be between 128 and 10240, got 64"),
    ({"timeout_seconds": 0}, r"timeout_seconds must be between 1 and 900, got 0"),
    ({"timeout_seconds": 901}, r"timeout_seconds must be between 1 and 900, got 901 \(Lambda's maximum\)"),
    ({"reserved_concurrency": 0}, r"reserved_concurrency must be between 1 and 1000, got 0 \(0 would refuse"),
])
def test_bad_validation_settings_raise_value_error(layer_dir: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"ValidationGateSettings\." + message):
        _build(layer_dir, ValidationGateSettings(**overrides))


def test_stack_wires_registry_layer_and_settings_into_the_gate(layer_dir: Path) -> None:
    settings = ValidationGateSettings(memory_size=4096, timeout_seconds=600, reserved_concurrency=3)
    stack = ServingStack(App(context=load_cdk_json_context()), "Composed",
                         ServingStackProps(layer_dir=layer_dir, validation=settings))
    assert stack.validation.settings == settings
    assert stack.validation.props.layer is stack.layers.runtime is stack.serving.props.layer
    assert stack.validation.props.table is stack.registry.table
    assert stack.validation.props.model_bucket is stack.model_store.bucket
    assert stack.validation.errors_alarm is not None
