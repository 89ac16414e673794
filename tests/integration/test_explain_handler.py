"""POST /predict with "explain": true, through the Lambda handler on a proxy event, with the bundle in (moto) S3."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from functions.common.explain import EXPLAIN_FILE, EXPLAIN_GRAPH_FILE
from functions.common.manifest import MANIFEST_FILE
from pipeline.local.emulation import REGION, emulated_account, upload_bundle
from pipeline.local.server import load_inference_handler
from tests.integration.test_inference_handler import features, invoke


@pytest.fixture(scope="module")
def account() -> Iterator[Any]:
    with emulated_account():
        yield boto3.client("s3", region_name=REGION)


@pytest.fixture
def rf(account: Any, rf_bundle: Path) -> ModuleType:
    return load_inference_handler(upload_bundle(account, rf_bundle))


def _rows(module: ModuleType, count: int) -> list[dict[str, float]]:
    return [{name: float(i + j) for j, name in enumerate(features(module))} for i in range(count)]


def test_explain_adds_one_explanation_per_row_and_changes_nothing_else(rf: ModuleType) -> None:
    rows = _rows(rf, 3)
    status, plain = invoke(rf, "POST", "/predict", {"instances": rows, "id": "a"})
    status_explained, explained = invoke(rf, "POST", "/predict", {"instances": rows, "id": "a", "explain": True})
    assert status == status_explained == 200
    assert set(explained) == set(plain) | {"explanations"}
    assert {k: v for k, v in explained.items() if k not in ("explanations", "request_id")} == \
        {k: v for k, v in plain.items() if k != "request_id"}
    for answer, probabilities in zip(explained["explanations"], explained["probabilities"], strict=True):
        assert set(answer["contributions"]) == set(features(rf))
        assert answer["output"] == "probability" and answer["class"] == 1
        assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(probabilities[1],
                                                                                               abs=1e-6)


def test_explain_false_answers_as_before(rf: ModuleType) -> None:
    status, body = invoke(rf, "POST", "/predict", {"instances": _rows(rf, 1), "explain": False})
    assert status == 200 and "explanations" not in body


def test_more_than_a_hundred_rows_are_refused_by_name(rf: ModuleType) -> None:
    status, body = invoke(rf, "POST", "/predict", {"instances": _rows(rf, 101), "explain": True})
    assert status == 400 and body["error"]["code"] == "explain_too_many_rows" and body["error"]["field"] == "instances"
    status, _ = invoke(rf, "POST", "/predict", {"instances": _rows(rf, 101)})
    assert status == 200  # the limit is on explanations only


def test_explain_must_be_a_boolean(rf: ModuleType) -> None:
    status, body = invoke(rf, "POST", "/predict", {"instances": _rows(rf, 1), "explain": "yes"})
    assert status == 400 and body["error"]["code"] == "wrong_type" and body["error"]["field"] == "explain"


def test_a_bundle_without_explanations_answers_explain_unsupported(account: Any, rf_bundle: Path,
                                                                   tmp_path: Path) -> None:
    older = tmp_path / "older"
    shutil.copytree(rf_bundle, older)
    manifest = json.loads((older / MANIFEST_FILE).read_text())
    for name in (EXPLAIN_FILE, EXPLAIN_GRAPH_FILE):
        (older / name).unlink()
        manifest["files"].pop(name)
        manifest["sizes"].pop(name, None)
    (older / MANIFEST_FILE).write_text(json.dumps(manifest))
    module = load_inference_handler(upload_bundle(account, older))
    status, body = invoke(module, "POST", "/predict", {"instances": _rows(module, 1), "explain": True})
    assert status == 400 and body["error"]["code"] == "explain_unsupported"
    status, _ = invoke(module, "POST", "/predict", {"instances": _rows(module, 1)})
    assert status == 200


def test_the_openapi_document_describes_explain_and_explanations(rf: ModuleType) -> None:
    status, document = invoke(rf, "GET", "/openapi.json")
    assert status == 200
    schemas = document["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["explain"]["type"] == "boolean"
    assert "explanations" in schemas["PredictResponse"]["properties"]
    assert set(schemas["Explanation"]["required"]) >= {"base_value", "contributions"}
