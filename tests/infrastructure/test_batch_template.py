"""Batch scoring (opt-in) keeps its promises in the synthesized stack: S3 incoming/ → SQS (+DLQ) →
batch function; big CSVs → a Distributed Map, then one run manifest; least privilege; alarms."""

from __future__ import annotations

import json
from typing import Any

import pytest
from synth_helpers import Synth, as_list, function_by_handler, model_bucket_id, resource_id, role_statements

from cdk.constructs.batch_scoring import (
    FINALIZE_HANDLER,
    FINALIZE_STATE,
    HANDLER,
    MAP_HANDLER,
    MAP_STATE,
    SCORE_CHUNK_STATE,
)
from functions.batch import MAP_BATCH_INPUT
from functions.common.settings import BatchSettings

pytestmark = pytest.mark.slow  # the first test in a session pays for a full synth (~10 s)

INFERENCE_HANDLER = "functions.inference.handler.lambda_handler"
# Placeholders for CloudFormation pseudo parameters when an Fn::Join is rendered to a string.
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012",
          "AWS::URLSuffix": "amazonaws.com"}
READ_ACTIONS = ("s3:Get", "s3:List")
# Logical-id prefix of the (always on) training construct: its versioned buckets and its own state machine
# are not batch scoring's (test_training_template checks them).


# --- helpers -------------------------------------------------------------------------------------

def _registry_table_id(synth: Synth) -> str:
    (table_id,) = [k for k in synth.resources("AWS::DynamoDB::Table") if k.startswith("Registry")]
    return table_id


def _role_id(function_props: dict[str, Any]) -> str:
    return function_props["Role"]["Fn::GetAtt"][0]


def _s3_statements(synth: Synth, role_id: str) -> list[dict[str, Any]]:
    return [s for s in role_statements(synth, role_id) if any(a.startswith("s3:") for a in as_list(s["Action"]))]


def _scoring_notifications(synth: Synth) -> dict[str, Any]:
    """Batch scoring's bucket notification (the model bucket has its own, for feedback/ files)."""
    return synth.template["Resources"][resource_id(synth, "Batch", "Custom::S3BucketNotifications")]["Properties"]


def _scoring_bucket_id(synth: Synth) -> str:
    return _scoring_notifications(synth)["BucketName"]["Ref"]


def _state_machine(synth: Synth) -> tuple[str, dict[str, Any]]:
    """The batch state machine, as (logical id, resource); the stack also holds the training one."""
    found = [(k, v) for k, v in synth.resources("AWS::StepFunctions::StateMachine").items()
             if k.startswith("Batch")]
    assert len(found) == 1, f"expected one batch state machine, found {[k for k, _ in found]}"
    return found[0]


def _object_pattern(resource: Any, bucket_id: str) -> str | None:
    """'scored/*' for `<bucket ARN>/scored/*`; None for anything else (another bucket, a bucket ARN)."""
    if isinstance(resource, dict) and "Fn::Join" in resource:
        parts = resource["Fn::Join"][1]
        if len(parts) == 2 and parts[0] == {"Fn::GetAtt": [bucket_id, "Arn"]} and isinstance(parts[1], str):
            return parts[1].removeprefix("/")
    return None


def _s3_grants(synth: Synth, role_id: str, bucket_id: str, write: bool) -> set[str]:
    """Object key patterns of `bucket_id` on which the role may read (write=False) or write (write=True)."""
    patterns: set[str] = set()
    for statement in _s3_statements(synth, role_id):
        actions = [a for a in as_list(statement["Action"]) if a.startswith("s3:")]
        if any(not a.startswith(READ_ACTIONS) for a in actions) == write:
            patterns |= {p for r in as_list(statement["Resource"]) if (p := _object_pattern(r, bucket_id))}
    return patterns


def _queues(synth: Synth) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """(incoming queue, dead-letter queue), each as (logical id, properties); the feedback review queue has a
    dead-letter queue too."""
    queues = synth.resources("AWS::SQS::Queue")
    (incoming,) = [(k, v["Properties"]) for k, v in queues.items()
                   if k.startswith("Batch") and "RedrivePolicy" in v["Properties"]]
    dlq_id = incoming[1]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    return incoming, (dlq_id, queues[dlq_id]["Properties"])


