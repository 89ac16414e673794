"""The model registry: one DynamoDB item per model version, changed only by conditional writes.

Every status change names the status it expects and the revision it read, so two writers can
never both win; the champion is a pointer item moved in one transaction with the two versions
it affects, so there is never more than one champion.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from . import aws
from .errors import RegistryConflict, UnknownVersion, WriteConflict

CHAMPION_POINTER = "~champion"  # sort key of the pointer item; versions cannot start with '~'
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
    created_at: str = ""
    updated_at: str = ""
    revision: int = 0

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "model": {"S": self.model}, "version": {"S": self.version}, "status": {"S": self.status},
            "bundle_uri": {"S": self.bundle_uri}, "manifest_sha256": {"S": self.manifest_sha256},
            "metrics": {"S": json.dumps(self.metrics)}, "lineage": {"S": json.dumps(self.lineage)},
            "verdict": {"S": json.dumps(self.verdict)}, "reason": {"S": self.reason},
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
                   reason=text.get("reason", ""), created_at=text.get("created_at", ""),
                   updated_at=text.get("updated_at", ""), revision=int(item.get("revision", {"N": "0"})["N"]))


class Registry:
    def __init__(self, client: Any, table: str) -> None:
        self.client, self.table = client, table

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
                               if i["version"]["S"] != CHAMPION_POINTER)
        return sorted(entries, key=lambda e: (e.model, e.created_at, e.version))

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

    def promote(self, entry: ModelEntry, reason: str) -> ModelEntry:
        """Make ``entry`` the champion; the previous champion is retired in the same transaction."""
        current = self.champion(entry.model)
        if current is not None and current.version == entry.version:
            return current
        if "champion" not in TRANSITIONS.get(entry.status, frozenset()):
            raise RegistryConflict(f"{entry.model} {entry.version} is {entry.status}: it cannot become champion")
        now = _now()
        items = [self._status_update(entry, "champion", reason, now)]
        if current is None:
            pointer_condition = "attribute_not_exists(champion_version)"
            pointer_values: dict[str, Any] = {":new": {"S": entry.version}}
        else:
            pointer_condition = "champion_version = :old"
            pointer_values = {":new": {"S": entry.version}, ":old": {"S": current.version}}
            items.append(self._status_update(current, "retired", f"replaced by {entry.version}: {reason}", now))
        items.append({"Update": {"TableName": self.table, "Key": _key(entry.model, CHAMPION_POINTER),
                                 "UpdateExpression": "SET champion_version = :new", "ConditionExpression":
                                 pointer_condition, "ExpressionAttributeValues": pointer_values}})
        self._write(lambda: self.client.transact_write_items(TransactItems=items),
                    f"{entry.model}: the champion changed while promoting {entry.version}; read again and retry")
        return self.get(entry.model, entry.version)

    # -- internals ------------------------------------------------------------------------------------

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
