"""cdk-nag AwsSolutions runs on every synth of the app and reports nothing unacknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk import aws_s3 as s3
from synth_helpers import MODEL_CONTEXT, STACK_ID, Synth, build_app, violations

pytestmark = pytest.mark.slow  # full synths with the rule pack

# Every acknowledgement in the app, by rule id. A new one must be added here on purpose, with its
# reason next to it in the construct; a removed one (finding fixed) must be dropped from here.
EXPECTED_ACKNOWLEDGEMENTS = {
    "/Serving/InferenceFunction": {"AwsSolutions-L1"},
    "/Serving/InferenceFunctionRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/churn/*]",
    },
    "/Serving/RestApi/CloudWatchRole": {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonAPIGatewayPushToCloudWatchLogs]",
    },
    "/Serving/RestApi/DeploymentStage.v1": {"AwsSolutions-APIG3"},
    "/Serving/RestApi/Default/predict/POST": {"AwsSolutions-COG4"},
    "/Serving/RestApi/Default/health/GET": {"AwsSolutions-COG4"},
    "/Serving/RestApi/Default/openapi.json/GET": {"AwsSolutions-COG4"},
    "/Validation/Function": {"AwsSolutions-L1"},
    "/Validation/FunctionRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Action::s3:Abort*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/holdout/*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/*/validation-report.json]",
    },
    "/Training/SageMakerPolicy": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<TrainingDataBucketAA33E1D7.Arn>/*]",
        "AwsSolutions-IAM5[Resource::<TrainingArtifactsBucket4D77C497.Arn>/runs/*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:"
        "log-group:/aws/sagemaker/TrainingJobs:*]",
    },
    "/Retraining/ImportFunction": {
        "AwsSolutions-L1",
    },
    "/Retraining/ImportFunctionRole": {
        "AwsSolutions-IAM5[Action::s3:Abort*]",
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/churn/*]",
        "AwsSolutions-IAM5[Resource::<TrainingArtifactsBucket4D77C497.Arn>/runs/*]",
    },
    "/Retraining/StateMachineRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ReleaseFunction7C47E101.Arn>:*]",
        "AwsSolutions-IAM5[Resource::<RetrainingImportFunctionCC7207C7.Arn>:*]",
        "AwsSolutions-IAM5[Resource::<ValidationFunction0B4D9E78.Arn>:*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:training-job/*]",
    },
    "/Retraining/TriggerDeadLetters": {
        "AwsSolutions-SQS3",
    },
    "/Drift/Function": {"AwsSolutions-L1"},
    "/Drift/FunctionRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/capture/churn/*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/churn/*/manifest.json]",
    },
    "/Drift/DeadLetters": {"AwsSolutions-SQS3"},
    "/Feedback/Function": {"AwsSolutions-L1"},
    "/Feedback/FunctionRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/churn/*/manifest.json]",
    },
    "/Feedback/FilesFunction": {"AwsSolutions-L1"},
    "/Feedback/FilesFunctionRole": {
        "AwsSolutions-IAM5[Action::s3:Abort*]",
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/feedback-results/*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/feedback/*]",
        "AwsSolutions-IAM5[Resource::<ModelStoreModelBucket1791D663.Arn>/models/churn/*/manifest.json]",
    },
    "/Feedback/FilesDeadLetters": {"AwsSolutions-SQS3"},
    "/Feedback/ReviewDeadLetters": {"AwsSolutions-SQS3"},
    "/Feedback/PredictionIdKey": {"AwsSolutions-SMG4"},
    "/Serving/RestApi/Default/feedback/POST": {"AwsSolutions-COG4"},
    # CDK's bucket notification helper: the feedback/ notification of the model bucket makes it in every variant.
    "/BucketNotificationsHandler050a0587b7544547bf325f094a3db834/Role": {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
    },
    "/Release/Function": {"AwsSolutions-L1"},
    "/Release/FunctionRole": {"AwsSolutions-IAM5[Resource::*]"},
    "/Release/RollbackFunction": {"AwsSolutions-L1"},
    "/Release/RollbackFunctionRole": {"AwsSolutions-IAM5[Resource::*]"},
    "/Release/RollbackDeadLetters": {"AwsSolutions-SQS3"},
    "/Release/StateMachineRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::<ReleaseFunction7C47E101.Arn>:*]",
    },
    "/CodeRelease/BeforeTrafficHook": {"AwsSolutions-L1"},
    "/CodeRelease/BeforeTrafficHookRole": {"AwsSolutions-IAM5[Resource::*]"},
    "/CodeRelease/AfterTrafficHook": {"AwsSolutions-L1"},
    "/CodeRelease/AfterTrafficHookRole": {"AwsSolutions-IAM5[Resource::*]"},
    "/CodeRelease/DeploymentGroup/ServiceRole": {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSCodeDeployRoleForLambdaLimited]",
        "AwsSolutions-IAM5[Resource::<CodeReleaseBeforeTrafficHookF282B2FC.Arn>:*]",
        "AwsSolutions-IAM5[Resource::<CodeReleaseAfterTrafficHook3AC8A562.Arn>:*]",
    },
    "/Training/StateMachineRole": {
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:training-job/*]",
    },
}


@pytest.mark.parametrize("variant", ["default_synth", "api_key_synth", "http_synth", "jwt_synth"])
def test_no_unacknowledged_findings(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    assert synth.nag_error is None, "cdk-nag findings:\n" + "\n".join(violations(synth))
    assert violations(synth) == []


def acknowledged(synth: Synth) -> dict[str, set[str]]:
    """The acknowledged rule ids per construct path (below the stack), each checked for its one-line reason."""
    found: dict[str, set[str]] = {}
    for key, reason in synth.acknowledgements().items():
        path, rule = key.split(" ", 1)
        assert reason.strip() and "\n" not in reason, f"{key} needs a one-line reason"
        found.setdefault(path.removeprefix(f"/{STACK_ID}"), set()).add(rule.removeprefix("Annotation::"))
    return found


def test_acknowledgements_are_the_reviewed_set_each_with_a_one_line_reason(default_synth: Synth) -> None:
    assert acknowledged(default_synth) == EXPECTED_ACKNOWLEDGEMENTS


@pytest.mark.parametrize("variant", ["http_synth", "jwt_synth"])
def test_the_http_api_acknowledges_nothing_of_its_own(variant: str, request: pytest.FixtureRequest) -> None:
    """The HTTP API (IAM or JWT) needs no acknowledgement: the REST API's go with it, nothing new comes."""
    rest_api_only = {path: rules for path, rules in EXPECTED_ACKNOWLEDGEMENTS.items()
                     if path.startswith("/Serving/RestApi/")}
    expected = {path: rules for path, rules in EXPECTED_ACKNOWLEDGEMENTS.items() if path not in rest_api_only}
    assert acknowledged(request.getfixturevalue(variant)) == expected


def test_a_new_finding_fails_synth(tmp_path: Path, layer_dir: Path) -> None:
    """Guards the guard: the plugin really is attached by build_app and a new finding stops synth."""
    app = build_app(outdir=str(tmp_path), context=MODEL_CONTEXT, layer_dir=layer_dir)
    stack = app.node.find_child(STACK_ID)
    s3.Bucket(stack, "CarelessBucket")  # no access logs, no TLS policy: AwsSolutions-S1 and -S10
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for r in report["pluginReports"] for v in r["violations"]}
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules
