"""Settings from environment variables: one typed model per function, written and read through one base.

The constructs build a settings object and deploy ``to_env()``; the function reads it back with
``from_env()`` at cold start. Variable names are the field names upper-cased; the Powertools
service name and metrics namespace travel with them, so the environment contract is typed once.
"""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from .errors import ConfigurationError
from .records import Field, Record, RecordError, check, where

METRICS_NAMESPACE = "Slimserve"
MIB = 1024 * 1024
EPHEMERAL_MIN_MIB, EPHEMERAL_MAX_MIB = 512, 10_240  # what Lambda allows for /tmp


class Settings(Record):
    """Base of every function's settings: parse from and render to environment variables.

    An optional field defaults to None, so that leaving it out of the environment means None."""

    service: ClassVar[str] = "slimserve"  # Powertools service name: logs, metrics and traces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read the fields' upper-cased names; an empty variable counts as unset. A missing or
        malformed value raises ConfigurationError naming the variable (at cold start)."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {name: _from_text(hints[name], env[name.upper()]) for name in cls.model_fields
                  if env.get(name.upper())}
        try:
            return cls.model_validate(values)
        except RecordError as exc:
            problems = "; ".join(f"{where(loc).upper()}: {msg}" if loc else msg for loc, msg in exc.problems)
            raise ConfigurationError(f"bad or missing setting: {problems}") from None

    def to_env(self) -> dict[str, str]:
        """The environment that ``from_env`` reads back to an equal object; unset values are left out."""
        env = {name.upper(): _env_text(value) for name in self.model_fields
               if (value := getattr(self, name)) is not None}
        env["POWERTOOLS_SERVICE_NAME"] = self.service
        env["POWERTOOLS_METRICS_NAMESPACE"] = METRICS_NAMESPACE
        return env


def _from_text(tp: Any, text: str) -> Any:
    """An environment variable's text as its field's type (text a number cannot be read from stays
    text, and the field then names the variable as it refuses it)."""
    kinds = set(typing.get_args(tp)) - {type(None)} or {tp}
    try:
        if kinds == {int}:
            return int(text.strip())
        if kinds == {float}:
            return float(text.strip())
        if kinds == {bool}:
            return {"true": True, "false": False}.get(text.strip().lower(), text)
        if kinds == {str}:
            return text
        return json.loads(text)
    except ValueError:
        return text


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value)


class ModelSettings(Settings):
    """What a function that serves a model needs: where the bundle is and how to load it.

    Either a pinned bundle (MODEL_URI, for `slimserve serve` and tests) or the registry's routing
    item of one model (MODEL_NAME + REGISTRY_TABLE); a pinned bundle wins when both are set."""

    model_uri: str | None = Field(default=None, min_length=1,
                                  description="s3://bucket/prefix/ of a pinned bundle, or a local folder")
    model_manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    model_name: str | None = Field(default=None, min_length=1, description="the model routed by the registry")
    registry_table: str | None = Field(default=None, min_length=1, description="the model registry's table")
    routing_ttl_seconds: float = Field(default=15.0, ge=0, description="how long a read of the routing item "
                                                                        "is trusted before it is read again")
    max_rows: int = Field(default=10_000, gt=0)
    ort_threads: int = Field(default=1, ge=1, le=64)
    retry_load_seconds: float = Field(default=30.0, ge=0)

    @check
    def _one_way_to_find_the_model(self) -> None:
        if self.model_uri is None and not (self.model_name and self.registry_table):
            raise ValueError("set MODEL_URI (a pinned bundle) or MODEL_NAME and REGISTRY_TABLE (registry routing)")

    @property
    def routed(self) -> bool:
        """Whether the bundles come from the registry's routing item rather than a pinned URI."""
        return self.model_uri is None


class PredictionIdSettings(Settings):
    """The key that signs prediction ids: the stack's generated secret, or a fixed local key (hex).
    Neither set: responses carry no prediction ids and feedback refuses every id."""

    prediction_id_secret_arn: str | None = Field(default=None, min_length=1,
                                                 description="Secrets Manager secret holding the key")
    prediction_id_key: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32,256}$",
                                          description="a fixed key in hex, for local serving and tests")


class InferenceSettings(ModelSettings, PredictionIdSettings):
    service: ClassVar[str] = "slimserve-inference"

    max_body_bytes: int = Field(default=5 * MIB, gt=0)
    review_confidence_below: float | None = Field(default=None, gt=0, le=1, description=(
        "a classifier row whose top probability is below this goes to the review queue; unset: off"))
    review_queue_url: str | None = Field(default=None, min_length=1, description="the review queue (SQS)")
    # Request capture (functions/common/capture.py): sampled rows and answers to s3://MODEL_BUCKET/capture/.
    model_bucket: str | None = Field(default=None, min_length=1, description="the model bucket: capture goes "
                                                                             "under its capture/ prefix")
    capture_sample_rate: float = Field(default=0.0, ge=0, le=1, description="share of requests captured, "
                                                                             "chosen by request id; 0: none")
    capture_max_records: int = Field(default=500, gt=0, le=100_000, description="flush at this many rows")
    capture_max_seconds: float = Field(default=60.0, gt=0, description="flush once the oldest row is older")
    capture_drop_columns: str | None = Field(default=None, description="comma list: features never captured")
    capture_hash_columns: str | None = Field(default=None, description="comma list: features captured as "
                                                                       "sha256:<hex16>")

    @check
    def _capture_has_a_bucket(self) -> None:
        if self.capture_sample_rate > 0 and not self.model_bucket:
            raise ValueError("CAPTURE_SAMPLE_RATE > 0 needs MODEL_BUCKET (capture is written under its capture/)")


