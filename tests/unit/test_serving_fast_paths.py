"""The small-request paths of the serving code give the answers of the general paths they shortcut."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.common.bundle import (
    SMALL_REQUEST_ROWS,
    TIE_TOLERANCE,
    directory_reader,
    first_max,
    first_max_row,
    load_model,
)
from functions.common.manifest import Feature, OnnxSignature
from functions.common.schema import FEW_ROWS, RowSchema

FLOAT32_MAX = float(np.finfo(np.float32).max)
probability = st.floats(min_value=0, max_value=1, allow_nan=False)


@settings(max_examples=300, derandomize=True)
@given(st.lists(probability, min_size=2, max_size=6), st.data())
def test_labels_of_one_row_in_python_match_numpy(row: list[float], data: st.DataObject) -> None:
    # Near-ties on purpose: a copy of the top probability nudged by about the tolerance.
    j = data.draw(st.integers(0, len(row) - 1))
    row[j] = max(row) - data.draw(st.sampled_from([0.0, TIE_TOLERANCE / 2, TIE_TOLERANCE, 2 * TIE_TOLERANCE]))
    assert first_max_row(row) == int(first_max(np.array([row]))[0])


def test_a_row_with_nan_gets_the_first_class_as_numpy_gives_it() -> None:
    for row in ([0.2, math.nan, 0.9], [math.nan, 0.5], [0.5, math.nan]):
        assert first_max_row(row) == int(first_max(np.array([row]))[0]) == 0


def tensor_schema(dtype: str) -> RowSchema:
    features = [Feature(name=n, type="number") for n in ("a", "b", "c")]
    return RowSchema(features, OnnxSignature(input_mode="tensor", inputs=["X"], prediction_output="variable",
                                             input_dtype=dtype), 10_000)


CELLS = [1, 2.5, -3, 0, FLOAT32_MAX, -FLOAT32_MAX, 2**60, math.nan, math.inf, -math.inf, 1e39, -1e39, 10**40,
         True, None, "1"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_few_rows_are_checked_as_many_rows_are(dtype: str, cell: Any) -> None:
    schema = tensor_schema(dtype)
    row = [1.0, cell, 2]
    few = schema._all_numbers_fast([row])
    many = schema._all_numbers_fast([row] * (FEW_ROWS + 1))
    assert (few is None) == (many is None)
    if few is not None and many is not None:
        assert few.dtype == many.dtype == np.dtype(dtype)
        assert np.array_equal(few[0], many[0])


@pytest.mark.parametrize("bundle", ["rf_bundle", "regression_bundle"])
def test_small_and_large_requests_answer_alike(bundle: str, request: pytest.FixtureRequest) -> None:
    model = load_model(directory_reader(request.getfixturevalue(bundle)))
    if model.schema.signature.input_mode != "tensor":
        pytest.skip("rows of numbers only")
    rng = np.random.default_rng(7)
    rows = (rng.normal(size=(SMALL_REQUEST_ROWS, len(model.manifest.features))) * 3).tolist()
    for n in (1, 3, SMALL_REQUEST_ROWS):  # the list path, against the array path on the same feeds
        answer = model.predict(rows[:n])
        labels, proba = model.score(model.schema.to_feeds(rows[:n]))
        assert answer.predictions == labels.tolist()
        assert [type(p) for p in answer.predictions] == [type(p) for p in labels.tolist()]
        assert answer.probabilities == (None if proba is None else proba.tolist())
