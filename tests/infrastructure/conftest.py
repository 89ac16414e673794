"""Fixtures: synthesize the real CDK app offline, once per configuration per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synth_helpers import BATCH_CONTEXT, HTTP_CONTEXT, JWT_CONTEXT, MODEL_CONTEXT, Synth, synthesize


@pytest.fixture(scope="session")
def layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for `layers/build/runtime` so these tests never wait for the heavy layer build."""
    folder = tmp_path_factory.mktemp("layer")
    (folder / "python").mkdir()
    return folder


@pytest.fixture(scope="session")
def parquet_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for `layers/build/parquet` (the batch functions' pyarrow layer), likewise."""
    folder = tmp_path_factory.mktemp("parquet-layer")
    (folder / "python").mkdir()
    return folder


@pytest.fixture(scope="session")
def synth_once(tmp_path_factory: pytest.TempPathFactory, layer_dir: Path,
               parquet_layer_dir: Path) -> Callable[..., Synth]:
    """Synthesize each distinct context once per session; modules share the result."""
    cache: dict[str, Synth] = {}

    def get(**context: Any) -> Synth:
        key = json.dumps(context, sort_keys=True)
        if key not in cache:
            cache[key] = synthesize(tmp_path_factory.mktemp("cdk.out"), layer_dir, context,
                                    parquet_layer_dir=parquet_layer_dir)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def default_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The app as `cdk synth` builds it (cdk.json flags), IAM auth only, x86_64, model churn/7."""
    return synth_once(**MODEL_CONTEXT)


@pytest.fixture(scope="module")
def api_key_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The app with API keys and a usage plan, on arm64 (both set through CDK context strings)."""
    return synth_once(**MODEL_CONTEXT, **{"slimserve:apiKeyRequired": "true", "slimserve:architecture": "arm64"})


@pytest.fixture(scope="module")
def batch_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The default app with batch scoring switched on (the one extra CDK context key)."""
    return synth_once(**BATCH_CONTEXT)


@pytest.fixture(scope="module")
def http_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The app behind the HTTP API (`-c slimserve:api=http`), IAM on every route."""
    return synth_once(**HTTP_CONTEXT)


@pytest.fixture(scope="module")
def jwt_synth(synth_once: Callable[..., Synth]) -> Synth:
    """The app behind the HTTP API with JWT auth (`-c slimserve:apiAuth=jwt`, issuer, audiences, a labels scope)."""
    return synth_once(**JWT_CONTEXT)
