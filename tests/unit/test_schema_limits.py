"""Refusals cost O(body size) and stay small: the "did you mean" search is capped, echoed values are cut,
and the JSON Schema published for rows says what the code accepts."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from functions.common.errors import ECHO_LIMIT, FIELD_LIMIT, MESSAGE_LIMIT, InvalidInput, SlimserveError, clip, echo
from functions.common.manifest import Feature, OnnxSignature
from functions.common.schema import SUGGESTION_CANDIDATES, RowSchema, suggest_name

NAMES = [f"feature_{i:02d}" for i in range(30)]
NUMERIC = RowSchema([Feature(name=n, type="number") for n in NAMES],
                    OnnxSignature(input_mode="tensor", inputs=["X"], prediction_output="label"), max_rows=100)
MIXED = RowSchema([Feature(name="age", type="number", minimum=18, maximum=90),
                   Feature(name="plan", type="category", categories=["basic", "plus", "pro"]),
                   Feature(name="income", type="number", nullable=True)],
                  OnnxSignature(input_mode="columns", inputs=["age", "plan", "income"], prediction_output="label"),
                  max_rows=100)


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every similarity comparison the suggestion search makes: the name each key was compared with."""
    made: list[str] = []

    class Counting(difflib.SequenceMatcher):  # type: ignore[type-arg]
        def set_seq1(self, a: Any) -> None:
            if a:  # the constructor sets an empty sequence first: not a comparison
                made.append(a)
            super().set_seq1(a)

    monkeypatch.setattr(difflib, "SequenceMatcher", Counting)
    yield made


