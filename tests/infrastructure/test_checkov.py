"""checkov (its CloudFormation checks) on every synthesized variant: no failed check, and each accepted
finding is skipped in the resource's own Metadata, with its reason, by the construct that makes it.

checkov runs from its own virtualenv (`make checkov`, a prerequisite of `make test`) or from $CHECKOV;
without it these tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from synth_helpers import REPO_ROOT, Synth

from cdk.constructs.function import FunctionProps, SlimserveFunction
from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.nag import checkov_skip
from functions.common.settings import ValidationSettings

pytestmark = pytest.mark.slow  # full synths, then checkov (~3 s a template)

VARIANTS = {"default": "default_synth", "api_key": "api_key_synth", "batch": "batch_synth", "http": "http_synth",
            "jwt": "jwt_synth"}
NO_COMMENT = "No comment provided"  # what checkov reports for a Metadata skip without a comment

# The kinds of finding the stack accepts, each justified beside the resource that carries it. A new kind
# is added here on purpose; a kind no longer skipped anywhere is dropped.
ACCEPTED = {
    "CKV_AWS_18": "S3 access logging: the access-log bucket itself (buckets.secure_bucket)",
    "CKV_AWS_27": "SQS KMS key: the batch queues use SQS-managed SSE, which S3 can publish to",
    "CKV_AWS_149": "Secrets Manager CMK: the prediction id key uses the AWS-managed key; two roles may read it",
    "CKV_AWS_115": "Lambda concurrency: CDK's deploy-time notification helper",
    "CKV_AWS_116": "Lambda DLQ: functions invoked synchronously (FunctionProps.invoked_by), CDK's helper",
    "CKV_AWS_117": "Lambda in a VPC: the functions call only AWS APIs",
    "CKV_AWS_119": "DynamoDB CMK: the registry uses the AWS managed key",
    "CKV_AWS_120": "API Gateway cache: predictions must never be served from a cache",
    "CKV_AWS_158": "CloudWatch Logs CMK: logs carry no payloads",
    "CKV_AWS_173": "Lambda environment CMK: the environment holds no secret",
}


def pinned_version() -> str:
    match = re.search(r"^CHECKOV_VERSION := (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile pins no CHECKOV_VERSION"
    return match.group(1)


@pytest.fixture(scope="session")
def checkov() -> Path:
    binary = Path(os.environ.get("CHECKOV") or REPO_ROOT / ".venv-checkov" / "bin" / "checkov")
    if not binary.is_file():
        pytest.fail(f"checkov is not installed at {binary}: run `make checkov` (or set CHECKOV to its path)")
    found = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert found == pinned_version(), f"{binary} is checkov {found}, the Makefile pins {pinned_version()}"
    return binary


def scan(checkov: Path, template: Path) -> dict[str, list[dict[str, Any]]]:
    """checkov's results for one CloudFormation template: failed_checks, skipped_checks, passed_checks."""
    run = subprocess.run(
        [str(checkov), "--file", str(template), "--framework", "cloudformation", "--output", "json",
         "--skip-download", "--skip-results-upload"],
        capture_output=True, text=True, check=False)
    assert run.returncode in (0, 1), f"checkov failed to run (rc {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    assert report["summary"]["parsing_errors"] == 0, f"checkov could not parse {template.name}"
    return dict(report["results"])


def reason(skipped: dict[str, Any]) -> str:
    """The comment of a skipped check (checkov's NO_COMMENT when the Metadata gave none)."""
    return str(skipped["check_result"].get("suppress_comment") or "").strip()


