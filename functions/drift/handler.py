"""Drift Lambda, on an EventBridge schedule: the model's captured traffic over the window against the
champion's feature profile (`service.run_drift`). The event's content is not read: every run looks at the
window ending now. Publishes EMF metrics, or nothing when the window is too thin to judge.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ..common import aws
from ..common.manifest import Manifest
from ..common.registry import Registry
from ..common.runtime import Runtime
from ..common.settings import DriftSettings
from .service import read_profile, run_drift

rt = Runtime.for_settings(DriftSettings)
logger = rt.logger
settings = DriftSettings.from_env()


@cache
def registry() -> Registry:
    return Registry(aws.client("dynamodb"), settings.registry_table)


@cache
def manifest_of(uri: str, manifest_sha256: str) -> Manifest:
    """A bundle's manifest, once per environment (a version's manifest never changes under its pin)."""
    return read_profile(uri, manifest_sha256)


def _corrupt(key: str, why: str) -> None:
    logger.warning("corrupt capture object skipped", extra={"key": key, "why": why})


@rt.handler(metrics=False)  # its metrics are EMF records with per-feature dimensions, written by the service
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    routing = registry().routing(settings.model_name)
    report = run_drift(settings, routing, aws.client("s3"), dt.datetime.now(dt.UTC), manifest_of, _corrupt)
    logger.info("drift run", extra=report.summary())
    return report.summary()
