"""The model registry: one DynamoDB item per model version, changed only by conditional writes.

Every status change names the status it expects and the revision it read, so two writers can
never both win; the champion is a pointer item moved in one transaction with the two versions
it affects, so there is never more than one champion.

Serving reads one item per model, the routing item (champion, canary and the canary's weight,
perhaps a shadow and its share, with the bundles they name), moved in the same transactions as the
statuses. A release lock item per model keeps releases, rollbacks and code deployments from overlapping.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import aws
from .errors import (
    LockHeld,
    NoChampion,
    NothingToRollBack,
    RegistryConflict,
    UnknownModel,
    UnknownVersion,
    WriteConflict,
)

CHAMPION_POINTER = "~champion"  # sort key of the pointer item; versions cannot start with '~'
ROUTING_ITEM = "~routing"  # what serving reads: champion, canary, weight, shadow, share and their bundles
LOCK_ITEM = "~lock"  # the model's release lock: owner, expires_at (epoch seconds), taken_at
STATUSES = ("candidate", "rejected", "canary", "champion", "retired", "rolled-back")
# Which statuses a version may move to from each status.
TRANSITIONS: dict[str, frozenset[str]] = {
    "candidate": frozenset({"rejected", "canary", "champion"}),
    "canary": frozenset({"champion", "rolled-back"}),
    "champion": frozenset({"retired", "rolled-back"}),
    "rejected": frozenset(),
    "retired": frozenset({"canary", "champion"}),  # a rollback target may serve again
    "rolled-back": frozenset(),
}


@dataclass
class ModelEntry:
    model: str
    version: str
    status: str = "candidate"
    bundle_uri: str = ""
    manifest_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    lambda_version: str | None = None
    reason: str = ""
    release: dict[str, Any] = field(default_factory=dict)
    """How the version's last release ended: outcome, reason and the figures it was judged on."""
    created_at: str = ""
    updated_at: str = ""
    revision: int = 0

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "model": {"S": self.model}, "version": {"S": self.version}, "status": {"S": self.status},
            "bundle_uri": {"S": self.bundle_uri}, "manifest_sha256": {"S": self.manifest_sha256},
            "metrics": {"S": json.dumps(self.metrics)}, "lineage": {"S": json.dumps(self.lineage)},
            "verdict": {"S": json.dumps(self.verdict)}, "reason": {"S": self.reason},
            "release": {"S": json.dumps(self.release)},
            "created_at": {"S": self.created_at}, "updated_at": {"S": self.updated_at},
            "revision": {"N": str(self.revision)},
        }
        if self.lambda_version is not None:
            item["lambda_version"] = {"S": self.lambda_version}
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ModelEntry:
        text = {k: v["S"] for k, v in item.items() if "S" in v}
        return cls(model=text["model"], version=text["version"], status=text["status"],
                   bundle_uri=text.get("bundle_uri", ""), manifest_sha256=text.get("manifest_sha256", ""),
                   metrics=json.loads(text.get("metrics", "{}")), lineage=json.loads(text.get("lineage", "{}")),
                   verdict=json.loads(text.get("verdict", "{}")), lambda_version=text.get("lambda_version"),
                   reason=text.get("reason", ""), release=json.loads(text.get("release", "{}")),
                   created_at=text.get("created_at", ""),
                   updated_at=text.get("updated_at", ""), revision=int(item.get("revision", {"N": "0"})["N"]))


