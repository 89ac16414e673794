"""Synthesize the real CDK app offline and read back what it wrote (shared by the infra tests)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `cdk` is a package at the repo root, not an installed one
    sys.path.insert(0, str(REPO_ROOT))

# Before the first aws_cdk import: jsii's Node banner would otherwise flood test output.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")

from cdk.app import STACK_ID, build_app  # noqa: E402
from pipeline.local.stack import ACCOUNT  # noqa: E402,F401  (the account the rendered ARNs name)
from pipeline.local.stack import machine_definition as stack_machine_definition  # noqa: E402

# Tests set the model through context, so a changed default in cdk.json cannot move their target.
# The default variant is the serving stack alone (`-c slimserve:batchScoring=false`); cdk.json
# switches batch scoring on for a plain `cdk deploy`, and BATCH_CONTEXT tests that stack.
MODEL_CONTEXT = {"slimserve:modelName": "churn", "slimserve:batchScoring": "false"}
MODEL_PREFIX = "models/churn/7/"  # one version's bundle prefix, as the registry names it
BATCH_CONTEXT = {**MODEL_CONTEXT, "slimserve:batchScoring": "true"}
# The HTTP API front door, with IAM (its default) and with JWT auth (scoped labels on POST /feedback).
HTTP_CONTEXT = {**MODEL_CONTEXT, "slimserve:api": "http"}
JWT_ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example"
JWT_CONTEXT = {**HTTP_CONTEXT, "slimserve:apiAuth": "jwt", "slimserve:jwtIssuer": JWT_ISSUER,
               "slimserve:jwtAudience": "slimserve-client,slimserve-batch",
               "slimserve:jwtFeedbackScopes": "labels/write"}


@dataclass(frozen=True)
class Synth:
    """One synthesized app: its cloud assembly folder, the stack template and nag's outcome."""

    outdir: Path
    template: dict[str, Any]
    nag_error: str | None

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == resource_type}

    def one(self, resource_type: str) -> tuple[str, dict[str, Any]]:
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found.items()))

    def validation_report(self) -> dict[str, Any]:
        return json.loads((self.outdir / "validation-report.json").read_text())

    def acknowledgements(self) -> dict[str, str]:
        """Every acknowledged rule id (as CDK records it) mapped to its reason."""
        metadata = json.loads((self.outdir / f"{STACK_ID}.metadata.json").read_text())
        acks: dict[str, str] = {}
        for path, entries in metadata.items():
            for entry in entries:
                if entry["type"] == "aws:cdk:acknowledged-rules":
                    acks.update({f"{path} {rule}": reason for rule, reason in entry["data"].items()})
        return acks


def as_list(value: Any) -> list[Any]:
    """An IAM Action or Resource, which CloudFormation takes as one value or a list."""
    return value if isinstance(value, list) else [value]


def role_statements(synth: Synth, role_id: str) -> list[dict[str, Any]]:
    """Every statement of every policy attached to the role with this logical id."""
    policies = [p for p in synth.resources("AWS::IAM::Policy").values()
                if {"Ref": role_id} in p["Properties"]["Roles"]]
    return [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]


def violations(synth: Synth) -> list[str]:
    """cdk-nag's findings of one synth, one line each (severity, rule, construct paths)."""
    return [f"{v['severity']} {v['ruleName']} at {[c['constructPath'] for c in v['violatingConstructs']]}"
            for report in synth.validation_report()["pluginReports"] for v in report["violations"]]


def function_by_handler(synth: Synth, handler: str) -> tuple[str, dict[str, Any]]:
    """The one function with this handler: (logical id, properties)."""
    found = [(k, v["Properties"]) for k, v in synth.resources("AWS::Lambda::Function").items()
             if v["Properties"].get("Handler") == handler]
    assert len(found) == 1, f"expected one function with handler {handler}, found {[k for k, _ in found]}"
    return found[0]


def model_bucket_id(synth: Synth) -> str:
    """The model store's bucket (bundles under models/, holdouts under holdout/)."""
    (found,) = [k for k in synth.resources("AWS::S3::Bucket") if k.startswith("ModelStoreModelBucket")]
    return found


def synthesize(outdir: Path, layer_dir: Path, context: Mapping[str, Any] | None = None,
               parquet_layer_dir: Path | None = None) -> Synth:
    """Synthesize with cdk-nag attached. A nag failure is recorded, not raised, so that the
    template tests still run and the nag test alone reports the findings. ``parquet_layer_dir``
    is needed when the context switches batch scoring on."""
    app = build_app(outdir=str(outdir), context=context, layer_dir=layer_dir, parquet_layer_dir=parquet_layer_dir)
    return synth_app(app, outdir)


def synth_app(app: Any, outdir: Path) -> Synth:
    """Synthesize an app with cdk-nag attached, recording (not raising) a nag failure."""
    nag_error: str | None = None
    try:
        app.synth()
    except RuntimeError as exc:  # jsii surfaces CDK's ValidationFailed as RuntimeError
        if "ValidationFailed" not in str(exc):
            raise
        nag_error = str(exc)
    template = json.loads((outdir / f"{STACK_ID}.template.json").read_text())
    return Synth(outdir=outdir, template=template, nag_error=nag_error)


# --- running a synthesized state machine on moto ----------------------------------------------------

def machine_definition(synth: Synth, logical_id: str, region: str) -> str:
    """The definition of one state machine of the template, rendered for moto's interpreter as `slimserve up`
    renders it (the names it gives the stack's resources)."""
    return stack_machine_definition(synth.template, logical_id, region)


def resource_id(synth: Synth, prefix: str, resource_type: str) -> str:
    """The logical id of the one resource of this type whose id starts with `prefix` (its construct path)."""
    found = [k for k in synth.resources(resource_type) if k.startswith(prefix)]
    assert len(found) == 1, f"expected one {resource_type} under {prefix}, found {found}"
    return found[0]


def finished_execution(client: Any, execution_arn: str) -> dict[str, Any]:
    """Wait for a Step Functions execution on moto's interpreter; a loaded machine is slow, not wrong:
    only a hang (10 minutes) fails."""
    import time

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        described = client.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return dict(described)
        time.sleep(0.05)
    raise AssertionError("the execution did not finish in 10 minutes")