def _render(part: Any) -> str:
    if isinstance(part, str):
        return part
    if "Ref" in part:
        return PSEUDO.get(part["Ref"], f"<Ref:{part['Ref']}>")
    if "Fn::GetAtt" in part:
        return f"<GetAtt:{part['Fn::GetAtt'][0]}.{part['Fn::GetAtt'][1]}>"
    raise AssertionError(f"unexpected token in the state machine definition: {part}")


def _definition(synth: Synth) -> dict[str, Any]:
    """The state machine's ASL, tokens rendered as placeholder strings (`<Ref:Id>`, `<GetAtt:Id.Arn>`)."""
    body = _state_machine(synth)[1]["Properties"]["DefinitionString"]
    if isinstance(body, str):
        return json.loads(body)
    separator, parts = body["Fn::Join"]
    assert separator == ""
    return json.loads("".join(_render(p) for p in parts))


def _alarms_on(synth: Synth, metric_name: str) -> list[dict[str, Any]]:
    return [a["Properties"] for a in synth.resources("AWS::CloudWatch::Alarm").values()
            if a["Properties"].get("MetricName") == metric_name]


# --- opt-in --------------------------------------------------------------------------------------

def test_batch_scoring_can_be_switched_off(default_synth: Synth) -> None:
    """With `slimserve:batchScoring=false` the stack is exactly the serving stack."""
    assert not [k for k in default_synth.resources("AWS::SQS::Queue") if k.startswith("Batch")]
    assert not [k for k in default_synth.template["Resources"] if k.startswith("Batch")]
    # The one bucket notification of the serving stack is the model bucket's feedback/ files.
    notifications = default_synth.resources("Custom::S3BucketNotifications")
    assert [k for k in notifications if not k.startswith("ModelStoreModelBucket")] == []


# --- scoring bucket ------------------------------------------------------------------------------

def test_scoring_bucket_is_private_encrypted_versioned_retained_and_access_logged(batch_synth: Synth) -> None:
    scoring_id = _scoring_bucket_id(batch_synth)
    bucket = batch_synth.template["Resources"][scoring_id]
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert bucket["DeletionPolicy"] == "Retain"
    # The same access-log bucket as the model bucket, under its own prefix.
    model_bucket = batch_synth.template["Resources"][model_bucket_id(batch_synth)]
    model_logging = model_bucket["Properties"]["LoggingConfiguration"]
    assert props["LoggingConfiguration"] == {"DestinationBucketName": model_logging["DestinationBucketName"],
                                             "LogFilePrefix": "scoring-bucket/"}


def test_scoring_bucket_aborts_incomplete_multipart_uploads_after_a_day(batch_synth: Synth) -> None:
    props = batch_synth.template["Resources"][_scoring_bucket_id(batch_synth)]["Properties"]
    rules = props["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 1}
               for r in rules)
    assert not any("ExpirationInDays" in r or "Prefix" in r for r in rules), "scored files must never expire"


def test_every_bucket_denies_requests_without_tls(batch_synth: Synth) -> None:
    covered = set()
    for policy in batch_synth.resources("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
                covered.add(policy["Properties"]["Bucket"]["Ref"])
    assert covered == set(batch_synth.resources("AWS::S3::Bucket"))
    assert len(covered) == 5  # model, access logs, scoring, training data, training artifacts


# --- S3 → SQS (+DLQ) -----------------------------------------------------------------------------

def test_objects_created_under_incoming_notify_the_queue(batch_synth: Synth) -> None:
    (incoming_id, _), _ = _queues(batch_synth)
    notifications = _scoring_notifications(batch_synth)
    assert notifications["NotificationConfiguration"] == {"QueueConfigurations": [{
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}},
        "QueueArn": {"Fn::GetAtt": [incoming_id, "Arn"]},
    }]}
    assert notifications["BucketName"] == {"Ref": _scoring_bucket_id(batch_synth)}