@dataclass(frozen=True)
class Routing:
    """Which versions serve a model, how much traffic the canary takes (0..100 percent), and which
    version shadows them on what share of requests (its answers are measured, never returned)."""

    model: str
    champion_version: str | None = None
    champion_uri: str = ""
    champion_sha256: str = ""
    canary_version: str | None = None
    canary_uri: str = ""
    canary_sha256: str = ""
    canary_weight: int = 0
    shadow_version: str | None = None
    shadow_uri: str = ""
    shadow_sha256: str = ""
    shadow_share: int = 0
    updated_at: str = ""
    revision: int = 0

    @classmethod
    def from_item(cls, model: str, item: dict[str, Any] | None) -> Routing:
        if not item:
            return cls(model=model)
        text = {k: v["S"] for k, v in item.items() if "S" in v}
        return cls(model=model, champion_version=text.get("champion_version"),
                   champion_uri=text.get("champion_uri", ""), champion_sha256=text.get("champion_sha256", ""),
                   canary_version=text.get("canary_version"), canary_uri=text.get("canary_uri", ""),
                   canary_sha256=text.get("canary_sha256", ""),
                   canary_weight=int(item.get("canary_weight", {"N": "0"})["N"]),
                   shadow_version=text.get("shadow_version"), shadow_uri=text.get("shadow_uri", ""),
                   shadow_sha256=text.get("shadow_sha256", ""),
                   shadow_share=int(item.get("shadow_share", {"N": "0"})["N"]),
                   updated_at=text.get("updated_at", ""), revision=int(item.get("revision", {"N": "0"})["N"]))

    def as_dict(self) -> dict[str, Any]:
        return {"champion_version": self.champion_version, "canary_version": self.canary_version,
                "canary_weight": self.canary_weight, "shadow_version": self.shadow_version,
                "shadow_share": self.shadow_share, "updated_at": self.updated_at, "revision": self.revision}


@dataclass(frozen=True)
class Lock:
    owner: str
    expires_at: int
    taken_at: str

    def held(self, now: float) -> bool:
        return self.expires_at >= now


