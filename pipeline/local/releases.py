"""A model release driven step by step through the release function, in the order the release state
machine runs them (lock, admit, first release or canary stages with a comparison each, promote or
roll back, unlock), for `slimserve release` and the demo where no state machine runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functions.common.errors import SlimserveError

Step = Callable[..., dict[str, Any]]
CANARY_WEIGHTS = (10, 50, 100)


def drive_release(step: Step, version: str, *, owner: str, bake: Callable[[int], None],
                  min_requests: int = 100, weights: tuple[int, ...] = CANARY_WEIGHTS) -> dict[str, Any]:
    """``step(action, **fields)`` calls the release function for one model; ``bake(weight)`` is what
    happens while a stage serves (traffic, or waiting for it). Returns the outcome and the last comparison."""
    step("lock", owner=owner)
    canary = False
    try:
        if step("admit", version=version)["first_release"]:
            step("first_release", version=version)
            return {"outcome": "first_release", "version": version}
        compared: dict[str, Any] = {}
        for weight in weights:
            since = step("set_weight", version=version, weight=weight)["since"]
            canary = True
            bake(weight)
            if weight == 100:
                break  # the champion serves nothing at 100: alarms watch this stage
            compared = step("compare", version=version, since=since, min_requests=min_requests, extended=False)
            if compared["decision"] == "extend":
                bake(weight)
                compared = step("compare", version=version, since=since, min_requests=min_requests, extended=True)
            if compared["decision"] != "continue":
                reason = compared["reason"] if compared["decision"] == "rollback" else \
                    f"insufficient_traffic: {compared['reason']}"
                step("rollback", version=version, reason=reason, figures=compared["figures"])
                return {"outcome": "rolled_back", "version": version, "reason": reason, "compare": compared}
        step("promote", version=version, reason="the canary passed every stage")
        return {"outcome": "promoted", "version": version, "compare": compared}
    except SlimserveError as exc:
        if canary:
            step("rollback", version=version, reason=type(exc).__name__, figures={})
        raise
    finally:
        step("unlock", owner=owner)


def status(registry: Any, model: str, now: float) -> dict[str, Any]:
    """What `slimserve status` shows: who serves, the lock, and how the last release ended."""
    routing = registry.routing(model)
    lock = registry.lock(model)
    ended = [e for e in registry.list(model) if e.release]
    last = max(ended, key=lambda e: str(e.release.get("at", ""))) if ended else None
    return {"model": model, **routing.as_dict(),
            "lock": {"owner": lock.owner, "expires_at": lock.expires_at} if lock and lock.held(now) else None,
            "last_release": {"version": last.version, "status": last.status, **last.release} if last else None}