def test_only_the_scoring_bucket_may_send_to_the_queue(batch_synth: Synth) -> None:
    (incoming_id, _), _ = _queues(batch_synth)
    (policy,) = [p["Properties"] for p in batch_synth.resources("AWS::SQS::QueuePolicy").values()
                 if p["Properties"]["Queues"] == [{"Ref": incoming_id}]]
    allows = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert len(allows) == 1
    assert allows[0]["Principal"] == {"Service": "s3.amazonaws.com"}
    assert "sqs:SendMessage" in allows[0]["Action"]
    assert allows[0]["Condition"] == {
        "ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [_scoring_bucket_id(batch_synth), "Arn"]}}}


def test_both_queues_are_encrypted_and_deny_requests_without_tls(batch_synth: Synth) -> None:
    queues = batch_synth.resources("AWS::SQS::Queue")
    assert {queue_id for queue_id, _ in _queues(batch_synth)} <= set(queues)
    for logical_id, queue in queues.items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, logical_id
    denied = set()
    for policy in batch_synth.resources("AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny" and statement["Action"] == "sqs:*"
                denied |= {q["Ref"] for q in policy["Properties"]["Queues"]}
    assert denied == set(queues)


def test_visibility_timeout_is_six_times_the_function_timeout(batch_synth: Synth) -> None:
    (_, incoming), _ = _queues(batch_synth)
    _, fn = function_by_handler(batch_synth, HANDLER)
    assert fn["Timeout"] == 900
    assert incoming["VisibilityTimeout"] == 6 * fn["Timeout"]


def test_messages_move_to_the_dlq_after_three_receives_and_stay_14_days(batch_synth: Synth) -> None:
    (_, incoming), (dlq_id, dlq) = _queues(batch_synth)
    assert incoming["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 3}
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert "RedrivePolicy" not in dlq


def test_a_message_in_the_dlq_raises_an_alarm(batch_synth: Synth) -> None:
    _, (dlq_id, _) = _queues(batch_synth)
    (alarm,) = [a for a in _alarms_on(batch_synth, "ApproximateNumberOfMessagesVisible")
                if a["Dimensions"][0]["Value"]["Fn::GetAtt"][0].startswith("Batch")]
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq_id, "QueueName"]}}]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_batch_function_consumes_the_queue_with_partial_batch_responses(batch_synth: Synth) -> None:
    (incoming_id, _), _ = _queues(batch_synth)
    fn_id, fn = function_by_handler(batch_synth, HANDLER)
    mapping = batch_synth.one("AWS::Lambda::EventSourceMapping")[1]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [incoming_id, "Arn"]}
    assert mapping["FunctionName"] == {"Ref": fn_id}
    assert mapping["BatchSize"] == 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # Never more pollers than the function may run: a throttled receive would count toward the DLQ.
    assert mapping["ScalingConfig"]["MaximumConcurrency"] <= fn["ReservedConcurrentExecutions"]


# --- functions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("handler", [HANDLER, MAP_HANDLER, FINALIZE_HANDLER])
def test_batch_functions_share_runtime_layer_and_code_with_inference(batch_synth: Synth, handler: str) -> None:
    _, inference = function_by_handler(batch_synth, INFERENCE_HANDLER)
    _, fn = function_by_handler(batch_synth, handler)
    assert fn["Runtime"] == "python3.12"
    # The runtime layer version the inference function uses, then the parquet (pyarrow) layer.
    assert len(fn["Layers"]) == 2 and fn["Layers"][0] == inference["Layers"][0]
    assert fn["Layers"][1] == {"Ref": _parquet_layer_id(batch_synth)}
    assert fn["Code"]["S3Key"] == inference["Code"]["S3Key"]  # one code asset
    assert fn["Architectures"] == inference["Architectures"]
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["MemorySize"] == 2048 and fn["Timeout"] == 900
    assert fn["ReservedConcurrentExecutions"] >= 1
    log_group = batch_synth.template["Resources"][fn["LoggingConfig"]["LogGroup"]["Ref"]]
    assert log_group["Properties"]["RetentionInDays"] == 30
    assert "ManagedPolicyArns" not in batch_synth.template["Resources"][_role_id(fn)]["Properties"]


def _parquet_layer_id(synth: Synth) -> str:
    found = [k for k in synth.resources("AWS::Lambda::LayerVersion") if k.startswith("LayersParquet")]
    assert len(found) == 1, found
    return found[0]