class BatchSettings(ModelSettings):
    """Batch scoring (the queue consumer and the two Distributed Map functions): the model settings
    plus file limits and the Distributed Map hand-off."""

    service: ClassVar[str] = "slimserve-batch"

    # Each file reads the routing item once, at its start: the champion then scores the whole file.
    routing_ttl_seconds: float = Field(default=0.0, ge=0, description="how long a read of the routing item "
                                                                       "is trusted; 0: one read per file")
    max_rows: int = Field(default=1_000_000, gt=0)
    chunk_rows: int = Field(default=5000, gt=0, le=100_000)
    max_file_bytes: int = Field(default=5 * 1024**3, gt=0)
    distributed_threshold_bytes: int = Field(default=256 * MIB, gt=0)
    state_machine_arn: str | None = None
    ephemeral_storage_mib: int | None = Field(default=None, ge=EPHEMERAL_MIN_MIB, le=EPHEMERAL_MAX_MIB,
                                              description="/tmp size; default: room for one file of "
                                                          "max_file_bytes (Parquet is spooled there)")

    @property
    def ephemeral_storage(self) -> int:
        """The /tmp size, in MiB, the function is deployed with."""
        if self.ephemeral_storage_mib is not None:
            return self.ephemeral_storage_mib
        needed = math.ceil(self.max_file_bytes / MIB) + 256  # one spooled file plus headroom
        return min(EPHEMERAL_MAX_MIB, max(EPHEMERAL_MIN_MIB, needed))


class ValidationSettings(Settings):
    service: ClassVar[str] = "slimserve-validation"

    registry_table: str = Field(min_length=1, description="the model registry's DynamoDB table")


class ReleaseSettings(Settings):
    """The release function: the registry, where to notify, and how far a canary may stray from the champion."""

    service: ClassVar[str] = "slimserve-release"

    registry_table: str = Field(min_length=1, description="the model registry's DynamoDB table")
    notify_topic_arn: str | None = Field(default=None, description="SNS topic told of every rollback")
    lock_ttl_seconds: int = Field(default=6 * 3600, gt=0, description="a lock whose owner died frees itself after")
    max_error_rate_delta: float = Field(default=0.02, ge=0, le=1,
                                        description="canary 5xx rate minus the champion's, at most")
    max_latency_ratio: float = Field(default=2.0, gt=1, description="canary p99 model latency / champion's, at most")
    min_latency_delta_ms: float = Field(default=25.0, ge=0,
                                        description="a smaller latency regression is noise, whatever the ratio")
    max_prediction_psi: float = Field(default=0.25, gt=0,
                                      description="PSI of the canary's prediction distribution against the champion's")
    max_shadow_share: int = Field(default=25, ge=0, le=100, description="the largest share of requests (percent) "
                                  "a shadow may run on: its cost is paid inside each request it runs on")


class CodeDeployHookSettings(Settings):
    """The CodeDeploy hooks of a code release: the served model whose release lock they take and release."""

    service: ClassVar[str] = "slimserve-codedeploy-hook"

    registry_table: str = Field(min_length=1, description="the model registry's DynamoDB table")
    model_name: str = Field(min_length=1, description="the model alias `live` serves")
    lock_ttl_seconds: int = Field(default=1800, gt=0,
                                  description="a code release stopped before AfterAllowTraffic frees the lock after")


class DriftSettings(Settings):
    """The drift function: which model's captures it reads, over what window, and when it says nothing."""

    service: ClassVar[str] = "slimserve-drift"

    registry_table: str = Field(min_length=1, description="the model registry's table (its routing item)")
    model_name: str = Field(min_length=1, description="the model whose captured traffic is compared")
    model_bucket: str = Field(min_length=1, description="where the bundles and capture/ live")
    window_hours: int = Field(default=24, ge=1, le=24 * 14, description="captured rows of the last N hours")
    min_samples: int = Field(default=1000, ge=50,
                             description="fewer live rows than this: nothing is published (noise, not drift)")
    max_rows: int = Field(default=200_000, gt=0, description="rows read per run at most (memory stays bounded)")
    per_feature_metrics: bool = Field(default=True, description="DriftPsi/DriftKs/NullRateDelta per feature as "
                                      "metrics; false: only the maxima the alarms read (the log line keeps them)")


class RollbackSettings(Settings):
    """The rollback function: a champion alarm serves the last known-good version again."""

    service: ClassVar[str] = "slimserve-rollback"

    registry_table: str = Field(min_length=1, description="the model registry's DynamoDB table")
    notify_topic_arn: str | None = Field(default=None, description="SNS topic told of every rollback")
    lock_ttl_seconds: int = Field(default=900, gt=0)


class FeedbackSettings(PredictionIdSettings):
    """The feedback functions: labels posted back for prediction ids, one item per id, and live accuracy."""

    service: ClassVar[str] = "slimserve-feedback"

    feedback_table: str = Field(min_length=1, description="the DynamoDB table of labels")
    model_bucket: str = Field(min_length=1, description="where the bundles' manifests (their classes) are read")
    model_name: str = Field(min_length=1, description="the served model: ids of any other model are refused")
    label_ttl_days: int = Field(default=365, gt=0, description="a stored label expires after")
    max_file_bytes: int = Field(default=64 * MIB, gt=0, description="a larger feedback file is refused whole")
