"""`-c slimserve:api=http`: the same routes behind the cheaper HTTP API, IAM-authenticated, throttled, logged,
invoking alias `live` with payload format 1.0; no REST API is left in the stack."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from cfnlint.api import lint_all
from synth_helpers import MODEL_CONTEXT, Synth, build_app, violations
from test_cfn_lint import ALLOWED as CFN_LINT_ALLOWED
from test_checkov import ACCEPTED, checkov, scan, skips_without_reason  # noqa: F401  (checkov: a fixture)

from cdk.app import stack_props_from_context
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.serving_api import ServingApi, ServingApiProps

pytestmark = pytest.mark.slow  # a full synth with the rule pack

HTTP_CONTEXT = {**MODEL_CONTEXT, "slimserve:api": "http"}
INFERENCE_ROUTES = {"POST /predict", "GET /health", "GET /openapi.json"}


@pytest.fixture(scope="module")
def http_synth(synth_once: Callable[..., Synth]) -> Synth:
    return synth_once(**HTTP_CONTEXT)


def routes(synth: Synth) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["RouteKey"]: r["Properties"] for r in synth.resources("AWS::ApiGatewayV2::Route").values()}


def integration_of(synth: Synth, route: dict[str, Any]) -> dict[str, Any]:
    target = route["Target"]["Fn::Join"][1][1]["Ref"]
    return dict(synth.template["Resources"][target]["Properties"])


def test_every_route_is_there_and_iam_authenticated(http_synth: Synth) -> None:
    found = routes(http_synth)
    assert set(found) == INFERENCE_ROUTES | {"POST /feedback"}
    assert {key: r["AuthorizationType"] for key, r in found.items()} == dict.fromkeys(found, "AWS_IAM")


def test_inference_routes_invoke_alias_live_with_payload_format_1_0(http_synth: Synth) -> None:
    alias_id, _ = http_synth.one("AWS::Lambda::Alias")
    found = routes(http_synth)
    for key in INFERENCE_ROUTES:
        integration = integration_of(http_synth, found[key])
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["IntegrationUri"] == {"Ref": alias_id}, key  # the alias CodeDeploy shifts, never $LATEST
        assert integration["PayloadFormatVersion"] == "1.0"
    feedback = integration_of(http_synth, found["POST /feedback"])
    assert feedback["IntegrationUri"]["Fn::GetAtt"][0].startswith("FeedbackFunction")
    assert feedback["PayloadFormatVersion"] == "1.0"


def test_the_api_may_invoke_the_alias_from_its_own_routes_only(http_synth: Synth) -> None:
    alias_id, _ = http_synth.one("AWS::Lambda::Alias")
    api_id, _ = http_synth.one("AWS::ApiGatewayV2::Api")
    grants = [p["Properties"] for p in http_synth.resources("AWS::Lambda::Permission").values()
              if p["Properties"]["FunctionName"] == {"Ref": alias_id}]
    assert len(grants) == len(INFERENCE_ROUTES)
    for grant in grants:
        assert grant["Principal"] == "apigateway.amazonaws.com"
        assert {"Ref": api_id} in grant["SourceArn"]["Fn::Join"][1]


def test_default_stage_is_throttled_logged_and_deploys_itself(http_synth: Synth) -> None:
    _, stage = http_synth.one("AWS::ApiGatewayV2::Stage")
    props = stage["Properties"]
    assert props["StageName"] == "$default" and props["AutoDeploy"] is True
    defaults = ServingApiProps.__dataclass_fields__
    assert props["DefaultRouteSettings"]["ThrottlingRateLimit"] == defaults["throttle_rate_limit"].default
    assert props["DefaultRouteSettings"]["ThrottlingBurstLimit"] == defaults["throttle_burst_limit"].default
    feedback = props["RouteSettings"]["POST /feedback"]
    assert feedback["ThrottlingRateLimit"] <= props["DefaultRouteSettings"]["ThrottlingRateLimit"]
    log_group_id = props["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert '"routeKey": "$context.routeKey"' in props["AccessLogSettings"]["Format"]
    assert '"status": "$context.status"' in props["AccessLogSettings"]["Format"]
    log_group = http_synth.template["Resources"][log_group_id]
    assert log_group["Properties"]["RetentionInDays"] == 30 and log_group["DeletionPolicy"] == "Retain"


def test_no_rest_api_is_left_and_the_url_keeps_its_output_name(http_synth: Synth) -> None:
    assert not [r for r in http_synth.template["Resources"].values() if r["Type"].startswith("AWS::ApiGateway::")]
    url = next(v for k, v in http_synth.template["Outputs"].items() if k.startswith("ServingApiUrl"))
    assert "execute-api" in str(url["Value"])


def test_the_5xx_alarm_reads_the_http_api_metric(http_synth: Synth) -> None:
    api_id, _ = http_synth.one("AWS::ApiGatewayV2::Api")
    alarms = [a["Properties"] for a in http_synth.resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("Namespace") == "AWS/ApiGateway"]
    assert [(a["MetricName"], a["Dimensions"][0]) for a in alarms] == [
        ("5xx", {"Name": "ApiId", "Value": {"Ref": api_id}})]


def test_the_dashboard_draws_the_http_api_metrics(http_synth: Synth) -> None:
    _, dashboard = http_synth.one("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert '\\"ApiId\\"' in body and '\\"5xx\\"' in body and "5XXError" not in body


def test_cdk_nag_reports_nothing(http_synth: Synth) -> None:
    assert http_synth.nag_error is None, "cdk-nag findings:\n" + "\n".join(violations(http_synth))
    assert violations(http_synth) == []


def test_cfn_lint_and_checkov_find_nothing_unaccepted(http_synth: Synth, checkov: Path) -> None:  # noqa: F811
    template = next(http_synth.outdir.glob("*.template.json"))
    assert [m.rule.id for m in lint_all(template.read_text())
            if m.rule.id[0] in "EW" and m.rule.id not in CFN_LINT_ALLOWED] == []
    results = scan(checkov, template)
    assert [f"{f['check_id']} {f['resource']}" for f in results["failed_checks"]] == []
    assert skips_without_reason(results) == []
    assert {s["check_id"] for s in results.get("skipped_checks", [])} <= set(ACCEPTED)


def test_props_refuse_an_api_key_on_the_http_api(layer_dir: Path) -> None:
    stack = Stack(App(), "PropsTest")
    layer = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime
    props = ServingApiProps(model_bucket=s3.Bucket(stack, "Models"), layer=layer, model_prefix="models/m/1/")
    with pytest.raises(ValueError, match=r"api_key_required needs api='rest': HTTP APIs have no API keys"):
        ServingApi(stack, "Serving", dataclasses.replace(props, api="http", api_key_required=True))
    with pytest.raises(ValueError, match=r"ServingApiProps.api must be 'rest' or 'http', got 'grpc'"):
        ServingApi(stack, "Other", dataclasses.replace(props, api="grpc"))  # type: ignore[arg-type]


def test_context_api_is_read_and_checked(tmp_path: Path, layer_dir: Path) -> None:
    app = App(context={"slimserve:api": "http"})
    assert stack_props_from_context(app, layer_dir).api == "http"
    with pytest.raises(ValueError, match=r"context slimserve:api must be 'rest' or 'http', got 'soap'"):
        stack_props_from_context(App(context={"slimserve:api": "soap"}), layer_dir)
    with pytest.raises(ValueError, match=r"HTTP APIs have no API keys"):
        build_app(outdir=str(tmp_path), layer_dir=layer_dir, parquet_layer_dir=layer_dir,
                  context={**HTTP_CONTEXT, "slimserve:apiKeyRequired": "true"})
