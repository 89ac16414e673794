"""The manifest and settings records (functions/common/records.py): every constraint holds on untrusted
input, the refusal names the field, and what is written reads back equal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.common.bundle import read_manifest
from functions.common.errors import BundleError
from functions.common.manifest import CategoryProfile, Feature, Manifest, NumericProfile
from functions.common.records import RecordError

SHA = "0" * 64


def manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "m", "version": "v1", "created_at": "2026-01-01T00:00:00+00:00", "task": "classification",
        "estimator": "LogisticRegression", "classes": [0, 1],
        "features": [{"name": "a", "type": "number"}, {"name": "c", "type": "category", "categories": ["x", "y"]}],
        "onnx": {"input_mode": "columns", "inputs": ["a", "c"], "prediction_output": "label",
                 "probability_output": "probabilities"},
        "files": {"model.onnx": SHA}, "parity": {"rows": 10, "max_abs_diff": 0.0, "tolerance": 1e-5},
        "profile": {"rows": 10, "features": {
            "a": {"type": "number", "count": 10, "null_rate": 0.0, "quantiles": [0.0, 1.0]},
            "c": {"type": "category", "count": 10, "null_rate": 0.1, "shares": {"x": 0.5, "y": 0.5}}}},
    }
    document.update(changes)
    return document


def refused(document: Any) -> str:
    with pytest.raises(RecordError) as caught:
        Manifest.model_validate(document)
    return str(caught.value)


def test_a_valid_manifest_reads_with_its_typed_profile() -> None:
    m = Manifest.model_validate(manifest())
    assert m.feature_names == ["a", "c"] and m.onnx_inputs == {"a": "a", "c": "c"}
    assert isinstance(m.profile and m.profile.features["a"], NumericProfile)
    assert isinstance(m.profile and m.profile.features["c"], CategoryProfile)
    assert m.parity.tolerance == 1e-5 and m.missing_markers[0] == ""  # defaults filled in


@pytest.mark.parametrize(("changes", "named"), [
    ({"name": ""}, "name: should have at least 1 character"),
    ({"name": "-bad"}, "name: should match"),
    ({"version": "v1\n"}, "version: should match"),  # '$' never stops before a final newline
    ({"task": "ranking"}, "task: should be 'classification' or 'regression'"),
    ({"format_version": 99}, "format_version: should be less than or equal to 4"),
    ({"format_version": 0}, "format_version: should be greater than or equal to 1"),
    ({"format_version": "4"}, "format_version: should be an integer, got text"),
    ({"features": []}, "features: should have at least 1 item"),
    ({"features": [{"name": "a", "type": "number", "colour": 1}]}, "features[0].colour: unknown field"),
    ({"features": [{"type": "number"}]}, "features[0].name: required"),
    ({"features": [{"name": "a", "type": "number", "nullable": 1}]}, "features[0].nullable: should be a boolean"),
    ({"features": [{"name": "a", "type": "number", "minimum": True}]}, "features[0].minimum: should be a number"),
    ({"features": [{"name": "c", "type": "category"}]}, "categorical feature 'c' needs its categories"),
    ({"features": [{"name": "a", "type": "number", "categories": ["x"]}]}, "numeric feature 'a' cannot list"),
    ({"features": [{"name": "c", "type": "category", "categories": ["x"], "nullable": True}]},
     "needs the category a null is read as"),
    ({"classes": [0]}, "a classifier needs at least two class labels"),
    ({"classes": [0, [1]]}, "classes[1]: should be a boolean or an integer or a number or text"),
    ({"ignored_columns": ["a"]}, "a column cannot be both a feature and ignored"),
    ({"onnx": {"input_mode": "columns", "inputs": ["a"], "prediction_output": "label", "probability_output": "p"}},
     "columns mode needs one ONNX input per feature"),
    ({"onnx": {"input_mode": "tensor", "inputs": [], "prediction_output": "label"}},
     "onnx.inputs: should have at least 1 item"),
    ({"files": {"model.onnx": "xyz"}}, "bad sha256 for 'model.onnx'"),
    ({"files": {"model.onnx": SHA, "../x": SHA}}, "bad file name in manifest"),
    ({"files": {"other": SHA}}, "files must list model.onnx"),
    ({"sizes": {"model.onnx": 1.5}}, "sizes.model.onnx: should be an integer"),
    ({"parity": {"rows": 0, "max_abs_diff": 0.0, "tolerance": 1e-5}}, "parity.rows: should be greater than or equal"),
    ({"parity": {"rows": 1, "max_abs_diff": 0.0, "tolerance": 0}}, "parity.tolerance: should be greater than 0"),
    ({"parity": {"rows": 1, "max_abs_diff": float("nan"), "tolerance": 1}}, "parity.max_abs_diff: should be"),
    ({"quantization": {"float_sha256": "abc", "float_bytes": 1,
                       "parity": {"rows": 1, "max_abs_diff": 0.0, "tolerance": 1}}}, "quantization.float_sha256"),
    ({"profile": {"rows": 1, "features": {"a": {"count": 1, "null_rate": 0, "quantiles": [0, 1]}}}},
     "profile.features.a.type: should be 'number' or 'category'"),
    ({"profile": {"rows": 1, "features": {"a": {"type": "number", "count": 1, "null_rate": 2, "quantiles": [0, 1]}}}},
     "profile.features.a.null_rate: should be less than or equal to 1"),
    ({"profile": {"rows": 1, "features": {"a": {"type": "number", "count": 1, "null_rate": 0,
                                                "quantiles": [1, 0]}}}}, "quantiles must be non-decreasing"),
    ({"profile": {"rows": 1, "features": {"c": {"type": "category", "count": 1, "null_rate": 0, "shares": {}}}}},
     "profile.features.c.shares: should have at least 1 item"),
    ({"extra": 1}, "extra: unknown field"),
])
def test_every_rule_refuses_and_names_the_field(changes: dict[str, Any], named: str) -> None:
    assert named in refused(manifest(**changes))


def test_a_regressor_has_no_classes_and_every_problem_is_listed() -> None:
    message = refused(manifest(task="regression", name="", task_extra=1))
    assert "name: should have at least 1 character" in message and "task_extra: unknown field" in message
    assert "a regressor has no class labels" in refused(manifest(task="regression"))


def test_an_older_format_drops_its_untyped_profile() -> None:
    m = Manifest.model_validate(manifest(format_version=2, profile={"bins": 10}))
    assert m.profile is None


def test_a_refused_manifest_is_a_bundle_error_naming_the_field() -> None:
    raw = json.dumps(manifest(features=[{"name": "a", "type": "numbr"}])).encode()
    with pytest.raises(BundleError, match=r"features\[0\]\.type"):
        read_manifest(lambda name: raw)


def test_construction_validates_as_reading_does() -> None:
    with pytest.raises(ValueError, match="categories"):
        Feature(name="c", type="category")
    assert Feature(name="a", type="number", minimum=1).minimum == 1.0  # an integer bound is a float


NAMES = st.text("abcdefgh", min_size=1, max_size=6)
FEATURES = st.lists(NAMES, min_size=1, max_size=4, unique=True)


@given(FEATURES, st.floats(allow_nan=False, allow_infinity=False, min_value=0), st.booleans())
def test_what_is_written_reads_back_equal(names: list[str], diff: float, quantized: bool) -> None:
    quantization = {"float_sha256": SHA, "float_bytes": 5, "metric_losses": {"accuracy": 0.1},
                    "parity": {"rows": 1, "max_abs_diff": 0.0, "tolerance": 1}}
    document = manifest(features=[{"name": n, "type": "number", "maximum": 1.5} for n in names],
                        onnx={"input_mode": "tensor", "inputs": ["X"], "prediction_output": "label",
                              "probability_output": "p"},
                        parity={"rows": 3, "max_abs_diff": diff, "tolerance": 1.0}, profile=None,
                        quantization=quantization if quantized else None)
    m = Manifest.model_validate(document)
    assert Manifest.model_validate_json(m.model_dump_json(indent=2)) == m
    assert Manifest.model_validate(m.model_dump()) == m
    assert m.model_copy(update={"version": "v2"}).version == "v2" and m.version == "v1"


def test_non_finite_numbers_are_written_as_null() -> None:
    m = Manifest.model_validate(manifest(features=[{"name": "a", "type": "number", "maximum": float("inf")},
                                                   {"name": "c", "type": "category", "categories": ["x"]}]))
    assert json.loads(m.model_dump_json())["features"][0]["maximum"] is None
