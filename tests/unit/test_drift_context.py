"""`slimserve:driftPerFeatureMetrics` becomes the drift construct's setting (on unless switched off), or a
clear error naming the key."""

from __future__ import annotations

import pytest
from aws_cdk import App

from cdk.app import stack_props_from_context
from cdk.constructs.drift import DriftMonitorSettings

BASE = {"slimserve:modelName": "churn", "slimserve:batchScoring": "false"}


def _drift(**context: str | bool) -> DriftMonitorSettings:
    return stack_props_from_context(App(context={**BASE, **context})).drift


def test_per_feature_metrics_stay_on_unless_switched_off() -> None:
    assert _drift().per_feature_metrics is True
    assert _drift(**{"slimserve:driftPerFeatureMetrics": "false"}).per_feature_metrics is False
    assert _drift(**{"slimserve:driftPerFeatureMetrics": False}).per_feature_metrics is False  # cdk.json's JSON bool


def test_a_value_that_is_not_true_or_false_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="slimserve:driftPerFeatureMetrics must be true or false"):
        _drift(**{"slimserve:driftPerFeatureMetrics": "some"})
