"""Rollback Lambda: an EventBridge "CloudWatch Alarm State Change" for a champion alarm
(named ``slimserve-<model>-champion-<metric>``) serves the model's last known-good version again.

Duplicate and late events roll back once; a state other than ALARM changes nothing.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..common import aws
from ..common.errors import SlimserveError
from ..common.registry import Registry
from ..common.runtime import Runtime
from ..common.settings import RollbackSettings
from .service import AlarmEvent, parse_time, roll_back_champion

rt = Runtime.for_settings(RollbackSettings)
logger = rt.logger
settings = RollbackSettings.from_env()

CHAMPION_ALARM = re.compile(r"^slimserve-(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*)-champion-(?P<metric>[A-Za-z0-9_]+)$")


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: str
    reason: str = ""
    timestamp: str


class _Detail(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    alarm_name: str = Field(alias="alarmName", max_length=255)
    state: _State


class AlarmStateChange(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(min_length=1, max_length=128)
    detail_type: str = Field(alias="detail-type", pattern=r"^CloudWatch Alarm State Change$")
    detail: _Detail


@cache
def registry() -> Registry:
    return Registry(aws.client("dynamodb"), settings.registry_table)


def parse(event: Any) -> AlarmEvent:
    try:
        change = AlarmStateChange.model_validate(event)
        raised_at = parse_time(change.detail.state.timestamp)
    except (ValidationError, ValueError) as exc:
        raise SlimserveError(f"not a CloudWatch alarm state change: {str(exc).splitlines()[0]}",
                             code="bad_request") from None
    match = CHAMPION_ALARM.match(change.detail.alarm_name)
    if match is None:
        raise SlimserveError(f"alarm {change.detail.alarm_name!r} is not a champion alarm "
                             "(slimserve-<model>-champion-<metric>)", code="bad_request", field="alarmName")
    return AlarmEvent(event_id=change.id, alarm_name=change.detail.alarm_name, model=match["model"],
                      metric=match["metric"], state=change.detail.state.value, reason=change.detail.state.reason,
                      raised_at=raised_at)


@rt.handler(metrics=False)  # no metrics of its own: the registry and notices say what it did
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    alarm = parse(event)
    if alarm.state != "ALARM":
        return {"rolled_back": False, "reason": f"the alarm is {alarm.state}, not ALARM"}
    result = roll_back_champion(registry(), alarm, lock_ttl_seconds=settings.lock_ttl_seconds,
                                topic_arn=settings.notify_topic_arn)
    logger.info("champion alarm", extra={"alarm": alarm.alarm_name, "event_id": alarm.event_id, **result})
    return result
