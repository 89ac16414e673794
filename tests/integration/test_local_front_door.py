"""The local API hands each route's function the event of the stack's front door: the REST API's proxy event,
or the HTTP API's payload 1.0 event with IAM or with JWT claims read (unverified) from the bearer token; and
the front door and routes are read from the synthesized template (here a hand-written one: no synth)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.local.apigw import IAM_USER_ARN, FrontDoor, unsigned_token, unverified_claims
from pipeline.local.server import call, make_server
from pipeline.local.stack import EmulatedStack

ISSUER = "https://issuer.example.com/pool"
Seen = list[tuple[str, dict[str, Any]]]


def _recording(name: str, seen: Seen) -> Any:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append((name, event))
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"ok": true}'}
    return handler


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(front_door) -> (base url, what each handler received); /predict and /health: inference,
    /feedback: feedback."""
    servers = []

    def start(front_door: FrontDoor) -> tuple[str, Seen]:
        seen: Seen = []
        inference, feedback = _recording("inference", seen), _recording("feedback", seen)
        routes = {("POST", "/predict"): inference, ("GET", "/health"): inference, ("POST", "/feedback"): feedback}
        server = make_server(inference, port=0, quiet=True, front_door=front_door, routes=routes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_jwt_front_door_refuses_a_missing_token_with_the_http_apis_401(serve: Any) -> None:
    url, seen = serve(FrontDoor("http", "jwt", ISSUER))
    assert call(url, "POST", "/predict", {"instances": [[1]]}) == (401, {"message": "Unauthorized"})
    status, body = call(url, "POST", "/predict", {"instances": [[1]]}, headers={"Authorization": "Bearer abc"})
    assert (status, body) == (401, {"message": "Unauthorized"})  # not a JWT at all
    assert seen == []  # no function ran


def test_jwt_front_door_hands_the_tokens_claims_unverified_and_no_iam_identity(serve: Any) -> None:
    url, seen = serve(FrontDoor("http", "jwt", ISSUER))
    token = unsigned_token({"iss": ISSUER, "sub": "labeller-7", "aud": ["a", "b"], "exp": 1})  # long expired
    assert call(url, "POST", "/feedback", {"label": 1}, headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert call(url, "GET", "/health?x=1", headers={"Authorization": token})[0] == 200  # the bare token too
    (first, feedback), (second, health) = seen
    assert (first, second) == ("feedback", "inference")
    context = feedback["requestContext"]
    assert feedback["version"] == "1.0" and context["stage"] == "$default"
    assert (context["path"], context["resourceId"]) == ("/feedback", "POST /feedback")
    assert context["authorizer"]["claims"] == {"iss": ISSUER, "sub": "labeller-7", "aud": "[a b]", "exp": "1"}
    assert context["identity"]["userArn"] is None and context["identity"]["caller"] is None
    assert health["queryStringParameters"] == {"x": "1"} and health["requestContext"]["path"] == "/health"


def test_http_front_door_answers_a_route_it_lacks_itself(serve: Any) -> None:
    url, seen = serve(FrontDoor("http", "iam"))
    assert call(url, "DELETE", "/predict") == (404, {"message": "Not Found"})
    assert call(url, "GET", "/nowhere") == (404, {"message": "Not Found"})
    assert call(url, "POST", "/predict", {"instances": [[1]]})[0] == 200
    (_, event), = seen
    assert event["requestContext"]["identity"]["userArn"] == IAM_USER_ARN
    assert event["requestContext"]["authorizer"] == {"claims": None, "scopes": None}


def test_rest_front_door_keeps_the_proxy_event_and_lets_the_function_answer_a_method(serve: Any) -> None:
    url, seen = serve(FrontDoor())
    assert call(url, "DELETE", "/predict")[0] == 200  # the path's function answers (405 in the real handler)
    assert call(url, "POST", "/feedback", {"label": 1})[0] == 200
    assert [name for name, _ in seen] == ["inference", "feedback"]
    event = seen[0][1]
    assert "version" not in event and event["requestContext"]["stage"] == "local"


def test_unverified_claims_refuses_what_is_not_a_jwt() -> None:
    for header in ("Bearer", "Bearer a.b", "Bearer a.!!!.c", "Bearer a.e30.c.d"):
        with pytest.raises(ValueError):
            unverified_claims(header)
    with pytest.raises(ValueError, match="JSON object"):
        unverified_claims("a.WzFd.c")  # [1]


def _function(logical_id: str) -> dict[str, Any]:
    return {logical_id: {"Type": "AWS::Lambda::Function", "Properties": {"Handler": "m.h"}}}


HTTP_TEMPLATE: dict[str, Any] = {"Resources": {
    **_function("Inference"), **_function("Feedback"),
    "Live": {"Type": "AWS::Lambda::Alias", "Properties": {"FunctionName": {"Ref": "Inference"}, "Name": "live"}},
    "Api": {"Type": "AWS::ApiGatewayV2::Api", "Properties": {"ProtocolType": "HTTP"}},
    "Jwt": {"Type": "AWS::ApiGatewayV2::Authorizer",
            "Properties": {"AuthorizerType": "JWT", "JwtConfiguration": {"Issuer": ISSUER, "Audience": ["x"]}}},
    "LiveIntegration": {"Type": "AWS::ApiGatewayV2::Integration", "Properties": {"IntegrationUri": {"Ref": "Live"}}},
    "FeedbackIntegration": {"Type": "AWS::ApiGatewayV2::Integration",
                            "Properties": {"IntegrationUri": {"Fn::GetAtt": ["Feedback", "Arn"]}}},
    "Predict": {"Type": "AWS::ApiGatewayV2::Route", "Properties": {
        "RouteKey": "POST /predict", "Target": {"Fn::Join": ["", ["integrations/", {"Ref": "LiveIntegration"}]]}}},
    "Label": {"Type": "AWS::ApiGatewayV2::Route", "Properties": {
        "RouteKey": "POST /feedback",
        "Target": {"Fn::Join": ["", ["integrations/", {"Ref": "FeedbackIntegration"}]]}}},
}}


def _uri(target: dict[str, Any]) -> dict[str, Any]:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":apigateway:lambda:path/functions/", target,
                              "/invocations"]]}


