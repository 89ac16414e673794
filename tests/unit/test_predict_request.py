"""POST /predict's body is read with the standard library; it refuses and accepts exactly what the
pydantic model that describes it in the OpenAPI document does, with the same codes and messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from functions.common.errors import InvalidInput
from functions.inference.openapi import PredictRequest as Described
from functions.inference.request import parse_request, request_shape_error

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=12)
BODIES = st.dictionaries(st.sampled_from(["instances", "id", "explain", "x", "rows"]), JSON | st.lists(
    st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=3), SCALARS, max_size=2) | SCALARS, max_size=3)
    | st.text(min_size=250, max_size=260), max_size=4) | JSON


def described(text: str) -> Any:
    try:
        request = Described.model_validate_json(text)
    except ValidationError as exc:
        error = request_shape_error(exc.errors())
        return (error.code, error.field, error.message)
    return json.dumps([request.instances, request.id, request.explain])


def read(text: str) -> Any:
    try:
        request = parse_request(text)
    except InvalidInput as exc:
        return (exc.code, exc.field, exc.message)
    return json.dumps([request.instances, request.id, request.explain])


@given(BODIES)
def test_any_body_is_read_as_the_described_model_reads_it(body: Any) -> None:
    text = json.dumps(body)
    assert read(text) == described(text)


@pytest.mark.parametrize("text", [
    "", " ", "{", "[1]", "null", '{"instances": [[1]]} x', '{"instances": [[NaN, Infinity, -Infinity]]}',
    '{"instances": [1], "instances": [[1]]}', '{"instances": [[1]], "id": "\\ud800"}',
    '{"instances": [{"\\ud83d\\ude00": 1}]}', '{"instances": [{"a": 1, "a": 2}]}', '\n{"instances": [[1]]}\n',
    '{"instances": [[1]], "explain": true, "id": "' + "x" * 256 + '"}',
])
def test_edge_texts_are_read_as_the_described_model_reads_them(text: str) -> None:
    assert read(text) == described(text)


def test_the_request_never_shows_its_rows() -> None:
    request = parse_request(json.dumps({"instances": [[123456.789]]}))
    assert "123456" not in repr(request) and "123456" not in str(request)
