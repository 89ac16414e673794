"""Code releases as synthesized: CodeDeploy shifts alias `live` by canary under the alias alarms, rolls back
by itself, and its hooks take and release the served model's release lock with scoped permissions.
CodeDeploy never progresses on moto, so what runs offline is the hooks' code (tests/integration) and this
template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template
from synth_helpers import Synth, as_list, function_by_handler, role_statements

from cdk.constructs import function as function_module
from cdk.constructs.code_release import AFTER_HANDLER, BEFORE_HANDLER, CodeReleaseProps
from cdk.constructs.serving_api import HANDLER as INFERENCE_HANDLER
from cdk.constructs.serving_api import ServingApi, ServingApiProps

pytestmark = pytest.mark.slow  # reads a full synth
MODEL = "churn"  # the default synth's model (synth_helpers.MODEL_CONTEXT)
KEY = dynamodb.Attribute(name="model", type=dynamodb.AttributeType.STRING)


def _group(synth: Synth) -> tuple[str, dict[str, Any]]:
    group_id, group = synth.one("AWS::CodeDeploy::DeploymentGroup")
    return group_id, group["Properties"]


def _live_alias(synth: Synth) -> dict[str, Any]:
    inference_id, _ = function_by_handler(synth, INFERENCE_HANDLER)
    (alias,) = [a for a in synth.resources("AWS::Lambda::Alias").values()
                if a["Properties"]["FunctionName"] == {"Ref": inference_id}]
    assert alias["Properties"]["Name"] == "live"
    return alias


def test_alias_live_is_shifted_by_a_codedeploy_canary(default_synth: Synth) -> None:
    group_id, group = _group(default_synth)
    assert group["DeploymentConfigName"] == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
    update = _live_alias(default_synth)["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert update["DeploymentGroupName"] == {"Ref": group_id}
    # Each deploy publishes a version: the alias never points at $LATEST.
    version = _live_alias(default_synth)["Properties"]["FunctionVersion"]
    assert version["Fn::GetAtt"][1] == "Version"
    assert default_synth.template["Resources"][version["Fn::GetAtt"][0]]["Type"] == "AWS::Lambda::Version"


def test_the_alias_alarms_roll_the_code_release_back(default_synth: Synth) -> None:
    _, group = _group(default_synth)
    alias_alarms = {k for k, v in default_synth.resources("AWS::CloudWatch::Alarm").items()
                    if v["Properties"]["Namespace"] == "AWS/Lambda"
                    and any(d["Name"] == "Resource" for d in v["Properties"]["Dimensions"])}  # on `<fn>:live`
    assert len(alias_alarms) == 3
    watched = group["AlarmConfiguration"]
    assert watched["Enabled"] is True
    assert {a["Name"]["Ref"] for a in watched["Alarms"]} == alias_alarms
    rollback = group["AutoRollbackConfiguration"]
    assert rollback["Enabled"] is True
    assert set(rollback["Events"]) == {"DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_STOP_ON_REQUEST"}


def test_hooks_are_set_before_and_after_traffic(default_synth: Synth) -> None:
    update = _live_alias(default_synth)["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    before_id, before = function_by_handler(default_synth, BEFORE_HANDLER)
    after_id, after = function_by_handler(default_synth, AFTER_HANDLER)
    assert update["BeforeAllowTrafficHook"] == {"Ref": before_id}
    assert update["AfterAllowTrafficHook"] == {"Ref": after_id}
    for hook in (before, after):
        env = hook["Environment"]["Variables"]
        assert env["MODEL_NAME"] == MODEL and "REGISTRY_TABLE" in env and int(env["LOCK_TTL_SECONDS"]) >= 600


@pytest.mark.parametrize(("handler", "lock_actions"), [
    (BEFORE_HANDLER, {"dynamodb:PutItem", "dynamodb:GetItem"}),
    (AFTER_HANDLER, {"dynamodb:DeleteItem"}),
])
def test_each_hook_may_touch_only_its_models_lock_and_report_to_its_group(
        default_synth: Synth, handler: str, lock_actions: set[str]) -> None:
    group_id, _ = _group(default_synth)
    _, hook = function_by_handler(default_synth, handler)
    statements = role_statements(default_synth, hook["Role"]["Fn::GetAtt"][0])
    (report,) = [s for s in statements if "codedeploy:PutLifecycleEventHookExecutionStatus" in as_list(s["Action"])]
    assert as_list(report["Action"]) == ["codedeploy:PutLifecycleEventHookExecutionStatus"]
    (resource,) = as_list(report["Resource"])
    assert resource != "*" and {"Ref": group_id} in resource["Fn::Join"][1]  # this deployment group's ARN
    registry = [s for s in statements if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    assert {a for s in registry for a in as_list(s["Action"])} == lock_actions
    for statement in registry:
        assert statement["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [MODEL]}}
        assert "*" not in as_list(statement["Resource"])


def test_the_codedeploy_role_invokes_only_the_two_hooks(default_synth: Synth) -> None:
    _, group = _group(default_synth)
    role_id = group["ServiceRoleArn"]["Fn::GetAtt"][0]
    hooks = {function_by_handler(default_synth, h)[0] for h in (BEFORE_HANDLER, AFTER_HANDLER)}
    invoked = {r["Fn::GetAtt"][0] for s in role_statements(default_synth, role_id)
               for r in as_list(s["Resource"]) if "lambda:InvokeFunction" in as_list(s["Action"])
               and isinstance(r, dict) and "Fn::GetAtt" in r}
    assert invoked == hooks


def test_props_without_alarms_are_refused_before_any_resource() -> None:
    stack = cdk.Stack()
    table = dynamodb.Table(stack, "T", partition_key=KEY)
    props = CodeReleaseProps(alias=None, alarms=[], model_name=MODEL, table=table, layer=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"CodeReleaseProps\.alarms"):
        props.validate()


def _live_version_id(code_dir: Path, layer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(function_module, "stage_function_code", lambda root: code_dir)
    stack = cdk.Stack(cdk.App(), "S")
    table = dynamodb.Table(stack, "T", partition_key=KEY)
    ServingApi(stack, "Serving", ServingApiProps(
        model_bucket=s3.Bucket(stack, "B"), layer=lambda_.LayerVersion(stack, "L", code=lambda_.Code.from_asset(
            str(layer_dir))), model_name=MODEL, registry_table=table))
    (version_id,) = Template.from_stack(stack).find_resources("AWS::Lambda::Version")
    return version_id


def test_a_code_change_publishes_a_new_version_for_codedeploy_to_shift_to(
        tmp_path: Path, layer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = []
    for text in ("VALUE = 1\n", "VALUE = 2\n", "VALUE = 2\n"):
        code = tmp_path / f"code{len(ids)}" / "functions"
        code.mkdir(parents=True)
        (code / "module.py").write_text(text)
        ids.append(_live_version_id(code.parent, layer_dir, monkeypatch))
    assert ids[0] != ids[1]  # new code: a new version
    assert ids[1] == ids[2]  # same code: the same version, nothing to deploy
