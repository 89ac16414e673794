"""Roll a champion back to the last known-good version, under the model's release lock.

An alarm raised before the current champion took over speaks of an earlier one: such an event (a
duplicate, a late delivery, a retry after the rollback happened) changes nothing, so a burst of
events rolls back once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..common.errors import NoChampion
from ..common.notify import notify
from ..common.registry import Registry


@dataclass(frozen=True)
class AlarmEvent:
    event_id: str
    alarm_name: str
    model: str
    metric: str
    state: str
    reason: str
    raised_at: dt.datetime


def parse_time(text: str) -> dt.datetime:
    """CloudWatch's '2024-05-01T12:00:00.000+0000' as well as ISO 8601 with a colon in the offset."""
    text = text.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def roll_back_champion(registry: Registry, alarm: AlarmEvent, *, lock_ttl_seconds: int,
                       topic_arn: str | None = None, to_version: str | None = None) -> dict[str, Any]:
    owner = f"rollback:{alarm.event_id}"
    registry.require_model(alarm.model)  # an alarm named after a model never registered changes nothing
    registry.take_lock(alarm.model, owner, lock_ttl_seconds)
    try:
        return _roll_back(registry, alarm, topic_arn, to_version)
    finally:
        registry.release_lock(alarm.model, owner)


def _roll_back(registry: Registry, alarm: AlarmEvent, topic_arn: str | None,
               to_version: str | None) -> dict[str, Any]:
    champion = registry.champion(alarm.model)
    if champion is None:
        raise NoChampion(f"{alarm.model} has no champion to roll back")
    handled = next((e for e in registry.list(alarm.model) if _same_alarm(e.release, alarm)), None)
    if handled is not None:
        return {"rolled_back": False, "champion_version": champion.version,
                "reason": f"this alarm already rolled back {handled.version}"}
    if alarm.raised_at < parse_time(champion.updated_at):
        return {"rolled_back": False, "champion_version": champion.version,
                "reason": f"the alarm was raised before {champion.version} became champion: already handled"}
    reason = f"alarm {alarm.alarm_name}: {alarm.reason}"
    release = {"outcome": "rolled-back", "reason": reason, "alarm": alarm.alarm_name, "event_id": alarm.event_id,
               "raised_at": alarm.raised_at.isoformat()}
    restored = registry.restore(alarm.model, champion.version, reason, to_version=to_version, release=release)
    notify(topic_arn, f"slimserve: {alarm.model} rolled back to {restored.version}",
           {"model": alarm.model, "rolled_back": champion.version, "champion_version": restored.version,
            "reason": reason, "alarm": alarm.alarm_name, "event_id": alarm.event_id})
    return {"rolled_back": True, "from_version": champion.version, "champion_version": restored.version,
            "reason": reason}


def _same_alarm(release: dict[str, Any], alarm: AlarmEvent) -> bool:
    """The same event delivered again, or another event for the same change of the same alarm."""
    return bool(release) and (release.get("event_id") == alarm.event_id or (
        release.get("alarm") == alarm.alarm_name and release.get("raised_at") == alarm.raised_at.isoformat()))
