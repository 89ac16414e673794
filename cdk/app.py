"""slimserve CDK app. Run from the repo root: `.venv/bin/python -m cdk.app` or `npx cdk synth`.

Synth is hermetic: no AWS account, no network, no Docker, no lookups (env-agnostic stack).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aws_cdk import App, Validations
from aws_cdk import aws_lambda as lambda_
from cdk_nag import AwsSolutionsChecks

from .constructs.batch_scoring import BatchScoringSettings
from .constructs.drift import DriftMonitorSettings
from .constructs.release import ReleaseMachineSettings
from .constructs.retraining import RetrainingSettings
from .constructs.serving_http_api import JwtAuth
from .constructs.training import Integration, TrainingSettings
from .stacks.serving_stack import ServingStack, ServingStackProps

REPO_ROOT = Path(__file__).resolve().parents[1]
CDK_JSON = REPO_ROOT / "cdk.json"
STACK_ID = "SlimserveServing"
CTX = "slimserve:"  # prefix of this app's own context keys (cdk.json or `-c slimserve:key=value`)


def load_cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """cdk.json's context, so `python -m cdk.app` and tests see the same feature flags as the CLI."""
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("context", {}))


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(f"context {key} must be true or false, got {value!r}")


def _architecture(value: Any) -> lambda_.Architecture:
    choices = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}
    if str(value) not in choices:
        raise ValueError(f"context {CTX}architecture must be one of {sorted(choices)}, got {value!r}")
    return choices[str(value)]


def _api(value: Any) -> Literal["rest", "http"]:
    if value == "rest" or value == "http":
        return value
    raise ValueError(f"context {CTX}api must be 'rest' or 'http', got {value!r}")


# JwtAuth's fields as context keys, so a refusal names the key the user set.
JWT_CONTEXT = {"issuer": "jwtIssuer", "audience": "jwtAudience", "scopes": "jwtScopes",
               "feedback_scopes": "jwtFeedbackScopes"}


def _jwt_auth(ctx: Any, api: str) -> JwtAuth | None:
    """`apiAuth=jwt` with its issuer, audience and optional scopes; `iam` (the default) reads none of them."""
    auth = ctx("apiAuth", "iam")
    if auth not in ("iam", "jwt"):
        raise ValueError(f"context {CTX}apiAuth must be 'iam' or 'jwt', got {auth!r}")
    if auth == "iam":
        for key in JWT_CONTEXT.values():
            if ctx(key) is not None:
                raise ValueError(f"context {CTX}{key} is read only with {CTX}apiAuth=jwt (and {CTX}api=http)")
        return None
    if api != "http":
        raise ValueError(f"context {CTX}apiAuth=jwt needs {CTX}api=http: the REST API authenticates with IAM")
    for key, what in (("jwtIssuer", "the https:// URL of the token issuer"),
                      ("jwtAudience", "the audiences (aud or client_id) a token may carry, comma-separated")):
        if not _words(ctx(key)):
            raise ValueError(f"context {CTX}apiAuth=jwt needs {CTX}{key}: {what}")
    jwt = JwtAuth(issuer=str(ctx("jwtIssuer")).strip(), audience=_words(ctx("jwtAudience")),
                  scopes=_words(ctx("jwtScopes")), feedback_scopes=_words(ctx("jwtFeedbackScopes")))
    jwt.validate(lambda field: f"context {CTX}{JWT_CONTEXT[field]}")
    return jwt


