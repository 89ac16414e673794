"""The steps of a model release, one plain function each: the state machine calls them in order
through the release function, and `slimserve release` calls them the same way locally.

Every step reads the registry afresh and changes it only by conditional writes, so a step that
runs twice (a retried task) changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..common import aws
from ..common.errors import LockHeld, NotAdmitted, RegistryConflict, SlimserveError
from ..common.notify import notify
from ..common.psi import psi_by_name
from ..common.registry import Registry
from ..common.routing import VERSION_DIMENSIONS
from ..common.settings import METRICS_NAMESPACE, ReleaseSettings

PREDICTION_PREFIXES = ("Predictions_", "PredictionBin_")
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lock(registry: Registry, model: str, owner: str, ttl_seconds: int) -> dict[str, Any]:
    registry.take_lock(model, owner, ttl_seconds)
    return {"locked": True}


def unlock(registry: Registry, model: str, owner: str) -> dict[str, Any]:
    """Let go of the lock ``owner`` holds; with none to let go of, a model never seen is refused (UnknownModel)."""
    unlocked = registry.release_lock(model, owner)
    if not unlocked:
        registry.require_model(model)
    return {"unlocked": unlocked}


def admit(registry: Registry, model: str, version: str) -> dict[str, Any]:
    """Only a candidate the gate admitted may enter; the first release of a model is gated only."""
    entry = registry.get(model, version)
    if entry.status == "rejected":
        raise NotAdmitted(f"{model} {version} was refused by the gate: {entry.verdict.get('summary') or entry.reason}")
    if entry.status != "candidate":
        raise NotAdmitted(f"{model} {version} is {entry.status}: only a candidate the gate admitted can be released")
    if not entry.verdict:
        raise NotAdmitted(f"{model} {version} has no verdict: run the validation gate on it first")
    if not entry.verdict.get("admitted"):
        raise NotAdmitted(f"{model} {version} was refused by the gate: {entry.verdict.get('summary') or entry.reason}")
    champion = registry.champion(model)
    return {"first_release": champion is None, "champion_version": champion.version if champion else None}


def set_weight(registry: Registry, model: str, version: str, weight: int, now: Clock = utc_now) -> dict[str, Any]:
    since = now().isoformat(timespec="seconds")
    registry.set_canary(registry.get(model, version), weight, f"canary at {weight}%")
    return {"weight": weight, "since": since}


def promote(registry: Registry, model: str, version: str, reason: str) -> dict[str, Any]:
    entry = registry.get(model, version)
    if entry.status not in ("canary", "champion"):
        raise RegistryConflict(f"{model} {version} is {entry.status}: only a canary is promoted")
    previous = registry.champion(model)
    registry.promote(entry, reason, release={"outcome": "promoted", "reason": reason})
    return {"champion_version": version, "previous_version": previous.version if previous else None}


def first_release(registry: Registry, model: str, version: str) -> dict[str, Any]:
    admitted = admit(registry, model, version) if registry.get(model, version).status != "champion" else None
    if admitted is not None and not admitted["first_release"]:
        raise RegistryConflict(f"{model} has a champion ({admitted['champion_version']}): release {version} "
                               "by canary")
    reason = "first release: admitted by the gate"
    registry.promote(registry.get(model, version), reason, release={"outcome": "first_release", "reason": reason})
    return {"champion_version": version, "previous_version": None}


def rollback(registry: Registry, settings: ReleaseSettings, model: str, version: str, reason: str,
             figures: dict[str, Any]) -> dict[str, Any]:
    """Take the canary out of traffic for good, say why with the figures, and tell operators.
    A version that never became canary (the release failed before) is left as it is."""
    entry = registry.get(model, version)
    if entry.status not in ("canary", "rolled-back"):
        return {"rolled_back": False, "status": entry.status, "reason": reason}
    already = entry.status == "rolled-back"
    release = {"outcome": "rolled-back", "reason": reason, "figures": figures}
    entry = registry.roll_back_canary(entry, reason, release)
    if not already:
        notify(settings.notify_topic_arn, f"slimserve: {model} {version} rolled back",
               {"model": model, "version": version, "reason": reason, "figures": figures,
                "champion_version": registry.routing(model).champion_version})
    return {"rolled_back": True, "status": entry.status, "reason": entry.reason}


# -- shadow ---------------------------------------------------------------------------------------------

DEFAULT_SHADOW_SHARE = 5  # percent of requests: a shadow's cost is paid inside each request it runs on
SHADOW_STATUSES = ("candidate", "canary", "retired", "champion")  # the registry refuses the champion itself


def set_shadow(registry: Registry, model: str, version: str, share: int, *, owner: str, max_share: int,
               lock_ttl_seconds: int) -> dict[str, Any]:
    """Run ``version`` beside the served model on ``share`` percent of requests; only a version the gate
    admitted may shadow, and the change is made under the model's release lock."""
    if share > max_share:
        raise SlimserveError(f"a shadow runs on at most {max_share}% of requests (max_shadow_share), not {share}%: "
                             "its cost is paid inside each request it runs on", code="shadow_share_over_limit",
                             field="share")
    entry = registry.get(model, version)
    if not entry.verdict.get("admitted"):
        why = entry.verdict.get("summary") or entry.reason or "no verdict: run the validation gate on it first"
        raise NotAdmitted(f"{model} {version} was not admitted by the gate ({why}): only an admitted version "
                          "may shadow")
    if entry.status not in SHADOW_STATUSES:
        raise NotAdmitted(f"{model} {version} is {entry.status}: only an admitted candidate, canary or retired "
                          "version may shadow")
    with release_lock(registry, model, owner, lock_ttl_seconds):
        routing = registry.set_shadow(entry, share)
    return {"shadow_version": routing.shadow_version, "shadow_share": routing.shadow_share}