def refused(schema: RowSchema, row: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        schema.to_feeds([row])
    return info.value


def test_a_flood_of_unknown_keys_makes_a_bounded_number_of_comparisons(comparisons: list[str]) -> None:
    row = {f"unknown_key_{i}": 1.0 for i in range(188_000)}  # ~5 MB as JSON, under the body limit
    error = refused(NUMERIC, row)
    assert error.code == "missing_feature"
    assert 0 < len(comparisons) <= SUGGESTION_CANDIDATES * len(NAMES)


def test_the_cap_holds_with_every_feature_present_too(comparisons: list[str]) -> None:
    row = {**dict.fromkeys(NAMES, 1.0), **{f"x{i}": 1.0 for i in range(50_000)}}
    error = refused(NUMERIC, row)
    assert error.code == "unknown_feature" and "(and 49999 more)" in error.message
    assert comparisons == []  # nothing is missing, so nothing can be misspelled


def test_a_misspelling_among_the_first_keys_is_still_suggested() -> None:
    row = {**{n: 1.0 for n in NAMES if n != "feature_07"}, "feature_7": 1.0}
    error = refused(NUMERIC, row)
    assert (error.code, error.field) == ("misspelled_feature", "instances[0].feature_7")
    assert "did you mean 'feature_07'?" in error.message


def test_keys_past_the_cap_are_not_compared() -> None:
    decoys = [f"zz{i}" for i in range(SUGGESTION_CANDIDATES)]
    assert suggest_name([*decoys, "feature_7"], ["feature_07"]) is None
    assert suggest_name([*decoys[:-1], "feature_7"], ["feature_07"]) == ("feature_7", "feature_07")


def test_keys_too_long_to_match_are_skipped_without_a_comparison(comparisons: list[str]) -> None:
    long_keys = [f"feature_07{'x' * 40}{i}" for i in range(100)]
    assert suggest_name([*long_keys, "feature_7"], ["feature_07"]) == ("feature_7", "feature_07")
    assert len(comparisons) == 1


def test_a_huge_key_gives_a_small_error(comparisons: list[str]) -> None:
    key = "k" * (4 * 1024 * 1024)
    error = refused(NUMERIC, {**dict.fromkeys(NAMES, 1.0), key: 1.0})
    body = json.dumps(error.to_body("req-1"))
    assert error.code == "unknown_feature" and len(body) < 2 * MESSAGE_LIMIT
    assert error.field is not None and error.field.startswith("instances[0].kkkk") and len(error.field) < 400
    assert f"({len(key) - ECHO_LIMIT} more characters)" in error.message
    assert comparisons == []


def test_a_huge_unknown_category_gives_a_small_error() -> None:
    error = refused(MIXED, {"age": 30, "plan": "p" * 1_000_000, "income": None})
    assert error.code == "unknown_category" and len(json.dumps(error.to_body(None))) < 2 * MESSAGE_LIMIT


def test_clip_and_echo_keep_short_values_whole_and_cut_long_ones() -> None:
    assert clip("short", 10) == "short" and echo("short") == "'short'"
    assert clip("abcdef", 3) == "abc...(3 more characters)"
    assert echo("x" * 100, 4) == "'xxxx'...(96 more characters)"
    assert len(echo(list(range(100_000)))) < 2 * ECHO_LIMIT


def test_every_error_message_and_field_is_bounded() -> None:
    error = SlimserveError("m" * 10_000_000, field="f" * 10_000_000)
    assert len(error.message) < MESSAGE_LIMIT + 40 and len(error.field or "") < FIELD_LIMIT + 40
    assert len(json.dumps(error.to_body("r"))) < 2 * MESSAGE_LIMIT


# -- the published row schema agrees with the code ---------------------------------------------

def accepted_by_schema(schema: RowSchema, instances: Any) -> bool:
    try:
        jsonschema.Draft202012Validator(schema.json_schema()).validate(instances)
    except jsonschema.ValidationError:
        return False
    return True


def accepted_by_code(schema: RowSchema, instances: Any) -> bool:
    try:
        schema.to_feeds(instances)
    except InvalidInput:
        return False
    return True


AGREEMENT = [
    [{"age": 30, "plan": "pro", "income": 1.5}],
    [{"age": 30, "plan": "pro", "income": None}],
    [[30, "basic", None], [1e30, "plus", -2]],
    [],
    [{"age": 30, "plan": "gold", "income": 1.5}],
    [{"age": None, "plan": "pro", "income": 1.5}],
    [{"age": "30", "plan": "pro", "income": 1.5}],
    [{"age": True, "plan": "pro", "income": 1.5}],
    [{"age": 30, "plan": None, "income": 1.5}],
    [{"age": 30, "plan": "pro"}],
    [{"age": 30, "plan": "pro", "income": 1.5, "extra": 1}],
    [[30, "pro"]],
    [[30, "pro", 1.5, 4]],
    [["pro", 30, 1.5]],
    [{"age": 1e39, "plan": "pro", "income": 1.5}],
    [{"age": 10**40, "plan": "pro", "income": 1.5}],
    [7],
    [[30, "pro", 1.5]] * 101,
]


@pytest.mark.parametrize("instances", AGREEMENT, ids=range(len(AGREEMENT)))
def test_the_published_row_schema_accepts_exactly_what_the_code_accepts(instances: Any) -> None:
    assert accepted_by_schema(MIXED, instances) == accepted_by_code(MIXED, instances)


def test_the_row_schema_names_every_feature_with_its_categories_and_nullability() -> None:
    doc = MIXED.json_schema()
    keyed, ordered = doc["items"]["anyOf"]
    assert keyed["required"] == ["age", "plan", "income"] and keyed["additionalProperties"] is False
    assert keyed["properties"]["plan"]["enum"] == ["basic", "plus", "pro"]
    assert keyed["properties"]["income"]["type"] == ["number", "null"]
    assert "18 to 90" in keyed["properties"]["age"]["description"]
    assert [c["title"] for c in ordered["prefixItems"]] == ["age", "plan", "income"]
    assert (doc["minItems"], doc["maxItems"]) == (1, 100)


def test_request_rows_keep_float32_range_even_for_a_float64_model() -> None:
    wide = RowSchema([Feature(name="x", type="number")],
                     OnnxSignature(input_mode="tensor", input_dtype="float64", inputs=["X"], prediction_output="y"),
                     max_rows=10)
    for value in (3.4e38, 3.5e38, -1e300):
        assert accepted_by_schema(wide, [[value]]) == accepted_by_code(wide, [[value]]) == (abs(value) < 3.41e38)
