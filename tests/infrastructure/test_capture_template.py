"""Request capture in the template: capture/ expires, inference may only PutObject there, readers are granted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks
from synth_helpers import Synth, as_list, function_by_handler, model_bucket_id, role_statements, synth_app

from cdk.app import STACK_ID, load_cdk_json_context
from cdk.constructs.model_store import ModelStoreProps
from cdk.constructs.serving_api import HANDLER, CaptureProps
from cdk.stacks.serving_stack import ServingStack, ServingStackProps

CAPTURE = CaptureProps(sample_rate=0.25, max_records=200, max_seconds=30, drop_columns=("name",),
                       hash_columns=("email", "phone"))


@pytest.fixture(scope="module")
def capture_synth(tmp_path_factory: pytest.TempPathFactory, layer_dir: Path) -> Synth:
    """The serving stack with capture on at 25% and a 14-day expiry, with cdk-nag attached."""
    outdir = tmp_path_factory.mktemp("capture.out")
    app = App(outdir=str(outdir), context=load_cdk_json_context())
    ServingStack(app, STACK_ID, ServingStackProps(model_name="churn", layer_dir=layer_dir, capture=CAPTURE,
                                                  model_store=ModelStoreProps(capture_expiration_days=14)))
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return synth_app(app, outdir)


def capture_rule(synth: Synth) -> dict[str, Any]:
    bucket = synth.template["Resources"][model_bucket_id(synth)]["Properties"]
    (rule,) = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "capture/"]
    return rule


def inference_s3_statements(synth: Synth) -> list[dict[str, Any]]:
    _, function = function_by_handler(synth, HANDLER)
    statements = role_statements(synth, function["Role"]["Fn::GetAtt"][0])
    return [s for s in statements if any(str(a).startswith("s3:") for a in as_list(s["Action"]))]


def test_capture_expires_after_thirty_days_by_default(default_synth: Synth) -> None:
    rule = capture_rule(default_synth)
    assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] == 30
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1  # the bucket is versioned: no copy lingers


def test_the_expiry_is_a_prop(capture_synth: Synth) -> None:
    assert capture_rule(capture_synth)["ExpirationInDays"] == 14


def test_capture_off_grants_no_write_and_sets_nothing(default_synth: Synth) -> None:
    _, function = function_by_handler(default_synth, HANDLER)
    variables = function["Environment"]["Variables"]
    assert variables["CAPTURE_SAMPLE_RATE"] == "0.0" and "MODEL_BUCKET" not in variables
    assert all(a == "s3:GetObject" for s in inference_s3_statements(default_synth) for a in as_list(s["Action"]))


def test_inference_may_only_put_objects_under_its_models_capture_prefix(capture_synth: Synth) -> None:
    writes = [s for s in inference_s3_statements(capture_synth) if as_list(s["Action"]) != ["s3:GetObject"]]
    assert len(writes) == 1 and writes[0]["Action"] == "s3:PutObject" and writes[0]["Effect"] == "Allow"
    (resource,) = as_list(writes[0]["Resource"])
    assert resource["Fn::Join"][1][-1] == "/capture/churn/*"
    bucket = model_bucket_id(capture_synth)
    assert resource["Fn::Join"][1][0] == {"Fn::GetAtt": [bucket, "Arn"]}


def test_inference_is_told_the_capture_settings(capture_synth: Synth) -> None:
    _, function = function_by_handler(capture_synth, HANDLER)
    variables = function["Environment"]["Variables"]
    assert variables["MODEL_BUCKET"] == {"Ref": model_bucket_id(capture_synth)}
    assert {k: v for k, v in variables.items() if k.startswith("CAPTURE_")} == {
        "CAPTURE_SAMPLE_RATE": "0.25", "CAPTURE_MAX_RECORDS": "200", "CAPTURE_MAX_SECONDS": "30.0",
        "CAPTURE_DROP_COLUMNS": "name", "CAPTURE_HASH_COLUMNS": "email,phone"}


def test_capture_on_passes_cdk_nag(capture_synth: Synth) -> None:
    assert capture_synth.nag_error is None, capture_synth.nag_error


def test_read_grant_is_get_and_prefixed_list_only(layer_dir: Path) -> None:
    from aws_cdk.assertions import Template

    from cdk.constructs.function import FunctionProps, SlimserveFunction
    from functions.common.settings import ValidationSettings

    stack = ServingStack(App(context=load_cdk_json_context()), "CaptureReaders",
                         ServingStackProps(model_name="churn", layer_dir=layer_dir))
    reader = SlimserveFunction(stack, "Reader", FunctionProps(
        handler="functions.validation.handler.lambda_handler", description="a capture reader",
        settings=ValidationSettings(registry_table="t"), layers=[stack.layers.runtime], memory_size=512,
        timeout_seconds=60, reserved_concurrency=1, invoked_by="a test"))
    stack.model_store.grant_read_capture(reader, "churn")
    policies = Template.from_stack(stack).find_resources("AWS::IAM::Policy")
    (policy,) = [p for k, p in policies.items() if k.startswith("Reader") and "Default" in k]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action = {s["Action"]: s for s in statements if str(s["Action"]).startswith("s3:")}
    assert set(by_action) == {"s3:GetObject", "s3:ListBucket"}
    assert by_action["s3:GetObject"]["Resource"]["Fn::Join"][1][-1] == "/capture/churn/*"
    assert by_action["s3:ListBucket"]["Condition"] == {"StringLike": {"s3:prefix": ["capture/churn/*"]}}


@pytest.mark.parametrize(("capture", "message"), [
    (CaptureProps(sample_rate=1.5), "capture.sample_rate"),
    (CaptureProps(max_records=0), "max_records"),
    (CaptureProps(hash_columns=("a,b",)), "comma"),
])
def test_bad_capture_props_are_refused_by_name(layer_dir: Path, capture: CaptureProps, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServingStack(App(context=load_cdk_json_context()), "BadCapture",
                     ServingStackProps(layer_dir=layer_dir, capture=capture))


def test_bad_expiry_is_refused_by_name(synth_once: Callable[..., Synth]) -> None:
    with pytest.raises(ValueError, match="capture_expiration_days"):
        ModelStoreProps(capture_expiration_days=0).validate()