def test_only_the_batch_functions_get_the_parquet_layer(batch_synth: Synth) -> None:
    parquet = {"Ref": _parquet_layer_id(batch_synth)}
    layer = batch_synth.template["Resources"][parquet["Ref"]]["Properties"]
    assert layer["CompatibleRuntimes"] == ["python3.12"] and layer["CompatibleArchitectures"] == ["x86_64"]
    assert "pyarrow" in layer["Description"]
    with_parquet = {props["Handler"] for props in (f["Properties"] for f in
                                                   batch_synth.resources("AWS::Lambda::Function").values())
                    if parquet in props.get("Layers", [])}
    assert with_parquet == {HANDLER, MAP_HANDLER, FINALIZE_HANDLER}
    _, inference = function_by_handler(batch_synth, INFERENCE_HANDLER)
    assert len(inference["Layers"]) == 1 and inference["Layers"] != [parquet]


def test_batch_function_environment(batch_synth: Synth) -> None:
    _, fn = function_by_handler(batch_synth, HANDLER)
    state_machine_id, _ = _state_machine(batch_synth)
    variables = fn["Environment"]["Variables"]
    assert "MODEL_URI" not in variables and "MODEL_MANIFEST_SHA256" not in variables  # no version fixed at synth
    assert variables.items() >= {
        "MODEL_NAME": "churn",
        "REGISTRY_TABLE": {"Ref": _registry_table_id(batch_synth)},
        "ROUTING_TTL_SECONDS": "0.0",  # one read of the routing item per file, at its start
        "MAX_FILE_BYTES": str(5 * 1024**3),
        "DISTRIBUTED_THRESHOLD_BYTES": str(256 * 1024**2),
        "CHUNK_ROWS": "5000",
        "STATE_MACHINE_ARN": {"Ref": state_machine_id},
        "POWERTOOLS_SERVICE_NAME": "slimserve-batch",
        "POWERTOOLS_METRICS_NAMESPACE": "Slimserve",
    }.items()
    # Every variable is one the handler's settings model reads: the contract is typed once.
    assert set(variables) - {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"} <= {
        name.upper() for name in BatchSettings.model_fields}


def test_only_the_batch_function_gets_tmp_sized_for_one_spooled_file(batch_synth: Synth) -> None:
    _, fn = function_by_handler(batch_synth, HANDLER)
    expected = BatchSettings(model_name="churn", registry_table="t").ephemeral_storage
    assert expected > 512 and fn["EphemeralStorage"] == {"Size": expected}
    for handler in (MAP_HANDLER, FINALIZE_HANDLER):
        assert "EphemeralStorage" not in function_by_handler(batch_synth, handler)[1]


@pytest.mark.parametrize("handler", [MAP_HANDLER, FINALIZE_HANDLER])
def test_map_and_finalize_functions_get_the_same_settings_but_the_state_machine_arn(
        batch_synth: Synth, handler: str) -> None:
    _, batch = function_by_handler(batch_synth, HANDLER)
    _, fn = function_by_handler(batch_synth, handler)
    expected = {k: v for k, v in batch["Environment"]["Variables"].items() if k != "STATE_MACHINE_ARN"}
    assert fn["Environment"]["Variables"] == expected


def test_batch_function_errors_raise_an_alarm(batch_synth: Synth) -> None:
    fn_id, _ = function_by_handler(batch_synth, HANDLER)
    (alarm,) = [a for a in _alarms_on(batch_synth, "Errors")  # the validation function has its own
                if a["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": fn_id}}]]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


# --- least privilege -----------------------------------------------------------------------------

def test_no_statement_deletes_objects_or_grants_s3_on_every_resource(batch_synth: Synth) -> None:
    for policy in batch_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            s3_actions = [a for a in as_list(statement["Action"]) if a.startswith("s3:")]
            assert not [a for a in s3_actions if a.startswith("s3:Delete") or a == "s3:*"], statement
            if s3_actions:
                assert "*" not in as_list(statement["Resource"]), statement