def _words(value: Any) -> tuple[str, ...]:
    """A comma-separated context string (or a list, from cdk.json) as its non-empty, stripped items."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return tuple(s for s in (str(i).strip() for i in items) if s)


def _integration(value: Any) -> Integration:
    if value == "sync" or value == "request":
        return value
    raise ValueError(f"context {CTX}trainingIntegration must be 'sync' or 'request', got {value!r}")


# Model pins of earlier versions: refused rather than ignored, so nobody believes a version is pinned.
RETIRED_CONTEXT = ("modelVersion", "modelPrefix", "modelManifestSha256")


def stack_props_from_context(app: App, layer_dir: Path | None = None,
                             parquet_layer_dir: Path | None = None) -> ServingStackProps:
    """Typed stack props from CDK context; the one place where context strings become settings."""
    def ctx(key: str, default: Any = None) -> Any:
        value = app.node.try_get_context(CTX + key)
        return default if value is None else value

    defaults = ServingStackProps()
    for gone in RETIRED_CONTEXT:
        if ctx(gone) is not None:
            raise ValueError(f"context {CTX}{gone} is no longer read: serving and batch scoring follow the registry's "
                             "champion; make one with `slimserve release`")
    layer = layer_dir or ctx("layerDir")
    parquet_layer = parquet_layer_dir or ctx("parquetLayerDir")
    api = _api(ctx("api", defaults.api))
    return ServingStackProps(
        model_name=str(ctx("modelName", defaults.model_name)),
        api_key_required=_as_bool(ctx("apiKeyRequired", False), CTX + "apiKeyRequired"),
        api=api,
        jwt_auth=_jwt_auth(ctx, api),
        architecture=_architecture(ctx("architecture", "x86_64")),
        layer_dir=Path(layer) if layer else defaults.layer_dir,
        parquet_layer_dir=Path(parquet_layer) if parquet_layer else defaults.parquet_layer_dir,
        batch=BatchScoringSettings() if _as_bool(ctx("batchScoring", False), CTX + "batchScoring") else None,
        # "request" for the local emulation (moto runs sagemaker:createTrainingJob, not its .sync form).
        training=TrainingSettings(integration=_integration(ctx("trainingIntegration", "sync"))),
        release=_release(ctx),
        retraining=_retraining(ctx),
        # Off: the drift function publishes only the maxima its alarms read (per-feature figures stay in its log).
        drift=DriftMonitorSettings(per_feature_metrics=_as_bool(ctx("driftPerFeatureMetrics", True),
                                                                CTX + "driftPerFeatureMetrics")),
        shadow_agreement_below=_share(ctx("shadowAgreementBelow", defaults.shadow_agreement_below),
                                      CTX + "shadowAgreementBelow"),
    )


def _share(value: Any, key: str) -> float:
    """A share in (0, 1], from a context string or a cdk.json number."""
    try:
        share = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        share = math.nan
    if not 0 < share <= 1:  # NaN fails too
        raise ValueError(f"context {key} must be a number in (0, 1], got {value!r}")
    return share


def _release(ctx: Any) -> ReleaseMachineSettings:
    """Bake and least canary traffic per stage (the local emulation and tests bake for seconds)."""
    defaults = ReleaseMachineSettings()
    values = {"bake_seconds": ctx("releaseBakeSeconds", defaults.bake_seconds),
              "min_canary_requests": ctx("releaseMinCanaryRequests", defaults.min_canary_requests)}
    for name, value in values.items():
        if not str(value).isdigit():
            raise ValueError(f"context {CTX}release{name.title().replace('_', '')} must be a whole number, "
                             f"got {value!r}")
    return ReleaseMachineSettings(bake_seconds=int(values["bake_seconds"]),
                                  min_canary_requests=int(values["min_canary_requests"]))


def _retraining(ctx: Any) -> RetrainingSettings:
    """Scheduled retraining: off without `retrainSchedule`; with it, the target column its runs train on
    (`retrainTarget`) and, optionally, where their data lies in the data bucket (`retrainDataPrefix`)."""
    schedule, target, prefix = ctx("retrainSchedule"), ctx("retrainTarget"), ctx("retrainDataPrefix")
    if schedule is not None and not re.fullmatch(r"(rate|cron)\(\s*\S.*\)", str(schedule)):
        raise ValueError(f"context {CTX}retrainSchedule must be an EventBridge schedule expression such as "
                         f"'rate(7 days)' or 'cron(0 3 ? * MON *)', got {schedule!r}")
    if schedule is not None and not target:
        raise ValueError(f"context {CTX}retrainSchedule needs {CTX}retrainTarget: the column scheduled runs train on")
    if prefix is not None and (not str(prefix) or str(prefix).strip("/") != str(prefix)):
        raise ValueError(f"context {CTX}retrainDataPrefix must be a key prefix without a leading or trailing '/', "
                         f"got {prefix!r}")
    return RetrainingSettings(schedule=None if schedule is None else str(schedule),
                              data_prefix=None if prefix is None else str(prefix),
                              hyperparameters={"target": str(target)} if target else {})


def build_app(outdir: str | None = None, context: Mapping[str, Any] | None = None,
              layer_dir: Path | str | None = None, parquet_layer_dir: Path | str | None = None) -> App:
    """The app with its stack and cdk-nag attached; call `.synth()` on it (tests do)."""
    app = App(outdir=outdir, context={**load_cdk_json_context(), **(context or {})})
    props = stack_props_from_context(app, Path(layer_dir) if layer_dir else None,
                                     Path(parquet_layer_dir) if parquet_layer_dir else None)
    ServingStack(app, STACK_ID, props,
                 description="slimserve: scikit-learn models as ONNX on Lambda behind API Gateway")
    # cdk-nag 3 (the pin in pyproject) is a CDK policy-validation plugin: any unacknowledged finding,
    # error or warning, fails synth and is written to validation-report.json. Measured to work offline
    # with aws-cdk-lib 2.275; kept over a 2.x pin because acknowledgements are CDK's own metadata.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> None:
    # Under the CLI, CDK_OUTDIR names the output; run directly, write where the CLI would (not a temp dir).
    outdir = None if os.environ.get("CDK_OUTDIR") else str(REPO_ROOT / "cdk.out")
    assembly = build_app(outdir=outdir).synth()
    if outdir:
        print(f"synthesized {', '.join(s.stack_name for s in assembly.stacks)} into {assembly.directory}")


if __name__ == "__main__":
    main()
