"""Row validation: every bad input gets its own code and the field at fault; good rows pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.common.errors import InvalidInput
from functions.common.manifest import Feature, OnnxSignature
from functions.common.schema import RowSchema
from tests.conftest import examples

FEATURES = [
    Feature(name="age", type="number", minimum=18, maximum=90),
    Feature(name="plan", type="category", categories=["basic", "plus", "pro"]),
    Feature(name="income", type="number", nullable=True),
]
COLUMNS = OnnxSignature(input_mode="columns", inputs=["age", "plan", "income"], prediction_output="label",
                        probability_output="probabilities")
NUMERIC = [Feature(name=n, type="number") for n in ("a", "b", "c")]
TENSOR = OnnxSignature(input_mode="tensor", inputs=["X"], prediction_output="variable")


def schema(max_rows: int = 100) -> RowSchema:
    return RowSchema(FEATURES, COLUMNS, max_rows)


def refused(instances: Any, s: RowSchema | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        (s or schema()).to_feeds(instances)
    return info.value


def test_keyed_and_ordered_rows_give_the_same_feeds() -> None:
    keyed = schema().to_feeds([{"age": 30, "plan": "pro", "income": 1.5},
                               {"income": None, "plan": "basic", "age": 40.5}])
    ordered = schema().to_feeds([[30, "pro", 1.5], [40.5, "basic", None]])
    for name in ("age", "plan", "income"):
        assert keyed[name].shape == (2, 1)
        np.testing.assert_array_equal(keyed[name], ordered[name])
    assert keyed["age"].dtype == np.float32 and keyed["plan"].dtype == object
    assert math.isnan(keyed["income"][1, 0])  # null on a nullable feature is a missing value


def test_tensor_mode_stacks_features_in_schema_order() -> None:
    s = RowSchema(NUMERIC, TENSOR, 10)
    feeds = s.to_feeds([{"c": 3, "a": 1, "b": 2}, [4, 5, 6]])
    np.testing.assert_array_equal(feeds["X"], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))


def test_float64_signature_keeps_double_precision() -> None:
    s = RowSchema(NUMERIC, TENSOR.model_copy(update={"input_dtype": "float64"}), 10)
    assert s.to_feeds([[0.1, 0.2, 0.3]])["X"].dtype == np.float64


@pytest.mark.parametrize(("instances", "code", "field"), [
    ({"age": 1}, "wrong_type", "instances"),
    ([], "empty_instances", "instances"),
    ([[30, "pro", 1.0]] * 101, "too_many_rows", "instances"),
    (["row"], "wrong_type", "instances[0]"),
    ([[30, "pro"]], "wrong_length", "instances[0]"),
    ([{"age": 30, "plan": "pro"}], "missing_feature", "instances[0].income"),
    ([{"age": 30, "plan": "pro", "income": 1, "colour": "red"}], "unknown_feature", "instances[0].colour"),
    ([{"age": 30, "plan": "pro", "incme": 1}], "misspelled_feature", "instances[0].incme"),
    ([{"age": "30", "plan": "pro", "income": 1}], "wrong_type", "instances[0].age"),
    ([{"age": True, "plan": "pro", "income": 1}], "wrong_type", "instances[0].age"),
    ([{"age": [30], "plan": "pro", "income": 1}], "wrong_type", "instances[0].age"),
    ([{"age": None, "plan": "pro", "income": 1}], "null_value", "instances[0].age"),
    ([{"age": float("nan"), "plan": "pro", "income": 1}], "non_finite", "instances[0].age"),
    ([{"age": float("inf"), "plan": "pro", "income": 1}], "non_finite", "instances[0].age"),
    ([{"age": 30, "plan": "pro", "income": float("nan")}], "non_finite", "instances[0].income"),
    ([{"age": 1e39, "plan": "pro", "income": 1}], "out_of_range", "instances[0].age"),
    ([{"age": 10**400, "plan": "pro", "income": 1}], "out_of_range", "instances[0].age"),
    ([{"age": 30, "plan": "platinum", "income": 1}], "unknown_category", "instances[0].plan"),
    ([{"age": 30, "plan": 2, "income": 1}], "wrong_type", "instances[0].plan"),
    ([{"age": 30, "plan": None, "income": 1}], "null_value", "instances[0].plan"),
    ([[30, "pro", 1.0], [31, "pro", 2.0], [32, "pro", "x"]], "wrong_type", "instances[2].income"),
])
def test_each_bad_input_has_its_code_and_field(instances: Any, code: str, field: str) -> None:
    error = refused(instances)
    assert (error.code, error.field) == (code, field)
    assert error.status == 400 and error.message


def test_misspelling_suggests_the_right_name() -> None:
    assert "did you mean 'income'" in refused([{"age": 30, "plan": "pro", "incme": 1}]).message


def test_unknown_category_lists_known_ones() -> None:
    assert "basic" in refused([{"age": 30, "plan": "gold", "income": 1}]).message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
ROW = st.one_of(
    st.fixed_dictionaries({"age": JSON_VALUES, "plan": st.sampled_from(["basic", "pro", "x"]) | JSON_VALUES,
                           "income": JSON_VALUES}),
    st.lists(JSON_VALUES, min_size=2, max_size=4),
    JSON_VALUES,
)


@settings(max_examples=examples(300))
@given(st.lists(ROW, max_size=6) | JSON_VALUES)
def test_any_json_is_either_valid_feeds_or_a_clear_refusal(instances: Any) -> None:
    try:
        feeds = schema().to_feeds(instances)
    except InvalidInput as error:
        assert error.code and error.message
        assert error.field is None or error.field.startswith("instances")
        return
    n = len(instances)
    assert all(v.shape == (n, 1) for v in feeds.values())
    assert np.isfinite(feeds["age"]).all()
    assert set(feeds["plan"][:, 0]) <= {"basic", "plus", "pro"}


@settings(max_examples=examples(200))
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=3, max_size=3),
                min_size=1, max_size=20))
def test_finite_numbers_round_trip(rows: list[list[float]]) -> None:
    feeds = RowSchema(NUMERIC, TENSOR, 100).to_feeds(rows)
    np.testing.assert_array_equal(feeds["X"], np.array(rows, dtype=np.float32))
