"""`slimserve:shadowAgreementBelow` becomes the shadow agreement alarm's threshold (0.8 unless set), or a
clear error naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App

from cdk.app import stack_props_from_context
from cdk.constructs.alarms import SHADOW_AGREEMENT_THRESHOLD

BASE = {"slimserve:modelName": "churn", "slimserve:batchScoring": "false"}
KEY = "slimserve:shadowAgreementBelow"


def _threshold(**context: Any) -> float:
    return stack_props_from_context(App(context={**BASE, **context})).shadow_agreement_below


def test_the_threshold_is_the_default_unless_set() -> None:
    assert _threshold() == SHADOW_AGREEMENT_THRESHOLD == 0.8
    assert _threshold(**{KEY: "0.95"}) == 0.95
    assert _threshold(**{KEY: 1}) == 1.0  # cdk.json's JSON number; every row must agree
    assert _threshold(**{KEY: 0.5}) == 0.5


@pytest.mark.parametrize("value", ["0", 0, "-0.1", "1.01", 2, "high", "", "nan", "inf", True])
def test_a_value_outside_zero_to_one_or_not_a_number_is_refused_by_name(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"context {KEY} must be a number in \(0, 1\], got "):
        _threshold(**{KEY: value})
