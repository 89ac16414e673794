"""Validation Lambda: judge a candidate bundle on the holdout, write the report next to the bundle,
record the verdict in the registry, and answer the verdict (for the retraining state machine).

Event: {"candidate_uri": "s3://.../models/<name>/<version>/", "holdout_uri": "s3://.../holdout.csv",
        "champion_uri": optional (default: the registry's champion), "config": optional GateConfig}
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlparse

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

from ..common import aws
from ..common.bundle import read_manifest, reader_for_uri
from ..common.errors import BundleError, SlimserveError
from ..common.registry import ModelEntry, Registry, UnknownVersion
from ..common.runtime import Runtime
from ..common.settings import ValidationSettings
from .gate import GateConfig
from .service import REPORT_FILE, report_json, validate

rt = Runtime.for_settings(ValidationSettings)
logger, metrics = rt.logger, rt.metrics
settings = ValidationSettings.from_env()  # no registry table: the function fails at cold start, naming it


class ValidationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    holdout_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    champion_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+")
    config: GateConfig = Field(default_factory=GateConfig)


@cache
def registry() -> Registry:
    return Registry(aws.client("dynamodb"), settings.registry_table)


def s3_client() -> Any:
    return aws.client("s3")


def run(request: ValidationRequest) -> dict[str, Any]:
    reg = registry()
    champion_uri = request.champion_uri
    candidate_read = reader_for_uri(request.candidate_uri, s3_client)
    if champion_uri is None:
        try:
            name = read_manifest(candidate_read)[0].name
            champion = reg.champion(name)
            champion_uri = champion.bundle_uri if champion else None
        except BundleError:
            champion_uri = None  # the candidate itself is broken: validate() reports it
    holdout = urlparse(request.holdout_uri)
    with aws.translated(f"reading the holdout {request.holdout_uri}"):
        body = s3_client().get_object(Bucket=holdout.netloc, Key=holdout.path.lstrip("/"))["Body"]
    report = validate(candidate_read, reader_for_uri(champion_uri, s3_client) if champion_uri else None,
                      (body, holdout.path), request.config)
    target = urlparse(request.candidate_uri.rstrip("/") + "/" + REPORT_FILE)
    with aws.translated(f"writing the report s3://{target.netloc}{target.path}"):
        s3_client().put_object(Bucket=target.netloc, Key=target.path.lstrip("/"),
                               Body=report_json(report).encode(), ContentType="application/json")
    report_uri = f"s3://{target.netloc}{target.path}"
    if report.get("candidate"):
        _record(reg, request.candidate_uri, report, report_uri)
    return {"admitted": report["admitted"], "reasons": report["reasons"], "summary": report["summary"],
            "candidate": report.get("candidate"), "champion_uri": champion_uri, "report_uri": report_uri}


def _record(reg: Registry, candidate_uri: str, report: dict[str, Any], report_uri: str) -> None:
    name, version = report["candidate"]["name"], report["candidate"]["version"]
    try:
        entry = reg.get(name, version)
    except UnknownVersion:
        entry = reg.register(ModelEntry(model=name, version=version, bundle_uri=candidate_uri,
                                        manifest_sha256=report.get("manifest_sha256", ""),
                                        metrics=report.get("metrics", {})))
    verdict = {k: report.get(k) for k in ("admitted", "reasons", "summary", "primary_metric")}
    reg.record_verdict(entry, {**verdict, "report_uri": report_uri})


@rt.handler()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = ValidationRequest.model_validate(event)
    except ValueError as exc:
        raise SlimserveError(f"bad validation request: {str(exc).splitlines()[0]}", code="bad_request") from None
    result = run(request)
    metrics.add_metric(name="CandidatesAdmitted" if result["admitted"] else "CandidatesRefused",
                       unit=MetricUnit.Count, value=1)
    logger.info("gate verdict", extra={"admitted": result["admitted"], "reasons": result["reasons"],
                                       "candidate": result["candidate"]})
    return result