def clear_shadow(registry: Registry, model: str, *, owner: str, lock_ttl_seconds: int) -> dict[str, Any]:
    with release_lock(registry, model, owner, lock_ttl_seconds):
        previous = registry.routing(model).shadow_version
        registry.clear_shadow(model)
    return {"shadow_version": None, "cleared": previous}


@contextlib.contextmanager
def release_lock(registry: Registry, model: str, owner: str, ttl_seconds: int) -> Iterator[None]:
    """Hold the model's release lock for a short change: taken and let go here, unless ``owner`` already
    holds it (a run that passes its own name keeps its lock, and its expiry, as they were)."""
    held = registry.lock(model)
    if held is not None and held.held(registry.clock()):
        if held.owner != owner:
            raise LockHeld(f"{model} is being released or rolled back: the lock is held by {held.owner}")
        yield
        return
    registry.take_lock(model, owner, ttl_seconds)
    try:
        yield
    finally:
        registry.release_lock(model, owner)


# -- comparing canary with champion --------------------------------------------------------------------


@dataclass
class RoleFigures:
    """What one role did over a bake window, from its EMF metrics."""

    version: str
    requests: float = 0
    errors_5xx: float = 0
    latency_ms: float | None = None
    latency_statistic: str = "p99"
    predictions: dict[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors_5xx / self.requests if self.requests else 0.0


class MetricsReader:
    """Per-role figures from CloudWatch: the same calls locally (moto) and on AWS."""

    def __init__(self, client: Any, model: str, start: dt.datetime, end: dt.datetime) -> None:
        self.client, self.model, self.start, self.end = client, model, start, end
        self.period = max(60, math.ceil((end - start).total_seconds() / 60) * 60)

    def figures(self, role: str, version: str) -> RoleFigures:
        dims = self._dimensions(role, version)
        found = RoleFigures(version=version, requests=self._sum("Requests", dims),
                            errors_5xx=self._sum("Errors5xx", dims))
        found.latency_ms, found.latency_statistic = self._latency(dims)
        found.predictions = {name: self._sum(name, dims) for name in self._prediction_metrics(dims)}
        return found

    def _dimensions(self, role: str, version: str) -> list[dict[str, str]]:
        values = {"model_name": self.model, "model_role": role, "model_version": version}
        return [{"Name": name, "Value": values[name]} for name in VERSION_DIMENSIONS]

    def _points(self, name: str, dims: list[dict[str, str]], **stats: Any) -> list[dict[str, Any]]:
        with aws.translated(f"CloudWatch metric {METRICS_NAMESPACE}/{name}"):
            answer = self.client.get_metric_statistics(
                Namespace=METRICS_NAMESPACE, MetricName=name, Dimensions=dims, StartTime=self.start,
                EndTime=self.end, Period=self.period, **stats)
        return list(answer.get("Datapoints", []))

    def _sum(self, name: str, dims: list[dict[str, str]]) -> float:
        return float(sum(p.get("Sum", 0) for p in self._points(name, dims, Statistics=["Sum"])))

    def _latency(self, dims: list[dict[str, str]]) -> tuple[float | None, str]:
        """p99 over the window; where percentiles are not computed (the local emulation), the maximum."""
        points = self._points("ModelLatency", dims, Statistics=["Maximum"], ExtendedStatistics=["p99"])
        p99 = [p["ExtendedStatistics"]["p99"] for p in points if "p99" in p.get("ExtendedStatistics", {})]
        if p99:
            return max(p99), "p99"
        maxima = [p["Maximum"] for p in points if "Maximum" in p]
        return (max(maxima), "Maximum") if maxima else (None, "p99")

    def _prediction_metrics(self, dims: list[dict[str, str]]) -> list[str]:
        names: set[str] = set()
        with aws.translated(f"listing CloudWatch metrics in {METRICS_NAMESPACE}"):
            for page in self.client.get_paginator("list_metrics").paginate(Namespace=METRICS_NAMESPACE,
                                                                          Dimensions=dims):
                names.update(m["MetricName"] for m in page.get("Metrics", [])
                             if m["MetricName"].startswith(PREDICTION_PREFIXES))
        return sorted(names)


def judge(canary: RoleFigures, champion: RoleFigures, settings: ReleaseSettings, min_requests: int,
          extended: bool) -> tuple[str, str, dict[str, Any]]:
    """The decision on one bake: continue, extend (once), insufficient_traffic or rollback, and why."""
    figures: dict[str, Any] = {"canary": asdict(canary), "champion": asdict(champion),
                               "error_rate": {"canary": canary.error_rate, "champion": champion.error_rate}}
    if canary.requests < min_requests:
        decision = "insufficient_traffic" if extended else "extend"
        return decision, f"the canary served {canary.requests:.0f} requests, fewer than {min_requests}", figures
    delta = canary.error_rate - champion.error_rate
    if delta > settings.max_error_rate_delta:
        return "rollback", (f"errors: canary 5xx rate {canary.error_rate:.2%} against the champion's "
                            f"{champion.error_rate:.2%} (at most {settings.max_error_rate_delta:.2%} more)"), figures
    comparable = champion.requests >= max(min_requests, 1)
    if comparable and canary.latency_ms is not None and champion.latency_ms is not None:
        ratio = canary.latency_ms / max(champion.latency_ms, 1e-6)
        figures["latency_ratio"] = ratio
        slower_ms = canary.latency_ms - champion.latency_ms
        if ratio > settings.max_latency_ratio and slower_ms > settings.min_latency_delta_ms:
            return "rollback", (f"latency: canary {canary.latency_statistic} model latency "
                                f"{canary.latency_ms:.1f} ms against the champion's {champion.latency_ms:.1f} ms "
                                f"(at most {settings.max_latency_ratio:g}x)"), figures
    if comparable:
        shift = psi_by_name(champion.predictions, canary.predictions)  # the drift function's PSI, ε-smoothed
        figures["prediction_psi"] = shift
        if shift > settings.max_prediction_psi:
            return "rollback", (f"prediction shift: PSI {shift:.3f} of the canary's predictions against the "
                                f"champion's (at most {settings.max_prediction_psi:g})"), figures
    return "continue", "the canary is within every bound", figures


def compare(registry: Registry, settings: ReleaseSettings, cloudwatch: Any, model: str, version: str, since: str,
            min_requests: int, extended: bool, now: Clock = utc_now) -> dict[str, Any]:
    routing = registry.routing(model)
    if routing.champion_version is None:
        raise RegistryConflict(f"{model} has no champion to compare {version} with")
    start = dt.datetime.fromisoformat(since)
    end = now() + dt.timedelta(seconds=60)  # a request finishing now is inside the window
    reader = MetricsReader(cloudwatch, model, start, end)
    canary = reader.figures("canary", version)
    champion = reader.figures("champion", routing.champion_version)
    decision, reason, figures = judge(canary, champion, settings, min_requests, extended)
    figures["window"] = {"since": since, "until": end.isoformat(timespec="seconds")}
    return {"decision": decision, "reason": reason, "figures": figures}
