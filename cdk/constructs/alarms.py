"""What an alarm watches and when it fires, as plain data: the monitoring construct turns a spec into a
CloudWatch alarm, and a local evaluator can read the same spec against metrics it collected itself.

No AWS or CDK import here, so anything (the local emulation, a report) can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Statistic = Literal["Sum", "Maximum", "Minimum", "Average", "SampleCount", "p99"]
Comparison = Literal["GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold",
                     "LessThanOrEqualToThreshold"]
_COMPARE = {
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}


@dataclass(frozen=True)
class AlarmSpec:
    """One metric of one resource (named by `dimension`), aggregated per period, compared with a threshold."""

    namespace: str
    metric_name: str
    dimension: str
    """The dimension that names the watched resource (FunctionName, QueueName, StateMachineArn)."""
    statistic: Statistic
    period_seconds: int
    threshold: float = 0
    datapoints: int = 1
    """Consecutive breaching periods before the alarm fires."""
    comparison: Comparison = "GreaterThanThreshold"
    """Missing data never breaches: an idle resource is a healthy one."""
    fixed_dimensions: tuple[tuple[str, str], ...] = ()
    """Dimensions with the same value wherever the spec is used, e.g. (("model_role", "champion"),)."""
    missing_data: Literal["notBreaching", "ignore"] = "notBreaching"
    """ignore: a period without data keeps the alarm's state (a metric published only when there is enough to judge)."""

    def __post_init__(self) -> None:
        if self.period_seconds < 60 or self.period_seconds % 60:
            raise ValueError(f"AlarmSpec.period_seconds must be a multiple of 60, got {self.period_seconds}")
        if self.datapoints < 1:
            raise ValueError(f"AlarmSpec.datapoints must be >= 1, got {self.datapoints}")

    def breaches(self, period_values: Sequence[float | None]) -> bool:
        """Whether the last `datapoints` periods (oldest first, None where no data) all breach."""
        recent = list(period_values)[-self.datapoints:]
        return len(recent) == self.datapoints and all(
            value is not None and _COMPARE[self.comparison](value, self.threshold) for value in recent)


