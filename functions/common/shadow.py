"""A shadow: a challenger bundle that scores the rows a request brought after the served answer is
computed, measured against that answer and never returned.

Lambda does no work after the response leaves, so the shadow's time is inside the request it runs
on: the routing item's share (small by default) decides how many requests pay it. A shadow that
fails, whatever the reason, is logged and counted; the request it ran beside answers as it would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from .bundle import Model, Prediction
from .errors import SlimserveError
from .routing import ShadowDraw, emit_metric_record
from .settings import METRICS_NAMESPACE

SHADOW_DIMENSIONS = [["model_name"], ["model_name", "model_version"]]  # model_version: the shadow's


class Log(Protocol):
    """A logger that warns: the standard library's or Powertools'."""

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class ShadowMismatch(SlimserveError):
    """The shadow's answer cannot be compared with the served one (another task, another row count)."""

    status = 500
    code = "shadow_mismatch"


def compare(served: Model, answer: Prediction, shadow: Model, shadowed: Prediction) -> dict[str, float]:
    """ShadowAgreement (classifiers: the share of rows given the same label) and ShadowScoreDiff (the
    mean absolute difference of the probability each model gives the served label, or of the values)."""
    if len(shadowed.predictions) != len(answer.predictions):
        raise ShadowMismatch(f"the shadow answered {len(shadowed.predictions)} rows, not {len(answer.predictions)}")
    if (answer.probabilities is None) != (shadowed.probabilities is None):
        raise ShadowMismatch("the shadow and the served model do not do the same task")
    rows = len(answer.predictions)
    if answer.probabilities is None or shadowed.probabilities is None:
        diff = sum(abs(float(a) - float(b)) for a, b in zip(answer.predictions, shadowed.predictions, strict=True))
        return {"ShadowScoreDiff": diff / rows}
    agree = sum(a == b for a, b in zip(answer.predictions, shadowed.predictions, strict=True))
    return {"ShadowAgreement": agree / rows,
            "ShadowScoreDiff": _label_score_diff(served, answer, shadow, shadowed) / rows}


def _label_score_diff(served: Model, answer: Prediction, shadow: Model, shadowed: Prediction) -> float:
    served_index = {c: i for i, c in enumerate(served.manifest.classes or ())}
    shadow_index = {c: i for i, c in enumerate(shadow.manifest.classes or ())}
    total = 0.0
    for label, mine, theirs in zip(answer.predictions, answer.probabilities or (), shadowed.probabilities or (),
                                   strict=True):
        j = shadow_index.get(label)  # a label the shadow does not know gets probability 0 from it
        total += abs(mine[served_index[label]] - (theirs[j] if j is not None else 0.0))
    return total


class ShadowRun(NamedTuple):  # a tuple: built on every shadowed request, cheaper than a frozen dataclass
    """One request's shadow: its version, its answer (None when it failed, ``error`` then says why) and the
    EMF record published. Request capture keeps the answer beside the served one."""

    version: str
    answer: Prediction | None
    error: str | None
    record: dict[str, Any]


def run_shadow(draw: ShadowDraw, instances: Sequence[Any], served: Model, answer: Prediction, *,
               clock: Callable[[], float], log: Log) -> ShadowRun:
    """Score ``instances`` with the drawn shadow and publish how it compares.
    Never raises: a failure is one ShadowErrors and a log line without the rows."""
    started = clock()
    values: dict[str, float] = {}
    shadowed: Prediction | None = None
    code: str | None = None
    try:
        if draw.model is None:
            raise ShadowMismatch(f"shadow {draw.version} is not loaded (its bundle failed to load)",
                                 code="shadow_unavailable")
        shadowed = draw.model.predict(instances)
        values = compare(served, answer, draw.model, shadowed)
    except Exception as exc:  # a shadow never fails the request it runs beside
        shadowed = None  # an answer that cannot be compared is not kept either
        code = exc.code if isinstance(exc, SlimserveError) else "internal_error"
        reason = exc.message if isinstance(exc, SlimserveError) else type(exc).__name__
        log.warning("shadow failed; the served answer is unaffected",
                    extra={"code": code, "reason": reason, "shadow_version": draw.version})
    latency_ms = (clock() - started) * 1e3
    record = emit_shadow_metrics(served.manifest.name, draw.version, served.version, latency_ms=latency_ms,
                                 errors=int(code is not None), comparison=values)
    return ShadowRun(draw.version, shadowed, code, record)


def emit_shadow_metrics(model_name: str, shadow_version: str, served_version: str, *, latency_ms: float,
                        errors: int, comparison: dict[str, float], timestamp_ms: int | None = None
                        ) -> dict[str, Any]:
    """One EMF record per shadowed request: ShadowRequests, ShadowErrors, ShadowLatency and, when the
    shadow answered, ShadowAgreement (classifiers) and ShadowScoreDiff."""
    values: dict[str, tuple[float, str]] = {
        "ShadowRequests": (1, "Count"), "ShadowErrors": (errors, "Count"),
        "ShadowLatency": (latency_ms, "Milliseconds"),
        **{name: (value, "None") for name, value in comparison.items()}}
    record: dict[str, Any] = {
        "_aws": {"Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
                 "CloudWatchMetrics": [{"Namespace": METRICS_NAMESPACE, "Dimensions": SHADOW_DIMENSIONS,
                                        "Metrics": [{"Name": n, "Unit": u} for n, (_, u) in values.items()]}]},
        "model_name": model_name, "model_version": shadow_version, "served_version": served_version,
        **{n: v for n, (v, _) in values.items()}}
    emit_metric_record(record)
    return record
