"""What an alarm watches and when it fires, as plain data: the monitoring construct turns a spec into a
CloudWatch alarm, and a local evaluator can read the same spec against metrics it collected itself.

No AWS or CDK import here, so anything (the local emulation, a report) can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Statistic = Literal["Sum", "Maximum", "Minimum", "Average", "SampleCount"]
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