# The alarms the stack raises today: each fires on the first period with anything in it.
FUNCTION_ERRORS = AlarmSpec("AWS/Lambda", "Errors", "FunctionName", "Sum", period_seconds=300)
DEAD_LETTERS = AlarmSpec("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "Maximum", period_seconds=60)
RUNS_FAILED = AlarmSpec("AWS/States", "ExecutionsFailed", "StateMachineArn", "Sum", period_seconds=300)
RUNS_TIMED_OUT = AlarmSpec("AWS/States", "ExecutionsTimedOut", "StateMachineArn", "Sum", period_seconds=300)

# Serving, per model role, on the EMF metrics the inference handler writes (dimensions model_name, model_role):
# versions do not exist at synth time, roles do. A champion alarm rolls the champion back (its name says so).
MODEL_ROLES = ("champion", "canary")
SERVING_NAMESPACE = "Slimserve"


def role_errors(role: str) -> AlarmSpec:
    """Server errors of one role: more than 5 a minute, two minutes running."""
    return AlarmSpec(SERVING_NAMESPACE, "Errors5xx", "model_name", "Sum", period_seconds=60, threshold=5,
                     datapoints=2, fixed_dimensions=(("model_role", role),))


def role_latency(role: str) -> AlarmSpec:
    """The model's own p99 latency of one role (inference only, no I/O): above 250 ms three minutes running."""
    return AlarmSpec(SERVING_NAMESPACE, "ModelLatency", "model_name", "p99", period_seconds=60, threshold=250,
                     datapoints=3, fixed_dimensions=(("model_role", role),))


# Alias `live` (the dimension `Resource` is `<function>:live`) and the API stage: what a code release watches.
ALIAS_ERRORS = AlarmSpec("AWS/Lambda", "Errors", "Resource", "Sum", period_seconds=60)
ALIAS_THROTTLES = AlarmSpec("AWS/Lambda", "Throttles", "Resource", "Sum", period_seconds=60)
ALIAS_DURATION = AlarmSpec("AWS/Lambda", "Duration", "Resource", "p99", period_seconds=60, threshold=5000,
                           datapoints=2)
"""p99 above 5 s (half the function's default timeout), two minutes running."""
API_5XX = AlarmSpec("AWS/ApiGateway", "5XXError", "ApiName", "Sum", period_seconds=60, threshold=5, datapoints=2)
HTTP_API_5XX = AlarmSpec("AWS/ApiGateway", "5xx", "ApiId", "Sum", period_seconds=60, threshold=5, datapoints=2)
"""The same alarm on an HTTP API, whose metrics are named and keyed differently (`5xx` by `ApiId`)."""


# Drift, on the drift function's hourly metrics (dimension model_name; `functions.drift.service`). A run with
# too few captured rows publishes nothing, and a missing hour keeps the state (ignore), so a quiet hour
# neither clears nor re-arms an alarm. Two breaching hours in a row: each value covers the whole window
# (24 h by default), so a short burst of odd traffic moves it little.
DRIFT_PERIOD_SECONDS = 3600
DRIFT_PSI_MAX = AlarmSpec(SERVING_NAMESPACE, "DriftPsiMax", "model_name", "Maximum",
                          period_seconds=DRIFT_PERIOD_SECONDS, threshold=0.2, datapoints=2, missing_data="ignore")
"""The largest per-feature PSI above 0.2 (the usual line for a significant shift)."""
DRIFT_KS_MAX = AlarmSpec(SERVING_NAMESPACE, "DriftKsMax", "model_name", "Maximum",
                         period_seconds=DRIFT_PERIOD_SECONDS, threshold=0.1, datapoints=2, missing_data="ignore")
"""The largest per-feature KS statistic above 0.1 (at the 1000 rows a run needs: past the 0.1% critical value)."""
PREDICTION_PSI = AlarmSpec(SERVING_NAMESPACE, "PredictionPsi", "model_name", "Maximum",
                           period_seconds=DRIFT_PERIOD_SECONDS, threshold=0.2, datapoints=2, missing_data="ignore")
"""The champion's prediction distribution against its holdout's: PSI above 0.2."""
DRIFT_SPECS = {"psi": DRIFT_PSI_MAX, "ks": DRIFT_KS_MAX, "prediction": PREDICTION_PSI}
"""The drift signals by the name their alarm carries; any of them in ALARM raises the model's drift alarm."""


# Live accuracy, on the feedback function's labelled rows (dimension model_name; `functions.feedback.labels`):
# the construct's alarm and the local evaluator read these specs. No labels in an hour is not a breach.
LIVE_ACCURACY_THRESHOLD = 0.8


def live_accuracy_spec(threshold: float = LIVE_ACCURACY_THRESHOLD) -> AlarmSpec:
    """The hourly average of labelled classifier rows (1 right, 0 wrong) below ``threshold``."""
    return AlarmSpec(SERVING_NAMESPACE, "LiveAccuracy", "model_name", "Average", period_seconds=3600,
                     threshold=threshold, comparison="LessThanThreshold")


def live_mae_spec(threshold: float) -> AlarmSpec:
    """The hourly average absolute error of labelled regressor rows above ``threshold``."""
    return AlarmSpec(SERVING_NAMESPACE, "LiveMae", "model_name", "Average", period_seconds=3600, threshold=threshold)


# Shadow, on the serving function's per-request shadow records (dimension model_name; `functions.common.shadow`):
# they notify and act on nothing (a shadow is never served, so there is nothing to roll back). No shadow
# configured: no data, not a breach.
SHADOW_ERRORS = AlarmSpec(SERVING_NAMESPACE, "ShadowErrors", "model_name", "Sum", period_seconds=300)
"""Any shadow failure in five minutes: its bundle would not load, a row its schema refused, its model raised."""
SHADOW_AGREEMENT_THRESHOLD = 0.8


def shadow_agreement_spec(threshold: float = SHADOW_AGREEMENT_THRESHOLD) -> AlarmSpec:
    """The hourly average agreement of a classifier shadow with the served answer below ``threshold``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the shadow agreement threshold is a share in (0, 1], got {threshold}")
    return AlarmSpec(SERVING_NAMESPACE, "ShadowAgreement", "model_name", "Average", period_seconds=3600,
                     threshold=threshold, comparison="LessThanThreshold")
