"""`slimserve:retrainSchedule` and its companions become RetrainingSettings, or a clear error naming the key."""

from __future__ import annotations

import pytest
from aws_cdk import App

from cdk.app import stack_props_from_context

BASE = {"slimserve:modelName": "churn", "slimserve:batchScoring": "false"}


def _retraining(**context: str):  # type: ignore[no-untyped-def]
    return stack_props_from_context(App(context={**BASE, **context})).retraining


def test_no_schedule_unless_configured() -> None:
    assert _retraining().schedule is None


def test_a_schedule_with_its_target_and_data_prefix() -> None:
    settings = _retraining(**{"slimserve:retrainSchedule": "cron(0 3 ? * MON *)", "slimserve:retrainTarget": "churned",
                              "slimserve:retrainDataPrefix": "churn/latest"})
    assert settings.schedule == "cron(0 3 ? * MON *)" and settings.data_prefix == "churn/latest"
    assert dict(settings.hyperparameters) == {"target": "churned"}


@pytest.mark.parametrize(("context", "message"), [
    ({"slimserve:retrainSchedule": "every week", "slimserve:retrainTarget": "y"}, "retrainSchedule must be an EventB"),
    ({"slimserve:retrainSchedule": "rate()", "slimserve:retrainTarget": "y"}, "retrainSchedule must be"),
    ({"slimserve:retrainSchedule": "rate(7 days)"}, "needs slimserve:retrainTarget"),
    ({"slimserve:retrainDataPrefix": "/churn/"}, "retrainDataPrefix must be a key prefix"),
])
def test_bad_retraining_context_is_refused_by_name(context: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _retraining(**context)
