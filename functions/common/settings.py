"""Settings from environment variables, parsed once by one pydantic model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError


class InferenceSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_uri: str = Field(min_length=1, description="s3://bucket/prefix/ of the bundle, or a local folder")
    model_manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    max_body_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_rows: int = Field(default=10_000, gt=0)
    ort_threads: int = Field(default=1, ge=1, le=64)
    retry_load_seconds: float = Field(default=30.0, ge=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        values = {name: env[name.upper()] for name in cls.model_fields if env.get(name.upper())}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"bad or missing setting: {problems}") from None


class BatchSettings(InferenceSettings):
    """Batch scoring: the model settings plus file limits and the Distributed Map hand-off."""

    max_rows: int = Field(default=1_000_000, gt=0)
    chunk_rows: int = Field(default=5000, gt=0, le=100_000)
    max_file_bytes: int | None = Field(default=5 * 1024**3, gt=0)
    distributed_threshold_bytes: int = Field(default=256 * 1024**2, gt=0)
    state_machine_arn: str | None = None
