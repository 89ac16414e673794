"""Prediction ids: what is issued verifies to what was signed; anything altered, forged or malformed is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.common.errors import ConfigurationError, InvalidPredictionId
from functions.common.prediction_ids import MAC_CHARS, MAX_ID_CHARS, PredictionRef, issue, key_from_hex, verify
from tests.conftest import examples

KEY = bytes(range(32))
# Sizes a served model has (names and request ids of tens of characters); any Unicode, escaped in the payload.
names = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), min_size=1, max_size=12)
predictions = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=12))


@settings(max_examples=examples(200))
@given(model=names, version=names, request_id=names, row=st.integers(0, 10**6), prediction=predictions)
def test_an_issued_id_verifies_to_what_was_signed(model: str, version: str, request_id: str, row: int,
                                                  prediction: object) -> None:
    pid = issue(KEY, model, version, request_id, row, prediction)  # type: ignore[arg-type]
    assert len(pid) <= MAX_ID_CHARS and pid.startswith("p1.") and len(pid.rsplit(".", 1)[1]) == MAC_CHARS
    ref = verify(KEY, pid)
    assert ref == PredictionRef(model, version, request_id, row, prediction)  # type: ignore[arg-type]
    assert type(ref.prediction) is type(prediction)


@settings(max_examples=examples(200))
@given(data=st.data(), row=st.integers(0, 1000))
def test_any_single_character_changed_is_refused(data: st.DataObject, row: int) -> None:
    pid = issue(KEY, "churn", "7", "req-1", row, "yes")
    position = data.draw(st.integers(0, len(pid) - 1), label="position")
    replacement = data.draw(st.sampled_from("AZaz09-_.=+/ "), label="replacement")
    forged = pid[:position] + replacement + pid[position + 1:]
    if forged == pid:
        return
    with pytest.raises(InvalidPredictionId) as refused:
        verify(KEY, forged)
    assert refused.value.status == 400 and refused.value.code == "invalid_prediction_id"


@settings(max_examples=examples(100))
@given(text=st.one_of(st.text(max_size=600), st.binary(max_size=50).map(lambda b: "p1." + b.hex() + ".x" * 3)))
def test_arbitrary_text_is_refused_never_crashes(text: str) -> None:
    with pytest.raises(InvalidPredictionId):
        verify(KEY, text)


@pytest.mark.parametrize("value", [None, 7, ["p1.a.b"], "", "p1..", "p1.a.b.c", "p1." + "A" * MAX_ID_CHARS + ".b"])
def test_malformed_and_oversized_ids_are_refused(value: object) -> None:
    with pytest.raises(InvalidPredictionId):
        verify(KEY, value)


def test_another_keys_id_is_refused() -> None:
    with pytest.raises(InvalidPredictionId, match="not issued"):
        verify(KEY, issue(bytes(32), "churn", "7", "r", 0, 1))


def test_an_id_that_would_be_too_long_is_not_issued() -> None:
    with pytest.raises(ValueError, match="limit"):
        issue(KEY, "m" * 400, "1", "r", 0, 1)
    with pytest.raises(ValueError):
        issue(KEY, "m", "1", "r", 0, float("nan"))


@pytest.mark.parametrize("text", ["zz" * 16, "00" * 8])
def test_a_bad_local_key_fails_at_configuration(text: str) -> None:
    with pytest.raises(ConfigurationError, match="PREDICTION_ID_KEY"):
        key_from_hex(text)