@pytest.mark.parametrize(("handler", "reads", "writes"), [
    (HANDLER, {"incoming/*", "manifests/*"}, {"scored/*", "rejected/*", "manifests/*"}),
    (MAP_HANDLER, set(), {"runs/*"}),
    (FINALIZE_HANDLER, {"runs/*"}, {"manifests/*"}),
])
def test_each_function_touches_only_its_prefixes_of_the_scoring_bucket(
        batch_synth: Synth, handler: str, reads: set[str], writes: set[str]) -> None:
    role_id = _role_id(function_by_handler(batch_synth, handler)[1])
    bucket_id = _scoring_bucket_id(batch_synth)
    assert _s3_grants(batch_synth, role_id, bucket_id, write=False) == reads
    assert _s3_grants(batch_synth, role_id, bucket_id, write=True) == writes


def test_batch_function_cannot_write_incoming(batch_synth: Synth) -> None:
    role_id = _role_id(function_by_handler(batch_synth, HANDLER)[1])
    assert "incoming/*" not in _s3_grants(batch_synth, role_id, _scoring_bucket_id(batch_synth), write=True)


@pytest.mark.parametrize("handler", [HANDLER, MAP_HANDLER, FINALIZE_HANDLER])
def test_batch_functions_read_only_their_models_bundles_and_routing_item(batch_synth: Synth, handler: str) -> None:
    role_id = _role_id(function_by_handler(batch_synth, handler)[1])
    model_id = model_bucket_id(batch_synth)
    assert _s3_grants(batch_synth, role_id, model_id, write=False) == {"models/churn/*"}
    assert _s3_grants(batch_synth, role_id, model_id, write=True) == set()
    (registry,) = [s for s in role_statements(batch_synth, role_id)
                   if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    assert (registry["Action"], registry["Resource"]) == (
        "dynamodb:GetItem", {"Fn::GetAtt": [_registry_table_id(batch_synth), "Arn"]})
    assert registry["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["churn"]}}


def test_finalize_lists_only_under_runs(batch_synth: Synth) -> None:
    role_id = _role_id(function_by_handler(batch_synth, FINALIZE_HANDLER)[1])
    scoring_arn = {"Fn::GetAtt": [_scoring_bucket_id(batch_synth), "Arn"]}
    lists = [s for s in _s3_statements(batch_synth, role_id)
             if scoring_arn in as_list(s["Resource"]) and any(a.startswith("s3:List") for a in as_list(s["Action"]))]
    assert lists == [{"Action": "s3:ListBucket", "Effect": "Allow", "Resource": scoring_arn,
                      "Condition": {"StringLike": {"s3:prefix": ["runs/*"]}}}]


def test_batch_function_may_start_only_its_state_machine(batch_synth: Synth) -> None:
    role_id = _role_id(function_by_handler(batch_synth, HANDLER)[1])
    state_machine_id, _ = _state_machine(batch_synth)
    states = [s for s in role_statements(batch_synth, role_id)
              if any(a.startswith("states:") for a in as_list(s["Action"]))]
    assert states == [{"Action": "states:StartExecution", "Effect": "Allow", "Resource": {"Ref": state_machine_id}}]


def test_state_machine_reads_incoming_and_invokes_only_its_two_functions(batch_synth: Synth) -> None:
    props = _state_machine(batch_synth)[1]["Properties"]
    role_id = props["RoleArn"]["Fn::GetAtt"][0]
    bucket_id = _scoring_bucket_id(batch_synth)
    s3_statements = _s3_statements(batch_synth, role_id)
    assert s3_statements == [{"Action": "s3:GetObject", "Effect": "Allow", "Resource": {
        "Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/incoming/*"]]}}]
    invoked = {r["Fn::GetAtt"][0] if "Fn::GetAtt" in r else r["Fn::Join"][1][0]["Fn::GetAtt"][0]
               for s in role_statements(batch_synth, role_id) if "lambda:InvokeFunction" in as_list(s["Action"])
               for r in as_list(s["Resource"])}
    assert invoked == {function_by_handler(batch_synth, handler)[0] for handler in (MAP_HANDLER, FINALIZE_HANDLER)}


# --- state machine -------------------------------------------------------------------------------

