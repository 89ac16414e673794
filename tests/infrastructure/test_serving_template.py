"""The synthesized serving stack keeps its security and routing promises (Template assertions)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from synth_helpers import (
    MODEL_PREFIX,
    Synth,
    as_list,
    function_by_handler,
    model_bucket_id,
    resource_id,
    role_statements,
)

pytestmark = pytest.mark.slow  # the first test in a session pays for a full synth (~5-10 s)

READ_ONLY_S3_ACTIONS = {"s3:GetObject"}  # no s3:List*: the function never lists the model bucket
INFERENCE_HANDLER = "functions.inference.handler.lambda_handler"
FEEDBACK_HANDLER = "functions.feedback.handler.lambda_handler"
# Logical-id prefix of the training construct: its two buckets are versioned and access-logged too, and its
# SageMaker role writes job outputs (test_training_template checks them); helpers here skip them.


@pytest.fixture(scope="module")
def template(default_synth: Synth) -> Template:
    return Template.from_json(default_synth.template)


def _inference_function(synth: Synth) -> dict[str, Any]:
    """The inference function (the stack also holds the validation gate's)."""
    (fn,) = [f for f in synth.resources("AWS::Lambda::Function").values() if f["Properties"]["Handler"] ==
             INFERENCE_HANDLER]
    return fn


def _registry_table_id(synth: Synth) -> str:
    """The registry table (the feedback construct's labels table sits beside it)."""
    return resource_id(synth, "RegistryTable", "AWS::DynamoDB::Table")


def _paths(synth: Synth) -> dict[str, str]:
    """Each API resource's path part mapped to its logical id."""
    return {v["Properties"]["PathPart"]: k for k, v in synth.resources("AWS::ApiGateway::Resource").items()}


def _methods_on(synth: Synth, path: str) -> dict[str, dict[str, Any]]:
    """The methods of one API resource, by logical id."""
    resource = {"Ref": _paths(synth)[path]}
    return {k: v["Properties"] for k, v in synth.resources("AWS::ApiGateway::Method").items()
            if v["Properties"]["ResourceId"] == resource}


# --- model store ---------------------------------------------------------------------------------

def test_every_bucket_is_private_encrypted_and_retained(default_synth: Synth) -> None:
    buckets = default_synth.resources("AWS::S3::Bucket")
    assert model_bucket_id(default_synth) in buckets
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True,
            "IgnorePublicAcls": True, "RestrictPublicBuckets": True}, logical_id
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] in ("AES256", "aws:kms"), logical_id
        assert bucket["DeletionPolicy"] == "Retain", logical_id


def test_model_bucket_is_versioned_and_access_logged_to_the_log_bucket(default_synth: Synth) -> None:
    model_id = model_bucket_id(default_synth)
    logging = default_synth.template["Resources"][model_id]["Properties"]["LoggingConfiguration"]
    log_id = logging["DestinationBucketName"]["Ref"]
    assert log_id != model_id
    assert "LoggingConfiguration" not in default_synth.template["Resources"][log_id]["Properties"]