class Registry:
    def __init__(self, client: Any, table: str, clock: Callable[[], float] = time.time) -> None:
        self.client, self.table, self.clock = client, table, clock

    def register(self, entry: ModelEntry) -> ModelEntry:
        now = _now()
        entry.created_at = entry.created_at or now
        entry.updated_at, entry.revision, entry.status = now, 1, "candidate"
        self._write(lambda: self.client.put_item(
            TableName=self.table, Item=entry.to_item(),
            ConditionExpression="attribute_not_exists(#v)", ExpressionAttributeNames={"#v": "version"}),
            f"{entry.model} {entry.version} is already registered")
        return entry

    def get(self, model: str, version: str) -> ModelEntry:
        with aws.translated(f"registry table {self.table}"):
            item = self.client.get_item(TableName=self.table, Key=_key(model, version), ConsistentRead=True).get("Item")
        if not item:
            raise UnknownVersion(f"no version {version!r} of model {model!r} in the registry")
        return ModelEntry.from_item(item)

    def list(self, model: str | None = None) -> list[ModelEntry]:
        entries: list[ModelEntry] = []
        if model is None:
            pages = self.client.get_paginator("scan").paginate(TableName=self.table)
        else:
            pages = self.client.get_paginator("query").paginate(
                TableName=self.table, KeyConditionExpression="#m = :m", ExpressionAttributeNames={"#m": "model"},
                ExpressionAttributeValues={":m": {"S": model}})
        with aws.translated(f"registry table {self.table}"):
            for page in pages:
                entries.extend(ModelEntry.from_item(i) for i in page.get("Items", [])
                               if not i["version"]["S"].startswith("~"))
        return sorted(entries, key=lambda e: (e.model, e.created_at, e.version))

    def require_model(self, model: str) -> None:
        """Raise UnknownModel unless at least one version of ``model`` was ever registered (one item read)."""
        with aws.translated(f"registry table {self.table}"):
            found = self.client.query(
                TableName=self.table, KeyConditionExpression="#m = :m AND #v < :special", Limit=1,
                ExpressionAttributeNames={"#m": "model", "#v": "version"}, ConsistentRead=True,
                ExpressionAttributeValues={":m": {"S": model}, ":special": {"S": "~"}})  # not pointer, routing, lock
        if not found.get("Items"):
            raise UnknownModel(f"no model {model!r} in the registry: register a version of it first")

    def champion(self, model: str) -> ModelEntry | None:
        with aws.translated(f"registry table {self.table}"):
            pointer = self.client.get_item(TableName=self.table, Key=_key(model, CHAMPION_POINTER),
                                           ConsistentRead=True).get("Item")
        return self.get(model, pointer["champion_version"]["S"]) if pointer else None

    def record_verdict(self, entry: ModelEntry, verdict: dict[str, Any]) -> ModelEntry:
        """The gate's verdict on a candidate: admitted ones stay candidates, refused ones are rejected."""
        to_status = "candidate" if verdict.get("admitted") else "rejected"
        return self._update(entry, to_status, verdict.get("summary", ""), {"verdict": {"S": json.dumps(verdict)}},
                            allowed_from={"candidate"})

    def transition(self, entry: ModelEntry, to_status: str, reason: str, **extra: str) -> ModelEntry:
        if to_status not in TRANSITIONS.get(entry.status, frozenset()):
            raise RegistryConflict(f"{entry.model} {entry.version}: {entry.status} -> {to_status} is not allowed")
        values = {k: {"S": v} for k, v in extra.items()}
        return self._update(entry, to_status, reason, values, allowed_from={entry.status})

    def promote(self, entry: ModelEntry, reason: str, *, previous_status: str = "retired",
                release: dict[str, Any] | None = None, previous_release: dict[str, Any] | None = None) -> ModelEntry:
        """Make ``entry`` the champion; the previous champion becomes ``previous_status`` (retired, or
        rolled-back when a rollback restores an earlier version) and the routing item names the new
        champion and no canary, all in one transaction."""
        current = self.champion(entry.model)
        if current is not None and current.version == entry.version:
            return current
        if "champion" not in TRANSITIONS.get(entry.status, frozenset()):
            raise RegistryConflict(f"{entry.model} {entry.version} is {entry.status}: it cannot become champion")
        now = _now()
        extra = {"release": {"S": json.dumps({**release, "at": now})}} if release is not None else None
        items = [self._status_update(entry, "champion", reason, now, extra)]
        if current is None:
            pointer_condition = "attribute_not_exists(champion_version)"
            pointer_values: dict[str, Any] = {":new": {"S": entry.version}}
        else:
            pointer_condition = "champion_version = :old"
            pointer_values = {":new": {"S": entry.version}, ":old": {"S": current.version}}
            ended = {"release": {"S": json.dumps({**previous_release, "at": now})}} if previous_release else None
            items.append(self._status_update(current, previous_status, f"replaced by {entry.version}: {reason}", now,
                                             ended))
        items.append({"Update": {"TableName": self.table, "Key": _key(entry.model, CHAMPION_POINTER),
                                 "UpdateExpression": "SET champion_version = :new", "ConditionExpression":
                                 pointer_condition, "ExpressionAttributeValues": pointer_values}})
        items.append(self._routing_update(entry.model, now, champion=entry, canary=None))
        self._write(lambda: self.client.transact_write_items(TransactItems=items),
                    f"{entry.model}: the champion changed while promoting {entry.version}; read again and retry")
        return self.get(entry.model, entry.version)

    # -- routing -------------------------------------------------------------------------------------

    def routing(self, model: str) -> Routing:
        """The model's routing item (an empty one before the first release)."""
        with aws.translated(f"registry table {self.table}"):
            item = self.client.get_item(TableName=self.table, Key=_key(model, ROUTING_ITEM),
                                        ConsistentRead=True).get("Item")
        return Routing.from_item(model, item)

    def set_canary(self, entry: ModelEntry, weight: int, reason: str) -> Routing:
        """Send ``weight`` percent of the model's traffic to ``entry``; a candidate becomes canary in
        the same transaction. Refused when the model has no champion or another canary serves."""
        if not 0 <= weight <= 100:
            raise RegistryConflict(f"canary weight must be 0..100 percent, got {weight}")
        routing = self.routing(entry.model)
        if routing.champion_version is None:
            raise NoChampion(f"{entry.model} has no champion: its first release is gated only")
        if routing.canary_version not in (None, entry.version):
            raise RegistryConflict(f"{entry.model} {routing.canary_version} is already the canary")
        now = _now()
        items = [self._routing_update(entry.model, now, canary=entry, weight=weight, expected=routing)]
        if entry.status != "canary":
            if "canary" not in TRANSITIONS.get(entry.status, frozenset()):
                raise RegistryConflict(f"{entry.model} {entry.version} is {entry.status}: it cannot become canary")
            items.append(self._status_update(entry, "canary", reason, now))
        self._write(lambda: self.client.transact_write_items(TransactItems=items),
                    f"{entry.model}: routing changed while setting the canary; read again and retry")
        return self.routing(entry.model)

    def set_shadow(self, entry: ModelEntry, share: int) -> Routing:
        """Run ``entry`` beside the served model on ``share`` percent of requests (or change its share).
        Its status does not change: a shadow never answers. Refused for the champion itself."""
        if not 0 <= share <= 100:
            raise RegistryConflict(f"shadow share must be 0..100 percent, got {share}")
        routing = self.routing(entry.model)
        if routing.champion_version is None:
            raise NoChampion(f"{entry.model} has no champion: a shadow runs beside one")
        if routing.champion_version == entry.version:
            raise RegistryConflict(f"{entry.model} {entry.version} is the champion: it cannot shadow itself")
        values = {":sv": {"S": entry.version}, ":su": {"S": entry.bundle_uri}, ":ss": {"S": entry.manifest_sha256},
                  ":sw": {"N": str(share)}}
        sets = ["shadow_version = :sv", "shadow_uri = :su", "shadow_sha256 = :ss", "shadow_share = :sw"]
        return self._write_routing(routing, sets, [], values, f"setting the shadow {entry.version}")

    def clear_shadow(self, model: str) -> Routing:
        """No shadow any more; a model without one is left as it is."""
        routing = self.routing(model)
        if routing.shadow_version is None:
            return routing
        removes = ["shadow_version", "shadow_uri", "shadow_sha256", "shadow_share"]
        return self._write_routing(routing, [], removes, {}, "clearing the shadow")

    def roll_back_canary(self, entry: ModelEntry, reason: str, release: dict[str, Any]) -> ModelEntry:
        """Take the canary out of service: weight 0, status rolled-back with the reason and figures.
        A version already rolled back is left as it is (a late or repeated call changes nothing)."""
        if entry.status == "rolled-back":
            return entry
        if entry.status != "canary":
            raise RegistryConflict(f"{entry.model} {entry.version} is {entry.status}, not a canary")
        now = _now()
        routing = self.routing(entry.model)
        items = [self._status_update(entry, "rolled-back", reason, now,
                                     {"release": {"S": json.dumps({**release, "at": now})}})]
        if routing.canary_version == entry.version:
            items.append(self._routing_update(entry.model, now, canary=None, expected=routing))
        self._write(lambda: self.client.transact_write_items(TransactItems=items),
                    f"{entry.model}: routing changed while rolling back {entry.version}; read again and retry")
        return self.get(entry.model, entry.version)

    def last_known_good(self, model: str, excluding: str | None = None) -> ModelEntry:
        """The most recently retired version: the champion before the current one."""
        retired = [e for e in self.list(model) if e.status == "retired" and e.version != excluding]
        if not retired:
            raise NothingToRollBack(f"{model} has no retired version to serve again")
        return max(retired, key=lambda e: (e.updated_at, e.version))

    def restore(self, model: str, bad_version: str, reason: str, to_version: str | None = None,
                release: dict[str, Any] | None = None) -> ModelEntry:
        """Roll the champion ``bad_version`` back to ``to_version`` (default: the last known-good one);
        ``release`` (why, with figures) is recorded on ``bad_version``. When ``bad_version`` is no longer
        champion because it was already rolled back, nothing changes."""
        current = self.champion(model)
        if current is None:
            raise NoChampion(f"{model} has no champion to roll back")
        if current.version != bad_version:
            bad = self.get(model, bad_version)
            if bad.status == "rolled-back":
                return current  # a duplicate or late request: the rollback already happened
            raise RegistryConflict(f"{model} {bad_version} is {bad.status}, not the champion "
                                   f"({current.version} is)")
        target = self.get(model, to_version) if to_version else self.last_known_good(model, bad_version)
        if target.status != "retired":
            raise NothingToRollBack(f"{model} {target.version} is {target.status}: only a retired version, "
                                    "once champion, can be served again")
        return self.promote(target, f"restored: {reason}", previous_status="rolled-back", previous_release=release)

    # -- release lock ---------------------------------------------------------------------------------

    def take_lock(self, model: str, owner: str, ttl_seconds: int) -> Lock:
        """Take (or renew, for the same owner) the model's release lock; an expired lock is taken over."""
        now = self.clock()
        lock = Lock(owner=owner, expires_at=int(now) + int(ttl_seconds), taken_at=_iso(now))
        item = {**_key(model, LOCK_ITEM), "owner": {"S": owner}, "expires_at": {"N": str(lock.expires_at)},
                "taken_at": {"S": lock.taken_at}}
        try:
            self._write(lambda: self.client.put_item(
                TableName=self.table, Item=item,
                ConditionExpression="attribute_not_exists(#v) OR expires_at < :now OR #o = :owner",
                ExpressionAttributeNames={"#v": "version", "#o": "owner"},
                ExpressionAttributeValues={":now": {"N": str(int(now))}, ":owner": {"S": owner}}),
                f"{model}: the release lock is held")
        except RegistryConflict:
            held = self.lock(model)
            who = f"{held.owner} until {_iso(held.expires_at)}" if held else "another owner"
            raise LockHeld(f"{model} is being released or rolled back: the lock is held by {who}") from None
        return lock

    def release_lock(self, model: str, owner: str) -> bool:
        """Let go of the lock if ``owner`` holds it; False (and nothing changed) otherwise."""
        try:
            self._write(lambda: self.client.delete_item(
                TableName=self.table, Key=_key(model, LOCK_ITEM), ConditionExpression="#o = :owner",
                ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":owner": {"S": owner}}),
                f"{model}: the release lock is not held by {owner}")
        except RegistryConflict:
            return False
        return True

    def lock(self, model: str) -> Lock | None:
        """The lock as stored (an expired one included: ``held()`` says whether it still counts)."""
        with aws.translated(f"registry table {self.table}"):
            item = self.client.get_item(TableName=self.table, Key=_key(model, LOCK_ITEM),
                                        ConsistentRead=True).get("Item")
        if not item:
            return None
        return Lock(owner=item["owner"]["S"], expires_at=int(item["expires_at"]["N"]), taken_at=item["taken_at"]["S"])

    # -- internals ------------------------------------------------------------------------------------

    def _write_routing(self, expected: Routing, sets: Sequence[str], removes: Sequence[str], values: dict[str, Any],
                       what: str) -> Routing:
        """One conditional write of the routing item alone: nobody moved it since ``expected`` was read."""
        update = self._routing_item_update(expected.model, _now(), sets, removes, values, expected)
        self._write(lambda: self.client.update_item(**update),
                    f"{expected.model}: routing changed while {what}; read again and retry")
        return self.routing(expected.model)

    def _routing_update(self, model: str, now: str, *, champion: ModelEntry | None = None,
                        canary: ModelEntry | None = None, weight: int = 0,
                        expected: Routing | None = None) -> dict[str, Any]:
        """One routing write: the champion when given, the canary set (or cleared when None)."""
        values: dict[str, Any] = {}
        sets: list[str] = []
        removes: list[str] = []
        if champion is not None:
            values.update({":cv": {"S": champion.version}, ":cu": {"S": champion.bundle_uri},
                           ":cs": {"S": champion.manifest_sha256}})
            sets += ["champion_version = :cv", "champion_uri = :cu", "champion_sha256 = :cs"]
        if canary is None:
            removes = ["canary_version", "canary_uri", "canary_sha256", "canary_weight"]
        else:
            values.update({":kv": {"S": canary.version}, ":ku": {"S": canary.bundle_uri},
                           ":ks": {"S": canary.manifest_sha256}, ":kw": {"N": str(weight)}})
            sets += ["canary_version = :kv", "canary_uri = :ku", "canary_sha256 = :ks", "canary_weight = :kw"]
        return {"Update": self._routing_item_update(model, now, sets, removes, values, expected)}

    def _routing_item_update(self, model: str, now: str, sets: Sequence[str], removes: Sequence[str],
                             values: dict[str, Any], expected: Routing | None) -> dict[str, Any]:
        """The update of the routing item: ``sets`` and ``removes``, a new revision, and when ``expected``
        is given, the condition that nobody moved the routing since it was read."""
        values = {**values, ":now": {"S": now}, ":one": {"N": "1"}, ":zero": {"N": "0"}}
        sets = [*sets, "updated_at = :now", "#rev = if_not_exists(#rev, :zero) + :one"]
        update: dict[str, Any] = {
            "TableName": self.table, "Key": _key(model, ROUTING_ITEM),
            "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
            "ExpressionAttributeNames": {"#rev": "revision"}, "ExpressionAttributeValues": values}
        if expected is not None:
            if expected.revision:
                values[":expected"] = {"N": str(expected.revision)}
                update["ConditionExpression"] = "#rev = :expected"
            else:
                update["ConditionExpression"] = "attribute_not_exists(#rev)"
        return update


    def _status_update(self, entry: ModelEntry, to_status: str, reason: str, now: str,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
        names = {"#s": "status", "#r": "reason"}
        values = {":to": {"S": to_status}, ":reason": {"S": reason}, ":now": {"S": now},
                  ":rev": {"N": str(entry.revision)}, ":next": {"N": str(entry.revision + 1)},
                  ":from": {"S": entry.status}}
        sets = ["#s = :to", "#r = :reason", "updated_at = :now", "revision = :next"]
        for i, (name, value) in enumerate((extra or {}).items()):
            names[f"#x{i}"], values[f":x{i}"] = name, value
            sets.append(f"#x{i} = :x{i}")
        return {"Update": {"TableName": self.table, "Key": _key(entry.model, entry.version),
                           "UpdateExpression": "SET " + ", ".join(sets),
                           "ConditionExpression": "#s = :from AND revision = :rev",
                           "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}

    def _update(self, entry: ModelEntry, to_status: str, reason: str, extra: dict[str, Any],
                allowed_from: set[str]) -> ModelEntry:
        if entry.status not in allowed_from:
            raise RegistryConflict(f"{entry.model} {entry.version} is {entry.status}, not {sorted(allowed_from)}")
        update = self._status_update(entry, to_status, reason, _now(), extra)["Update"]
        self._write(lambda: self.client.update_item(**update),
                    f"{entry.model} {entry.version} changed since it was read (status or revision); read it again")
        return self.get(entry.model, entry.version)

    def _write(self, call: Any, conflict_message: str) -> None:
        with aws.translated(f"registry table {self.table}", {WriteConflict: RegistryConflict(conflict_message)}):
            call()


def _key(model: str, version: str) -> dict[str, Any]:
    return {"model": {"S": model}, "version": {"S": version}}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _iso(epoch_seconds: float) -> str:
    return dt.datetime.fromtimestamp(epoch_seconds, dt.UTC).isoformat(timespec="seconds")