REST_TEMPLATE: dict[str, Any] = {"Resources": {
    **_function("Inference"),
    "Live": {"Type": "AWS::Lambda::Alias", "Properties": {"FunctionName": {"Ref": "Inference"}, "Name": "live"}},
    "Rest": {"Type": "AWS::ApiGateway::RestApi", "Properties": {}},
    "V1": {"Type": "AWS::ApiGateway::Resource",
           "Properties": {"ParentId": {"Fn::GetAtt": ["Rest", "RootResourceId"]}, "PathPart": "v1"}},
    "Score": {"Type": "AWS::ApiGateway::Resource", "Properties": {"ParentId": {"Ref": "V1"}, "PathPart": "score"}},
    "ScorePost": {"Type": "AWS::ApiGateway::Method", "Properties": {
        "HttpMethod": "POST", "ResourceId": {"Ref": "Score"}, "Integration": {"Uri": _uri({"Ref": "Live"})}}},
}}


def test_the_front_door_and_routes_come_from_the_template() -> None:
    http = EmulatedStack(HTTP_TEMPLATE)
    assert http.front_door() == FrontDoor("http", "jwt", ISSUER)
    assert http.api_routes() == {("POST", "/predict"): "Inference", ("POST", "/feedback"): "Feedback"}
    rest = EmulatedStack(REST_TEMPLATE)
    assert rest.front_door() == FrontDoor("rest")
    assert rest.api_routes() == {("POST", "/v1/score"): "Inference"}
    iam = {k: v for k, v in HTTP_TEMPLATE["Resources"].items() if k != "Jwt"}
    assert EmulatedStack({"Resources": iam}).front_door() == FrontDoor("http", "iam")
