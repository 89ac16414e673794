"""`-c slimserve:api=http`: the same routes behind the cheaper HTTP API, authenticated (IAM, or JWT with
`-c slimserve:apiAuth=jwt`), throttled, logged, invoking alias `live` with payload format 1.0; no REST API is left
in the stack. cdk-nag, cfn-lint, checkov and the logical ids check both variants with the others."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from synth_helpers import HTTP_CONTEXT, JWT_CONTEXT, JWT_ISSUER, Synth, build_app

from cdk.app import stack_props_from_context
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.serving_api import ServingApi, ServingApiProps
from cdk.constructs.serving_http_api import JwtAuth

pytestmark = pytest.mark.slow  # full synths with the rule pack

INFERENCE_ROUTES = {"POST /predict", "GET /health", "GET /openapi.json"}


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


# --- JWT auth (`-c slimserve:apiAuth=jwt`) ------------------------------------------------------------------------

def test_with_jwt_every_route_checks_the_token_of_the_configured_issuer_and_audiences(jwt_synth: Synth) -> None:
    authorizer_id, authorizer = jwt_synth.one("AWS::ApiGatewayV2::Authorizer")
    assert authorizer["Properties"]["AuthorizerType"] == "JWT"
    assert authorizer["Properties"]["IdentitySource"] == ["$request.header.Authorization"]
    assert authorizer["Properties"]["JwtConfiguration"] == {"Issuer": JWT_ISSUER,
                                                            "Audience": ["slimserve-client", "slimserve-batch"]}
    found = routes(jwt_synth)
    assert set(found) == INFERENCE_ROUTES | {"POST /feedback"}
    assert {key: (r["AuthorizationType"], r["AuthorizerId"]) for key, r in found.items()} == dict.fromkeys(
        found, ("JWT", {"Ref": authorizer_id}))


def test_with_jwt_only_a_token_with_the_labels_scope_may_post_feedback(jwt_synth: Synth) -> None:
    found = routes(jwt_synth)
    assert found["POST /feedback"]["AuthorizationScopes"] == ["labels/write"]
    assert [key for key in INFERENCE_ROUTES if "AuthorizationScopes" in found[key]] == []  # any valid token


def test_switching_to_jwt_keeps_every_resource_and_so_the_url(http_synth: Synth, jwt_synth: Synth) -> None:
    """IAM -> JWT adds the authorizer and replaces nothing: the API, its routes and stage keep their ids."""
    iam, jwt = set(http_synth.template["Resources"]), set(jwt_synth.template["Resources"])
    authorizer_id, _ = jwt_synth.one("AWS::ApiGatewayV2::Authorizer")
    assert {k for k in iam ^ jwt if "CurrentVersion" not in k} == {authorizer_id}  # versions follow the code


def test_access_logs_name_the_token_subject_and_the_authorizer_error(jwt_synth: Synth) -> None:
    _, stage = jwt_synth.one("AWS::ApiGatewayV2::Stage")
    log_format = json.loads(stage["Properties"]["AccessLogSettings"]["Format"])
    assert log_format["subject"] == "$context.authorizer.claims.sub"
    assert log_format["authorizerError"] == "$context.authorizer.error"


@pytest.fixture
def api_props(layer_dir: Path) -> tuple[Stack, ServingApiProps]:
    stack = Stack(App(), "PropsTest")
    layer = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime
    return stack, ServingApiProps(model_bucket=s3.Bucket(stack, "Models"), layer=layer, model_prefix="models/m/1/")


def test_props_refuse_an_api_key_on_the_http_api(api_props: tuple[Stack, ServingApiProps]) -> None:
    stack, props = api_props
    with pytest.raises(ValueError, match=r"api_key_required needs api='rest': HTTP APIs have no API keys"):
        ServingApi(stack, "Serving", dataclasses.replace(props, api="http", api_key_required=True))
    with pytest.raises(ValueError, match=r"ServingApiProps.api must be 'rest' or 'http', got 'grpc'"):
        ServingApi(stack, "Other", dataclasses.replace(props, api="grpc"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("jwt", "api", "message"), [
    (JwtAuth(JWT_ISSUER, ("client",)), "rest", r"ServingApiProps.jwt_auth needs api='http'"),
    (JwtAuth("http://issuer.example.com", ("client",)), "http",
     r"ServingApiProps.jwt_auth.issuer must be an https:// URL \(the token issuer\), got 'http://issuer"),
    (JwtAuth("https://", ("client",)), "http", r"jwt_auth.issuer must be an https:// URL"),
    (JwtAuth(JWT_ISSUER, ()), "http", r"ServingApiProps.jwt_auth.audience needs one or more audiences"),
    (JwtAuth(JWT_ISSUER, ("a b",)), "http", r"jwt_auth.audience needs one or more audiences"),
    (JwtAuth(JWT_ISSUER, ("client",), feedback_scopes=("labels write",)), "http",
     r"ServingApiProps.jwt_auth.feedback_scopes: a scope is one word of printable characters, got 'labels write'"),
])
def test_props_refuse_jwt_auth_that_cannot_work(api_props: tuple[Stack, ServingApiProps], jwt: JwtAuth,
                                                api: Any, message: str) -> None:
    stack, props = api_props
    with pytest.raises(ValueError, match=message):
        ServingApi(stack, "Serving", dataclasses.replace(props, api=api, jwt_auth=jwt))


def test_jwt_context_is_read(layer_dir: Path) -> None:
    props = stack_props_from_context(App(context={**JWT_CONTEXT, "slimserve:jwtScopes": " slimserve/predict ,"}),
                                     layer_dir)
    assert props.jwt_auth == JwtAuth(JWT_ISSUER, ("slimserve-client", "slimserve-batch"),
                                     scopes=("slimserve/predict",), feedback_scopes=("labels/write",))
    assert stack_props_from_context(App(context=HTTP_CONTEXT), layer_dir).jwt_auth is None  # IAM by default
    listed = {**JWT_CONTEXT, "slimserve:jwtAudience": ["a", "b"]}  # cdk.json may hold a list
    assert stack_props_from_context(App(context=listed), layer_dir).jwt_auth.audience == ("a", "b")  # type: ignore


@pytest.mark.parametrize(("context", "message"), [
    ({**JWT_CONTEXT, "slimserve:api": "rest"}, r"context slimserve:apiAuth=jwt needs slimserve:api=http: the "
                                               r"REST API authenticates with IAM"),
    ({k: v for k, v in JWT_CONTEXT.items() if k != "slimserve:jwtIssuer"},
     r"context slimserve:apiAuth=jwt needs slimserve:jwtIssuer: the https:// URL of the token issuer"),
    ({**JWT_CONTEXT, "slimserve:jwtAudience": " , "}, r"context slimserve:apiAuth=jwt needs slimserve:jwtAudience"),
    ({**JWT_CONTEXT, "slimserve:jwtIssuer": "http://issuer.example.com"},
     r"context slimserve:jwtIssuer must be an https:// URL \(the token issuer\), got 'http://issuer.example.com'"),
    ({**JWT_CONTEXT, "slimserve:jwtScopes": "read write,x"}, r"context slimserve:jwtScopes: a scope is one word"),
    ({**JWT_CONTEXT, "slimserve:apiAuth": "cognito"}, r"context slimserve:apiAuth must be 'iam' or 'jwt', "
                                                      r"got 'cognito'"),
    ({**HTTP_CONTEXT, "slimserve:jwtIssuer": JWT_ISSUER},
     r"context slimserve:jwtIssuer is read only with slimserve:apiAuth=jwt"),
    ({**HTTP_CONTEXT, "slimserve:apiAuth": "iam", "slimserve:jwtAudience": "a"},
     r"context slimserve:jwtAudience is read only with slimserve:apiAuth=jwt"),
])
def test_jwt_context_that_cannot_work_is_refused_by_name(layer_dir: Path, context: dict[str, str],
                                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stack_props_from_context(App(context=context), layer_dir)


def test_context_api_is_read_and_checked(tmp_path: Path, layer_dir: Path) -> None:
    app = App(context={"slimserve:api": "http"})
    assert stack_props_from_context(app, layer_dir).api == "http"
    with pytest.raises(ValueError, match=r"context slimserve:api must be 'rest' or 'http', got 'soap'"):
        stack_props_from_context(App(context={"slimserve:api": "soap"}), layer_dir)
    with pytest.raises(ValueError, match=r"HTTP APIs have no API keys"):
        build_app(outdir=str(tmp_path), layer_dir=layer_dir, parquet_layer_dir=layer_dir,
                  context={**HTTP_CONTEXT, "slimserve:apiKeyRequired": "true"})
