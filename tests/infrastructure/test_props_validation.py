"""Bad settings fail at construction with a message that names the setting, before any synth."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3
from synth_helpers import build_app

from cdk.constructs.layers import Layers, LayersProps
from cdk.constructs.model_store import ModelStore, ModelStoreProps
from cdk.constructs.serving_api import ServingApi, ServingApiProps
from cdk.stacks.serving_stack import ServingStackProps


def _build(layer_dir: Path, **overrides: Any) -> ServingApi:
    stack = Stack(App(), "PropsTest")
    layer = Layers(stack, "Layers", LayersProps(runtime_dir=layer_dir)).runtime
    props = ServingApiProps(model_bucket=s3.Bucket(stack, "Models"), layer=layer, model_prefix="models/m/1/")
    return ServingApi(stack, "Serving", dataclasses.replace(props, **overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"reserved_concurrency": 0}, r"reserved_concurrency must be >= 1, got 0 \(0 would throttle every request\)"),
    ({"model_prefix": "models/m/1"}, r"model_prefix must be a relative key prefix ending with '/'"),
    ({"model_prefix": "/models/m/1/"}, r"model_prefix must be a relative key prefix"),
    ({"model_prefix": ""}, r"model_prefix must be a relative key prefix"),
    ({"model_prefix": "models/*/"}, r"model_prefix must be a relative key prefix .* without '\*'"),
    ({"throttle_rate_limit": 100, "throttle_burst_limit": 50},
     r"throttle_burst_limit \(50\) must be >= throttle_rate_limit \(100\)"),
    ({"throttle_rate_limit": 0}, r"throttle_rate_limit must be > 0"),
    ({"timeout_seconds": 30}, r"timeout_seconds must be between 1 and 29, got 30 \(API Gateway gives up"),
    ({"memory_size": 64}, r"memory_size must be between 128 and 10240, got 64"),
    ({"max_rows": 0}, r"max_rows must be >= 1, got 0"),
    ({"max_body_bytes": 7 * 1024 * 1024}, r"max_body_bytes must be between 1 and 6291456"),
    ({"model_manifest_sha256": "abc"}, r"model_manifest_sha256 must be 64 hex characters"),
    ({"stage_name": "v 1"}, r"stage_name must match"),
])
def test_bad_serving_props_raise_value_error(layer_dir: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build(layer_dir, **overrides)


def test_good_props_build(layer_dir: Path) -> None:
    serving = _build(layer_dir, model_manifest_sha256="a" * 64, api_key_required=True)
    assert serving.alias.alias_name == "live"


def test_missing_layer_tells_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Lambda layer not built: .*python does not exist\. Run `make layer`"):
        Layers(Stack(App(), "LayersTest"), "Layers", LayersProps(runtime_dir=tmp_path / "nowhere"))


def test_model_store_rejects_non_positive_log_expiry() -> None:
    with pytest.raises(ValueError, match=r"access_log_expiration_days must be >= 1, got 0"):
        ModelStore(Stack(App(), "StoreTest"), "Store", ModelStoreProps(access_log_expiration_days=0))


@pytest.mark.parametrize("name", ["", "a/b", "../x", "has space"])
def test_stack_rejects_model_names_that_would_escape_the_prefix(name: str) -> None:
    with pytest.raises(ValueError, match=r"model_name must match"):
        ServingStackProps(model_name=name).resolved_prefix()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("slimserve:apiKeyRequired", "maybe", r"apiKeyRequired must be true or false, got 'maybe'"),
    ("slimserve:architecture", "sparc", r"architecture must be one of \['arm64', 'x86_64'\], got 'sparc'"),
])
def test_bad_context_values_fail_clearly(layer_dir: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_app(context={key: value}, layer_dir=layer_dir)