def skips_without_reason(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [f"{s['check_id']} {s['resource']}" for s in results.get("skipped_checks", [])
            if reason(s) in ("", NO_COMMENT)]


@pytest.fixture(scope="module")
def results(checkov: Path, request: pytest.FixtureRequest) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """checkov's results per variant, one scan each."""
    scans = {}
    for variant, fixture in VARIANTS.items():
        synth: Synth = request.getfixturevalue(fixture)
        templates = sorted(synth.outdir.glob("*.template.json"))
        assert len(templates) == 1, f"expected one template in {synth.outdir}, found {templates}"
        scans[variant] = scan(checkov, templates[0])
    return scans


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkov_finds_nothing_unaccepted(variant: str, results: dict[str, Any]) -> None:
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in results[variant]["failed_checks"]]
    assert failed == [], "fix these, or accept each with checkov_skip and its reason beside the resource"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_skipped_check_is_an_accepted_kind_with_its_reason(variant: str, results: dict[str, Any]) -> None:
    skipped = results[variant].get("skipped_checks", [])
    print(f"\ncheckov findings accepted in the {variant} template ({len(skipped)}):")
    for s in sorted(skipped, key=lambda s: (s["check_id"], s["resource"])):
        print(f"  {s['check_id']} {s['resource']}: {reason(s)}")
    assert skips_without_reason(results[variant]) == []
    assert {s["check_id"] for s in skipped} <= set(ACCEPTED)


def test_every_accepted_kind_is_still_used(results: dict[str, Any]) -> None:
    used = {s["check_id"] for r in results.values() for s in r.get("skipped_checks", [])}
    assert set(ACCEPTED) == used, f"no longer skipped anywhere: {sorted(set(ACCEPTED) - used)}"


def test_a_skip_without_a_comment_is_caught(checkov: Path, tmp_path: Path) -> None:
    """Guards the guard: checkov reports a bare Metadata skip, and the check above names it."""
    template = tmp_path / "bare.template.json"
    template.write_text(json.dumps({"Resources": {"Bare": {
        "Type": "AWS::S3::Bucket", "Properties": {},
        "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_18"}]}}}}}))
    assert skips_without_reason(scan(checkov, template)) == ["CKV_AWS_18 AWS::S3::Bucket.Bare"]


def test_checkov_skip_records_each_reason_once_and_refuses_none() -> None:
    bucket = s3.Bucket(Stack(App(), "SkipTest"), "Bucket")
    checkov_skip(bucket, "CKV_AWS_18", "first reason")
    checkov_skip(bucket, "CKV_AWS_21", "another check")
    checkov_skip(bucket, "CKV_AWS_18", "the reason that stands")
    cfn = bucket.node.default_child
    assert isinstance(cfn, s3.CfnBucket)
    assert cfn.get_metadata("checkov") == {"skip": [{"id": "CKV_AWS_21", "comment": "another check"},
                                                    {"id": "CKV_AWS_18", "comment": "the reason that stands"}]}
    for reason in ("", "  ", "two\nlines"):
        with pytest.raises(ValueError, match="one-line reason"):
            checkov_skip(bucket, "CKV_AWS_21", reason)


def _function_skips(layer_dir: Path, *, with_dlq: bool = False, **props: Any) -> tuple[dict[str, Any], set[str]]:
    """A SlimserveFunction made with these props (and a dead-letter queue): its properties and skipped check ids."""
    app = App()
    stack = Stack(app, "DlqTest")
    if with_dlq:
        props["dead_letter_queue"] = sqs.Queue(stack, "Dlq")
    layer = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime
    fn = SlimserveFunction(stack, "NextFunction", FunctionProps(
        handler="functions.next.handler.lambda_handler", description="slimserve next: a new function",
        settings=ValidationSettings(registry_table="table"), layers=[layer], memory_size=512, timeout_seconds=30,
        reserved_concurrency=2, **props))
    resource = app.synth().get_stack_by_name("DlqTest").template["Resources"][
        stack.resolve(fn.node.default_child.logical_id)]  # type: ignore[union-attr]
    return resource["Properties"], {s["id"] for s in resource["Metadata"]["checkov"]["skip"]}


def test_only_a_synchronously_invoked_function_goes_without_a_dead_letter_queue(layer_dir: Path) -> None:
    _, skipped = _function_skips(layer_dir, invoked_by="API Gateway")
    assert "CKV_AWS_116" in skipped
    properties, skipped = _function_skips(layer_dir, with_dlq=True)
    assert "CKV_AWS_116" not in skipped and "DeadLetterConfig" in properties
    _, skipped = _function_skips(layer_dir)  # neither: checkov reports it, so the author must choose
    assert "CKV_AWS_116" not in skipped
    with pytest.raises(ValueError, match="invoked_by must name the synchronous caller on one line"):
        _function_skips(layer_dir, invoked_by="two\nlines")