def test_access_log_bucket_expires_its_logs(default_synth: Synth) -> None:
    model = default_synth.template["Resources"][model_bucket_id(default_synth)]
    log_id = model["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    rules = default_synth.template["Resources"][log_id]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("ExpirationInDays", 0) > 0 for r in rules)


def test_every_bucket_denies_requests_without_tls(default_synth: Synth) -> None:
    policies = default_synth.resources("AWS::S3::BucketPolicy").values()
    covered = set()
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny"
                assert statement["Action"] == "s3:*"
                assert statement["Principal"] == {"AWS": "*"}
                covered.add(policy["Properties"]["Bucket"]["Ref"])
    assert covered == set(default_synth.resources("AWS::S3::Bucket"))


# --- function ------------------------------------------------------------------------------------

def test_function_runtime_handler_tracing_and_limits(template: Template) -> None:
    template.has_resource_properties("AWS::Lambda::Function", {
        "Runtime": "python3.12",
        "Handler": "functions.inference.handler.lambda_handler",
        "Architectures": ["x86_64"],
        "TracingConfig": {"Mode": "Active"},
        "ReservedConcurrentExecutions": 10,
        "MemorySize": 1024,
        "Timeout": 10,
        "Layers": [{"Ref": Match.string_like_regexp("LayersRuntime")}],
        "LoggingConfig": {"LogGroup": {"Ref": Match.string_like_regexp("ServingFunctionLogs")}},
    })


def test_function_environment_routes_by_the_registry(default_synth: Synth, template: Template) -> None:
    table_id = _registry_table_id(default_synth)
    env = _inference_function(default_synth)["Properties"]["Environment"]["Variables"]
    assert "MODEL_URI" not in env and "MODEL_MANIFEST_SHA256" not in env  # no model is fixed at synth time
    template.has_resource_properties("AWS::Lambda::Function", {"Environment": {"Variables": {
        "MODEL_NAME": "churn",
        "REGISTRY_TABLE": {"Ref": table_id},
        "MAX_ROWS": "10000",
        "MAX_BODY_BYTES": str(5 * 1024 * 1024),
        "POWERTOOLS_SERVICE_NAME": "slimserve-inference",
        "POWERTOOLS_METRICS_NAMESPACE": "Slimserve",
    }}})


def test_function_logs_have_a_retention(default_synth: Synth) -> None:
    groups = default_synth.resources("AWS::Logs::LogGroup")
    fn = _inference_function(default_synth)["Properties"]
    assert groups[fn["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]["RetentionInDays"] == 30
    assert {g["Properties"]["RetentionInDays"] for g in groups.values()} == {30}


def test_function_reads_only_its_models_bundles_and_routing_item(default_synth: Synth) -> None:
    fn = _inference_function(default_synth)
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    assert "ManagedPolicyArns" not in default_synth.template["Resources"][role_id]["Properties"]
    model_arn = {"Fn::GetAtt": [model_bucket_id(default_synth), "Arn"]}
    s3_statements = [s for s in role_statements(default_synth, role_id)
                     if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert len(s3_statements) == 1
    statement = s3_statements[0]
    assert statement["Effect"] == "Allow"
    assert set(as_list(statement["Action"])) == READ_ONLY_S3_ACTIONS
    assert statement["Resource"] == {"Fn::Join": ["", [model_arn, f"/{MODEL_PREFIX.rsplit('/', 2)[0]}/*"]]}
    table_id = _registry_table_id(default_synth)
    (registry,) = [s for s in role_statements(default_synth, role_id)
                   if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    assert (registry["Action"], registry["Resource"]) == ("dynamodb:GetItem", {"Fn::GetAtt": [table_id, "Arn"]})
    assert registry["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["churn"]}}


def test_no_statement_grants_s3_writes_but_validation_reports_or_s3_on_every_resource(default_synth: Synth) -> None:
    report_objects = {"Fn::Join": ["", [{"Fn::GetAtt": [model_bucket_id(default_synth), "Arn"]},
                                        "/models/*/validation-report.json"]]}
    (artifacts,) = [v["Value"]["Ref"] for k, v in default_synth.template["Outputs"].items()
                    if k.startswith("TrainingArtifactsBucketName")]
    runs_objects = {"Fn::Join": ["", [{"Fn::GetAtt": [artifacts, "Arn"]}, "/runs/*"]]}
    # The retraining import writes the trained bundles of the stack's model.
    imported = {"Fn::Join": ["", [{"Fn::GetAtt": [model_bucket_id(default_synth), "Arn"]}, "/models/churn/*"]]}
    # The feedback files function writes one outcome per label file, outside feedback/.
    feedback_results = {"Fn::Join": ["", [{"Fn::GetAtt": [model_bucket_id(default_synth), "Arn"]},
                                          "/feedback-results/*"]]}
    for policy in default_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = as_list(statement["Action"])
            s3_actions = [a for a in actions if a.startswith("s3:")]
            assert not [a for a in s3_actions if a.startswith("s3:Delete") or a == "s3:*"], statement
            if s3_actions == ["s3:PutBucketNotification"]:  # CDK's handler sets the model bucket's feedback/ one
                assert all(r["Ref"].startswith("BucketNotificationsHandler") for r in policy["Properties"]["Roles"])
                assert statement["Resource"] == {"Fn::GetAtt": [model_bucket_id(default_synth), "Arn"]}, statement
            elif any(a.startswith("s3:Put") for a in s3_actions):  # the gate's report per bundle; training jobs' runs/
                assert statement["Resource"] in (report_objects, runs_objects, imported, feedback_results), statement
            if s3_actions:
                assert "*" not in as_list(statement["Resource"]), statement


# --- alias and API -------------------------------------------------------------------------------

def test_live_alias_points_at_a_published_version(default_synth: Synth) -> None:
    alias = default_synth.one("AWS::Lambda::Alias")[1]["Properties"]
    version_id, _ = default_synth.one("AWS::Lambda::Version")
    assert alias["Name"] == "live"
    assert alias["FunctionVersion"] == {"Fn::GetAtt": [version_id, "Version"]}


def test_routes_and_methods(default_synth: Synth) -> None:
    paths = _paths(default_synth)
    assert set(paths) == {"predict", "health", "openapi.json", "feedback"}
    routes = {(m["Properties"]["HttpMethod"], m["Properties"]["ResourceId"]["Ref"])
              for m in default_synth.resources("AWS::ApiGateway::Method").values()}
    assert routes == {("POST", paths["predict"]), ("GET", paths["health"]), ("GET", paths["openapi.json"]),
                      ("POST", paths["feedback"])}


def _integration_target(method: dict[str, Any]) -> Any:
    """What a Lambda proxy method invokes: the function or alias token of its invocation URI."""
    assert method["Integration"]["Type"] == "AWS_PROXY" and method["Integration"]["IntegrationHttpMethod"] == "POST"
    separator, parts = method["Integration"]["Uri"]["Fn::Join"]
    assert separator == "" and parts[-1] == "/invocations" and parts[-3].endswith(":lambda:path/2015-03-31/functions/")
    return parts[-2]


def test_every_method_requires_iam_and_invokes_its_function(default_synth: Synth) -> None:
    """/predict, /health and /openapi.json invoke the inference alias `live` (never $LATEST: code reaches it by
    canary); POST /feedback invokes the feedback function, which has no canary release and so no alias."""
    alias_id, _ = default_synth.one("AWS::Lambda::Alias")
    feedback_id, _ = function_by_handler(default_synth, FEEDBACK_HANDLER)
    expected = {"predict": {"Ref": alias_id}, "health": {"Ref": alias_id}, "openapi.json": {"Ref": alias_id},
                "feedback": {"Fn::GetAtt": [feedback_id, "Arn"]}}
    for path, target in expected.items():
        (method,) = _methods_on(default_synth, path).values()
        assert method["AuthorizationType"] == "AWS_IAM", path
        assert method["ApiKeyRequired"] is False, path
        assert _integration_target(method) == target, f"/{path} must invoke {target}"


def test_lambda_permissions_are_on_the_alias_or_the_feedback_function(default_synth: Synth) -> None:
    """API Gateway may invoke alias `live` for the inference routes and the feedback function for /feedback,
    nothing else (not the inference function's $LATEST)."""
    alias_id, _ = default_synth.one("AWS::Lambda::Alias")
    feedback_id, _ = function_by_handler(default_synth, FEEDBACK_HANDLER)
    permissions = [p["Properties"] for p in default_synth.resources("AWS::Lambda::Permission").values()
                   if p["Properties"]["Principal"] == "apigateway.amazonaws.com"]
    routes = {"/POST/predict", "/GET/health", "/GET/openapi.json", "/POST/feedback"}
    granted = {(p["SourceArn"]["Fn::Join"][1][-1].removeprefix("/test-invoke-stage"), json.dumps(p["FunctionName"]))
               for p in permissions}
    alias, feedback = json.dumps({"Ref": alias_id}), json.dumps({"Fn::GetAtt": [feedback_id, "Arn"]})
    # Each route for the stage and for the console's test invocations, on the target it is integrated with.
    assert {route for route, _ in granted} == routes
    assert granted == {(route, feedback if route == "/POST/feedback" else alias) for route in routes}


def test_api_is_regional(template: Template) -> None:
    template.has_resource_properties("AWS::ApiGateway::RestApi", {"EndpointConfiguration": {"Types": ["REGIONAL"]}})


def test_stage_logs_traces_and_throttles(template: Template) -> None:
    template.has_resource_properties("AWS::ApiGateway::Stage", {
        "StageName": "v1",
        "TracingEnabled": True,
        "AccessLogSetting": {
            "DestinationArn": Match.any_value(),
            "Format": Match.string_like_regexp(r'"requestId":"\$context.requestId"'),
        },
        "MethodSettings": [{
            "HttpMethod": "*", "ResourcePath": "/*",
            "LoggingLevel": "INFO", "MetricsEnabled": True, "DataTraceEnabled": False,
            "ThrottlingRateLimit": 50, "ThrottlingBurstLimit": 100,
        }, {  # POST /feedback below the stage's limits (FeedbackSettings' defaults)
            "HttpMethod": "POST", "ResourcePath": "/~1feedback",
            "LoggingLevel": "INFO", "MetricsEnabled": True, "DataTraceEnabled": False,
            "ThrottlingRateLimit": 10, "ThrottlingBurstLimit": 20,
        }],
    })


def test_predict_body_is_validated_against_a_schema(default_synth: Synth) -> None:
    validator_id, validator = default_synth.one("AWS::ApiGateway::RequestValidator")
    assert validator["Properties"]["ValidateRequestBody"] is True
    assert validator["Properties"]["ValidateRequestParameters"] is True
    model_id, model = default_synth.one("AWS::ApiGateway::Model")
    (post,) = _methods_on(default_synth, "predict").values()
    assert post["HttpMethod"] == "POST"
    assert post["RequestValidatorId"] == {"Ref": validator_id}
    assert post["RequestModels"] == {"application/json": {"Ref": model_id}}
    schema = model["Properties"]["Schema"]
    assert schema["type"] == "object" and schema["required"] == ["instances"]
    assert schema["properties"]["instances"]["type"] == "array"
    assert schema["properties"]["instances"]["minItems"] == 1
    assert schema["properties"]["id"]["type"] == "string"


def test_gateway_errors_use_the_handler_error_shape(default_synth: Synth) -> None:
    responses = {r["Properties"]["ResponseType"]: r["Properties"]["ResponseTemplates"]["application/json"]
                 for r in default_synth.resources("AWS::ApiGateway::GatewayResponse").values()}
    assert '"code": "invalid_input"' in responses["BAD_REQUEST_BODY"]
    assert all('"error": {"code":' in body and '"request_id": "$context.requestId"' in body
               for body in responses.values())


def test_no_usage_plan_without_api_keys(template: Template) -> None:
    template.resource_count_is("AWS::ApiGateway::UsagePlan", 0)
    template.resource_count_is("AWS::ApiGateway::ApiKey", 0)


def test_outputs_name_the_api_url_and_function(default_synth: Synth) -> None:
    outputs = default_synth.template["Outputs"]
    assert [k for k in outputs if k.startswith("ServingApiUrl")], outputs
    assert [k for k in outputs if k.startswith("ServingFunctionName")], outputs
    assert not [k for k in outputs if "Endpoint" in k], "RestApi's duplicate Endpoint output should be gone"


# --- API keys variant ----------------------------------------------------------------------------

def test_api_key_variant_requires_keys_and_iam_on_every_method(api_key_synth: Synth) -> None:
    methods = api_key_synth.resources("AWS::ApiGateway::Method").values()
    assert methods
    for method in methods:
        assert method["Properties"]["ApiKeyRequired"] is True
        assert method["Properties"]["AuthorizationType"] == "AWS_IAM"


def test_api_key_variant_has_a_throttled_usage_plan_on_the_stage(api_key_synth: Synth) -> None:
    stage_id, _ = api_key_synth.one("AWS::ApiGateway::Stage")
    plan_id, plan = api_key_synth.one("AWS::ApiGateway::UsagePlan")
    assert plan["Properties"]["Throttle"] == {"RateLimit": 50, "BurstLimit": 100}
    assert [s["Stage"] for s in plan["Properties"]["ApiStages"]] == [{"Ref": stage_id}]
    key_id, _ = api_key_synth.one("AWS::ApiGateway::ApiKey")
    link = api_key_synth.one("AWS::ApiGateway::UsagePlanKey")[1]["Properties"]
    assert link["KeyId"] == {"Ref": key_id} and link["UsagePlanId"] == {"Ref": plan_id}


def test_arm64_context_switches_function_and_layer(api_key_synth: Synth) -> None:
    fn = _inference_function(api_key_synth)["Properties"]
    layer = api_key_synth.one("AWS::Lambda::LayerVersion")[1]["Properties"]
    assert fn["Architectures"] == ["arm64"]
    assert layer["CompatibleArchitectures"] == ["arm64"]
    assert layer["CompatibleRuntimes"] == ["python3.12"]
