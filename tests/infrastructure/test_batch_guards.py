"""Batch scoring passes the same gates as serving: cdk-nag with reviewed acknowledgements only,
cfn-lint clean, and bad settings refused at construction with a message that names the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from cfnlint.api import lint_all
from synth_helpers import STACK_ID, Synth, build_app, violations
from test_cdk_nag import EXPECTED_ACKNOWLEDGEMENTS as SERVING_ACKNOWLEDGEMENTS
from test_cfn_lint import ALLOWED as ALLOWED_LINT_WARNINGS

from cdk.app import load_cdk_json_context
from cdk.constructs.batch_scoring import BatchScoring, BatchScoringProps, BatchScoringSettings
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.monitoring import Monitoring
from cdk.stacks.serving_stack import ServingStack, ServingStackProps

BUCKET = "<BatchScoringBucket0B6940EF.Arn>"
MODEL = "<ModelStoreModelBucket1791D663.Arn>/models/churn/*"  # every version of the model: champions change
EXECUTIONS = ('arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:'
              '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"BatchStateMachineA1FF2995"}]}]}')
GRANT_READ = {f"AwsSolutions-IAM5[Resource::{MODEL}]"}  # s3:GetObject on the model's bundles, no listing
XRAY_AND_PUT = {"AwsSolutions-IAM5[Resource::*]", "AwsSolutions-IAM5[Action::s3:Abort*]"}
# Every acknowledgement batch scoring adds, by construct path; each reason sits next to it in the construct.
BATCH_ACKNOWLEDGEMENTS = {
    "/Batch/ScoreFileFunction": {"AwsSolutions-L1"},
    "/Batch/ScoreChunkFunction": {"AwsSolutions-L1"},
    "/Batch/FinalizeFunction": {"AwsSolutions-L1"},
    "/Batch/ScoreFileFunctionRole": GRANT_READ | XRAY_AND_PUT | {
        f"AwsSolutions-IAM5[Resource::{BUCKET}/{prefix}*]" for prefix in ("incoming/", "scored/", "rejected/",
                                                                            "manifests/")},
    "/Batch/ScoreChunkFunctionRole": GRANT_READ | XRAY_AND_PUT | {f"AwsSolutions-IAM5[Resource::{BUCKET}/runs/*]"},
    "/Batch/FinalizeFunctionRole": GRANT_READ | XRAY_AND_PUT | {
        f"AwsSolutions-IAM5[Resource::{BUCKET}/runs/*]", f"AwsSolutions-IAM5[Resource::{BUCKET}/manifests/*]"},
    "/Batch/StateMachineRole": {
        "AwsSolutions-IAM5[Resource::*]",
        f"AwsSolutions-IAM5[Resource::{BUCKET}/incoming/*]",
        "AwsSolutions-IAM5[Resource::<BatchScoreChunkFunctionD33AB7D6.Arn>:*]",
        "AwsSolutions-IAM5[Resource::<BatchFinalizeFunction3CE000C0.Arn>:*]",
    },
    "/Batch/StateMachine/DistributedMapPolicy": {
        f"AwsSolutions-IAM5[Resource::{EXECUTIONS}:*]",
        f"AwsSolutions-IAM5[Resource::{EXECUTIONS}/ScoreChunks:*]",
    },
    "/BucketNotificationsHandler050a0587b7544547bf325f094a3db834/Role": {
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
    },
}


# --- cdk-nag and cfn-lint ------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_variant_has_no_unacknowledged_nag_findings(batch_synth: Synth) -> None:
    assert batch_synth.nag_error is None, "cdk-nag findings:\n" + "\n".join(violations(batch_synth))
    assert violations(batch_synth) == []


@pytest.mark.slow
def test_batch_acknowledgements_are_the_reviewed_set_each_with_a_one_line_reason(batch_synth: Synth) -> None:
    found: dict[str, set[str]] = {}
    for key, reason in batch_synth.acknowledgements().items():
        path, rule = key.split(" ", 1)
        assert reason.strip() and "\n" not in reason, f"{key} needs a one-line reason"
        found.setdefault(path.removeprefix(f"/{STACK_ID}"), set()).add(rule.removeprefix("Annotation::"))
    assert found == {**SERVING_ACKNOWLEDGEMENTS, **BATCH_ACKNOWLEDGEMENTS}


@pytest.mark.slow
def test_batch_template_has_no_lint_errors_or_warnings(batch_synth: Synth) -> None:
    (template,) = sorted(batch_synth.outdir.glob("*.template.json"))
    problems = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in lint_all(template.read_text())
                if m.rule.id[0] in "EW" and m.rule.id not in ALLOWED_LINT_WARNINGS]
    assert problems == []


# --- props validation ----------------------------------------------------------------------------

@pytest.fixture
def layers(layer_dir: Path, parquet_layer_dir: Path) -> tuple[Path, Path]:
    return layer_dir, parquet_layer_dir


def _build(layers: tuple[Path, Path], settings: BatchScoringSettings | None = None, **overrides: Any) -> BatchScoring:
    layer_dir, parquet_layer_dir = layers
    stack = Stack(App(), "BatchPropsTest")
    built = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir, parquet_dir=parquet_layer_dir))
    props = BatchScoringProps(model_bucket=s3.Bucket(stack, "Models"), model_name="m",
                              registry_table=dynamodb.Table(stack, "Registry", partition_key=dynamodb.Attribute(
                                  name="model", type=dynamodb.AttributeType.STRING)),
                              layer=built.runtime, parquet_layer=built.require_parquet(),
                              access_log_bucket=s3.Bucket(stack, "Logs"), monitoring=Monitoring(stack, "Monitoring"),
                              settings=settings or BatchScoringSettings())
    return BatchScoring(stack, "Batch", dataclasses.replace(props, **overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"max_receive_count": 0}, r"max_receive_count must be between 1 and 10, got 0"),
    ({"max_receive_count": 11}, r"max_receive_count must be between 1 and 10, got 11"),
    ({"distributed_threshold_bytes": 5 * 1024**3},
     r"distributed_threshold_bytes \(5368709120\) must be < max_file_bytes \(5368709120\)"),
    ({"max_file_bytes": 100, "distributed_threshold_bytes": 200},
     r"distributed_threshold_bytes \(200\) must be < max_file_bytes \(100\)"),
    ({"max_file_bytes": 6 * 1024**4}, r"max_file_bytes must be between 1 and 5497558138880"),
    ({"chunk_rows": 0}, r"chunk_rows must be between 1 and 100000, got 0"),
    ({"chunk_rows": 100_001}, r"chunk_rows must be between 1 and 100000, got 100001"),
    ({"timeout_seconds": 901}, r"timeout_seconds must be between 1 and 900, got 901 \(Lambda's maximum\)"),
    ({"memory_size": 64}, r"memory_size must be between 128 and 10240, got 64"),
    ({"reserved_concurrency": 1}, r"reserved_concurrency must be between 2 and 1000, got 1 \(it is also the SQS"),
    ({"batch_size": 11}, r"batch_size must be between 1 and 10, got 11"),
    ({"map_max_concurrency": 0}, r"map_max_concurrency must be between 1 and 10000, got 0"),
    ({"run_timeout_hours": 0}, r"run_timeout_hours must be between 1 and 8760, got 0"),
])
def test_bad_batch_settings_raise_value_error(layers: tuple[Path, Path], overrides: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=r"BatchScoringSettings\." + message):
        _build(layers, BatchScoringSettings(**overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model_name": "m/1"}, r"model_name must match"),
    ({"model_name": "*"}, r"model_name must match"),
    ({"model_name": ""}, r"model_name must match"),
])
def test_bad_batch_props_raise_value_error(layers: tuple[Path, Path], overrides: dict[str, Any],
                                          message: str) -> None:
    with pytest.raises(ValueError, match=r"BatchScoringProps\." + message):
        _build(layers, **overrides)


@pytest.mark.parametrize("key", ["modelVersion", "modelPrefix", "modelManifestSha256"])
def test_a_retired_model_pin_in_context_is_refused_not_ignored(layer_dir: Path, key: str) -> None:
    with pytest.raises(ValueError, match=rf"context slimserve:{key} is no longer read: .* `slimserve release`"):
        build_app(layer_dir=layer_dir, context={f"slimserve:{key}": "7"})


def test_missing_parquet_layer_tells_how_to_build_it(layer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Lambda layer not built: .*python does not exist\. Run `make layer`"):
        _build((layer_dir, tmp_path / "no-parquet-layer"))
    with pytest.raises(FileNotFoundError, match=r"slimserve:parquetLayerDir"):
        build_app(layer_dir=layer_dir, context={"slimserve:batchScoring": "true",
                                                "slimserve:parquetLayerDir": str(tmp_path / "no-parquet-layer")})


def test_batch_functions_get_the_runtime_then_the_parquet_layer(layers: tuple[Path, Path]) -> None:
    batch = _build(layers)
    stack = Stack.of(batch)
    for fn in (batch.function, batch.map_function, batch.finalize_function):
        cfn = fn.node.default_child
        assert isinstance(cfn, lambda_.CfnFunction)
        assert stack.resolve(cfn.layers) == [stack.resolve(batch.props.layer.layer_version_arn),
                                             stack.resolve(batch.props.parquet_layer.layer_version_arn)]


def test_visibility_timeout_is_derived_from_the_function_timeout(layers: tuple[Path, Path]) -> None:
    batch = _build(layers, BatchScoringSettings(timeout_seconds=120, reserved_concurrency=2))
    assert batch.settings.visibility_timeout.to_seconds() == 720
    assert batch.executions_failed_alarm is not None and batch.dead_letter_alarm is not None


def test_stack_settings_reach_the_construct(layer_dir: Path, parquet_layer_dir: Path) -> None:
    settings = BatchScoringSettings(chunk_rows=1000, max_receive_count=5, map_max_concurrency=4)
    # cdk.json's flags: the model store's access logging relies on them (bucket policy, not ACLs).
    app = App(context=load_cdk_json_context())
    stack = ServingStack(app, "Composed", ServingStackProps(layer_dir=layer_dir, parquet_layer_dir=parquet_layer_dir,
                                                            batch=settings))
    assert stack.batch is not None and stack.batch.settings == settings
    assert stack.batch.props.model_name == "demo" and stack.batch.props.registry_table is stack.registry.table
    assert stack.batch.props.layer is stack.layers.runtime is stack.serving.props.layer
    assert stack.layers.props.parquet_dir == parquet_layer_dir


def test_parquet_layer_dir_comes_from_context_and_is_not_needed_without_batch(layer_dir: Path,
                                                                              parquet_layer_dir: Path,
                                                                              tmp_path: Path) -> None:
    app = build_app(outdir=str(tmp_path / "a"), layer_dir=layer_dir,
                    context={"slimserve:batchScoring": "true", "slimserve:parquetLayerDir": str(parquet_layer_dir)})
    stack = app.node.find_child(STACK_ID)
    assert isinstance(stack, ServingStack) and stack.batch is not None
    assert stack.layers.props.parquet_dir == parquet_layer_dir
    # Serving alone never reads the parquet layer folder.
    build_app(outdir=str(tmp_path / "b"), layer_dir=layer_dir, context={"slimserve:batchScoring": "false",
                                                                       "slimserve:parquetLayerDir": str(tmp_path)})


def test_bad_batch_context_value_fails_clearly(layer_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"batchScoring must be true or false, got 'sometimes'"):
        build_app(context={"slimserve:batchScoring": "sometimes"}, layer_dir=layer_dir)