def test_state_machine_is_standard_logged_and_traced(batch_synth: Synth) -> None:
    props = _state_machine(batch_synth)[1]["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["IncludeExecutionData"] is False  # rows never reach the logs
    (destination,) = logging["Destinations"]
    group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert batch_synth.template["Resources"][group_id]["Properties"]["RetentionInDays"] == 30


def test_definition_starts_with_a_distributed_map_reading_the_csv_key(batch_synth: Synth) -> None:
    definition = _definition(batch_synth)
    assert definition["StartAt"] == MAP_STATE
    state = definition["States"][MAP_STATE]
    assert state["Type"] == "Map"
    assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    reader = state["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "CSV", "CSVHeaderLocation": "FIRST_ROW"}
    assert reader["Parameters"] == {"Bucket": f"<Ref:{_scoring_bucket_id(batch_synth)}>", "Key.$": "$.key"}
    assert state["ItemBatcher"] == {
        "MaxItemsPerBatch": 5000,
        "MaxInputBytesPerBatch": 240 * 1024,  # under the 256 KiB cap on a child input
        # Each chunk gets the bundle the run started with, never the routing item: one version per run.
        "BatchInput": {"bucket.$": "$.bucket", "key.$": "$.key", "version_id.$": "$.version_id",
                       "run_id.$": "$.run_id", "model_uri.$": "$.model_uri",
                       "model_manifest_sha256.$": "$.model_manifest_sha256"},
    }
    assert {k.removesuffix(".$") for k in state["ItemBatcher"]["BatchInput"]} == set(MAP_BATCH_INPUT)
    assert state["MaxConcurrency"] == 20
    assert state.get("ToleratedFailurePercentage", 0) == 0  # ASL's default: one failed chunk fails the run
    assert "ToleratedFailureCount" not in state
    assert state["ResultPath"] is None  # the original input flows on to the finalize step


def test_each_chunk_is_one_lambda_invoke_of_the_map_function_with_retries(batch_synth: Synth) -> None:
    processor = _definition(batch_synth)["States"][MAP_STATE]["ItemProcessor"]
    assert processor["StartAt"] == SCORE_CHUNK_STATE
    assert list(processor["States"]) == [SCORE_CHUNK_STATE]
    task = processor["States"][SCORE_CHUNK_STATE]
    map_id, _ = function_by_handler(batch_synth, MAP_HANDLER)
    assert task["Type"] == "Task" and task["End"] is True
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    assert task["Parameters"] == {"FunctionName": f"<GetAtt:{map_id}.Arn>", "Payload.$": "$"}
    retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
    assert {"Lambda.ServiceException", "Lambda.TooManyRequestsException"} <= retried


def test_after_the_map_one_finalize_step_gets_the_original_input(batch_synth: Synth) -> None:
    definition = _definition(batch_synth)
    assert definition["States"][MAP_STATE]["Next"] == FINALIZE_STATE
    assert set(definition["States"]) == {MAP_STATE, FINALIZE_STATE}
    task = definition["States"][FINALIZE_STATE]
    finalize_id, _ = function_by_handler(batch_synth, FINALIZE_HANDLER)
    assert task["Type"] == "Task" and task["End"] is True
    assert task["Resource"] == "arn:aws:states:::lambda:invoke"
    assert task["Parameters"] == {"FunctionName": f"<GetAtt:{finalize_id}.Arn>", "Payload.$": "$"}
    assert "InputPath" not in task


def test_failed_runs_raise_an_alarm(batch_synth: Synth) -> None:
    state_machine_id, _ = _state_machine(batch_synth)
    (alarm,) = [a for a in _alarms_on(batch_synth, "ExecutionsFailed")  # the training machine has its own
                if a["Dimensions"][0]["Value"] == {"Ref": state_machine_id}]
    assert alarm["Namespace"] == "AWS/States"
    assert alarm["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": state_machine_id}}]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_outputs_name_the_scoring_bucket_and_state_machine(batch_synth: Synth) -> None:
    outputs = batch_synth.template["Outputs"]
    (bucket_output,) = [v for k, v in outputs.items() if k.startswith("BatchScoringBucketName")]
    assert bucket_output["Value"] == {"Ref": _scoring_bucket_id(batch_synth)}
    assert [k for k in outputs if k.startswith("BatchStateMachineArn")]
