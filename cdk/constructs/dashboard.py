"""The model's CloudWatch dashboard: what the monitoring construct draws for one served model.

Rows, top to bottom: traffic and errors by role; model latency p50/p99 by role; canary against champion;
input drift (the maxima, then per feature); prediction drift; live accuracy; shadow agreement; capture health;
batch rows rejected and every dead-letter queue's depth; Lambda throttles and the API's 4xx/5xx.

Per-feature widgets are SEARCH expressions over the drift metrics' `feature` dimension: the stack serves
whatever bundle the registry names, so no feature name is known at synth time. With per-feature metrics off
(`slimserve:driftPerFeatureMetrics=false`) a text widget says where those figures are instead. Shadow figures
are per model (`functions.common.shadow`): empty until the routing item names a shadow; the row ends with
the state of its alarms. Batch figures are selected by model (`model_name`), like every other row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .alarms import (
    DRIFT_PERIOD_SECONDS,
    DRIFT_SPECS,
    MODEL_ROLES,
    SERVING_NAMESPACE,
    AlarmSpec,
    role_errors,
    role_latency,
)

WIDTH = 24  # the dashboard grid's width
MINUTE, FIVE_MINUTES, HOUR = Duration.minutes(1), Duration.minutes(5), Duration.seconds(DRIFT_PERIOD_SECONDS)
BATCH_SERVICE = "slimserve-batch"  # the batch functions' Powertools service: their metrics' `service` dimension
BATCH_DIMENSIONS = "model_name,model_version,service"  # one dimension set (`functions.batch.handler.bind`)
# Metric names the dashboard draws (the test reads the body for each).
ROLE_METRICS = ("Requests", "Errors4xx", "Errors5xx", "ModelLatency")
DRIFT_FEATURE_METRICS = ("DriftPsi", "DriftKs", "NullRateDelta")
CAPTURE_METRICS = ("CaptureRowsWritten", "CaptureBytes", "CaptureFlushFailures", "CaptureRowsLost")


@dataclass(frozen=True)
class DashboardProps:
    model_name: str
    serving_function: lambda_.IFunction
    api_name: str
    """The REST API's name, or the HTTP API's id (`http_api`)."""
    api_stage: str
    functions: Sequence[lambda_.IFunction]
    """Every function of the stack, whose throttles are drawn (the serving one first)."""
    dead_letter_queues: Sequence[sqs.IQueue]
    batch: bool = False
    """Batch scoring is part of the stack: draw its rows scored and rejected."""
    live_accuracy_threshold: float | None = None
    """Drawn as a line on the live accuracy graph when the stack alarms on it."""
    http_api: bool = False
    """The front door is an HTTP API: its metrics are keyed by ApiId and named 4xx/5xx."""
    drift_per_feature: bool = True
    """The drift function publishes per-feature metrics; False: the row says where those figures are instead."""
    shadow_alarms: Sequence[tuple[AlarmSpec, cloudwatch.IAlarm]] = ()
    """The model's shadow alarms with their specs: their thresholds and states are drawn in the shadow row."""

    def validate(self) -> None:
        if not self.model_name:
            raise ValueError("DashboardProps.model_name must name the served model")


def model_dashboard(scope: Construct, construct_id: str, props: DashboardProps) -> cloudwatch.Dashboard:
    props.validate()
    rows = _Rows(props)
    dashboard = cloudwatch.Dashboard(scope, construct_id, dashboard_name=f"slimserve-{props.model_name}",
                                     default_interval=Duration.hours(24))
    for row in (rows.header(), rows.traffic(), rows.latency(), rows.canary_vs_champion(), rows.input_drift(),
                rows.prediction_drift(), rows.live_accuracy(), rows.shadow(), rows.capture(),
                rows.batch_and_dead_letters(), rows.throttles_and_api()):
        dashboard.add_widgets(*row)
    return dashboard


class _Rows:
    def __init__(self, props: DashboardProps) -> None:
        self.props, self.model = props, props.model_name

    # -- metrics ----------------------------------------------------------------------------------------

    def role_metric(self, name: str, role: str, statistic: str = "Sum", label: str | None = None,
                    period: Duration = FIVE_MINUTES) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=SERVING_NAMESPACE, metric_name=name, statistic=statistic, period=period,
                                 dimensions_map={"model_name": self.model, "model_role": role},
                                 label=label or f"{role} {name}")

    def model_metric(self, name: str, statistic: str = "Sum", period: Duration = FIVE_MINUTES,
                     label: str | None = None) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=SERVING_NAMESPACE, metric_name=name, statistic=statistic, period=period,
                                 dimensions_map={"model_name": self.model}, label=label or name)

    def search(self, schema: str, terms: str, statistic: str, period: Duration,
               label: str) -> cloudwatch.MathExpression:
        """Every metric of `{Slimserve,<schema>}` matching `terms`, one line each (names unknown at synth)."""
        return cloudwatch.MathExpression(
            expression=f"SEARCH('{{{SERVING_NAMESPACE},{schema}}} {terms}', '{statistic}', {int(period.to_seconds())})",
            label=label, period=period)

    def feature_search(self, name: str) -> cloudwatch.MathExpression:
        return self.search("model_name,feature", f'MetricName="{name}" model_name="{self.model}"', "Maximum", HOUR,
                           "")

    # -- rows -------------------------------------------------------------------------------------------

    def header(self) -> list[cloudwatch.IWidget]:
        return [cloudwatch.TextWidget(width=WIDTH, height=2, markdown=(
            f"# slimserve: {self.model}\n"
            "Serving per role (champion, canary) from the inference function's metrics; drift hourly from the "
            "drift function; live accuracy from labels posted back. Alarms notify the stack's alarm topic."))]

    def traffic(self) -> list[cloudwatch.IWidget]:
        return [
            graph("Requests by role", [self.role_metric("Requests", role) for role in MODEL_ROLES], width=8),
            graph("4xx by role", [self.role_metric("Errors4xx", role) for role in MODEL_ROLES], width=8),
            # Per minute, as its alarm counts them.
            graph("5xx by role (per minute)", [self.role_metric("Errors5xx", role, period=MINUTE)
                                               for role in MODEL_ROLES],
                  width=8, lines=[annotation(role_errors(MODEL_ROLES[0]).threshold, "5xx alarm")]),
        ]

    def latency(self) -> list[cloudwatch.IWidget]:
        spec = role_latency(MODEL_ROLES[0])
        return [graph(f"Model latency p50 / p99: {role} (ms)",
                      [self.role_metric("ModelLatency", role, statistic, f"{role} {statistic}", MINUTE)
                       for statistic in ("p50", "p99")],
                      width=WIDTH // len(MODEL_ROLES), lines=[annotation(spec.threshold, "p99 alarm")])
                for role in MODEL_ROLES]

    def canary_vs_champion(self) -> list[cloudwatch.IWidget]:
        error_rates = [cloudwatch.MathExpression(
            expression=f"IF(requests_{role} > 0, 100 * errors_{role} / requests_{role}, 0)", label=f"{role} 5xx %",
            period=FIVE_MINUTES, using_metrics={f"requests_{role}": self.role_metric("Requests", role),
                                                f"errors_{role}": self.role_metric("Errors5xx", role)})
            for role in MODEL_ROLES]  # ids per role: one graph holds both
        return [
            graph("Canary vs champion: 5xx rate (%)", error_rates, width=8),
            graph("Canary vs champion: p99 latency (ms)",
                  [self.role_metric("ModelLatency", role, "p99", f"{role} p99") for role in MODEL_ROLES], width=8),
            graph("Canary vs champion: prediction PSI",
                  [self.model_metric("PredictionPsi", "Maximum", HOUR, "champion PredictionPsi"),
                   self.role_metric("PredictionPsi", "canary", "Maximum", "canary PredictionPsi", HOUR)], width=8),
        ]

    def input_drift(self) -> list[cloudwatch.IWidget]:
        psi, ks = DRIFT_SPECS["psi"], DRIFT_SPECS["ks"]
        maxima = graph("Input drift: largest PSI and KS", [self.model_metric(s.metric_name, "Maximum", HOUR)
                                                           for s in (psi, ks)], width=6,
                       lines=[annotation(psi.threshold, "PSI alarm"), annotation(ks.threshold, "KS alarm")])
        if not self.props.drift_per_feature:
            return [maxima, cloudwatch.TextWidget(width=WIDTH - 6, height=6, markdown=(
                "### Input drift per feature: not published as metrics\n"
                "This stack publishes only the maxima the drift alarms read (`slimserve:driftPerFeatureMetrics="
                "false`, one custom metric less per feature and statistic). Each hourly run still logs every "
                "feature's PSI, KS and null-rate change in its `drift run` log line (field `features`), and "
                f"`slimserve monitor --model {self.model} --aws` prints them with a histogram of profile against "
                "live values."))]
        return [maxima, *[graph(f"{name} per feature", [self.feature_search(name)], width=6)
                          for name in DRIFT_FEATURE_METRICS]]

    def prediction_drift(self) -> list[cloudwatch.IWidget]:
        spec = DRIFT_SPECS["prediction"]
        return [
            graph("Prediction drift: PSI against the holdout", [self.model_metric(spec.metric_name, "Maximum", HOUR)],
                  width=8, lines=[annotation(spec.threshold, "alarm")]),
            *[graph(f"Predictions by class or bin: {role}",
                    [self.search("model_name,model_role",
                                 f'model_name="{self.model}" model_role="{role}" '
                                 "(MetricName=Predictions OR MetricName=PredictionBin)", "Sum", FIVE_MINUTES, "")],
                    width=8, stacked=True) for role in MODEL_ROLES],
        ]

    def live_accuracy(self) -> list[cloudwatch.IWidget]:
        threshold = self.props.live_accuracy_threshold
        return [
            graph("Live accuracy (labelled rows, hourly)", [self.model_metric("LiveAccuracy", "Average", HOUR)],
                  width=8, lines=[] if threshold is None else [annotation(threshold, "alarm below")]),
            graph("Live MAE (labelled rows, hourly)", [self.model_metric("LiveMae", "Average", HOUR)], width=8),
            graph("Labels posted back", [self.model_metric("FeedbackLabels", "Sum", HOUR)], width=8),
        ]

    def shadow(self) -> list[cloudwatch.IWidget]:
        alarms = self.props.shadow_alarms
        width = WIDTH // (4 if alarms else 3)
        below = [annotation(spec.threshold, "alarm below") for spec, _ in alarms
                 if spec.metric_name == "ShadowAgreement"]
        widgets: list[cloudwatch.IWidget] = [
            graph("Shadow agreement with the served answer",
                  [self.model_metric("ShadowAgreement", "Average", HOUR if below else FIVE_MINUTES)],
                  width=width, lines=below),
            graph("Shadow score difference", [self.model_metric("ShadowScoreDiff", "Average")], width=width),
            graph("Shadow requests, errors and p99 latency (ms, right)",
                  [self.model_metric("ShadowRequests"), self.model_metric("ShadowErrors")], width=width,
                  right=[self.model_metric("ShadowLatency", "p99", label="ShadowLatency p99")]),
        ]
        if alarms:  # they notify the alarm topic only: a shadow is never served, nothing is rolled back
            widgets.append(cloudwatch.AlarmStatusWidget(title="Shadow alarms (notify only)", width=width, height=6,
                                                        alarms=[alarm for _, alarm in alarms]))
        return widgets

    def capture(self) -> list[cloudwatch.IWidget]:
        return [
            graph("Capture: rows written and lost", [self.model_metric(n) for n in
                                                     ("CaptureRowsWritten", "CaptureRowsLost")], width=8),
            graph("Capture: bytes written", [self.model_metric("CaptureBytes")], width=8),
            graph("Capture: failed flushes, corrupt objects, rows per drift run",
                  [self.model_metric("CaptureFlushFailures"), self.model_metric("CaptureObjectsCorrupt", "Sum", HOUR),
                   self.model_metric("DriftRows", "Maximum", HOUR)], width=8),
        ]

    def batch_and_dead_letters(self) -> list[cloudwatch.IWidget]:
        widgets: list[cloudwatch.IWidget] = []
        if self.props.batch:
            widgets.append(graph("Batch: rows scored and rejected", [
                self.search(BATCH_DIMENSIONS, f'MetricName="{name}" model_name="{self.model}"', "Sum",
                            FIVE_MINUTES, name) for name in ("RowsScored", "RowsRejected")], width=12))
        widgets.append(graph("Dead-letter queues: messages waiting", [
            queue.metric_approximate_number_of_messages_visible(statistic="Maximum", period=FIVE_MINUTES,
                                                                label=queue.node.path)
            for queue in self.props.dead_letter_queues], width=WIDTH - 12 * len(widgets)))
        return widgets

    def throttles_and_api(self) -> list[cloudwatch.IWidget]:
        props = self.props
        api = {"ApiId" if props.http_api else "ApiName": props.api_name, "Stage": props.api_stage}
        errors = ("4xx", "5xx", "Count") if props.http_api else ("4XXError", "5XXError", "Count")
        return [
            graph("Lambda throttles", [fn.metric_throttles(statistic="Sum", period=FIVE_MINUTES, label=fn.node.path)
                                       for fn in props.functions], width=8),
            graph("API 4xx / 5xx", [cloudwatch.Metric(namespace="AWS/ApiGateway", metric_name=name, statistic="Sum",
                                                      dimensions_map=api, period=FIVE_MINUTES, label=name)
                                    for name in errors], width=8),
            graph("API latency p99 / inference duration p99 (ms)", [
                cloudwatch.Metric(namespace="AWS/ApiGateway", metric_name="Latency", statistic="p99",
                                  dimensions_map=api, period=FIVE_MINUTES, label="API p99"),
                props.serving_function.metric_duration(statistic="p99", period=FIVE_MINUTES, label="function p99")],
                width=8),
        ]


def graph(title: str, metrics: Sequence[cloudwatch.IMetric], *, width: int, stacked: bool = False,
          lines: Sequence[cloudwatch.HorizontalAnnotation] = (),
          right: Sequence[cloudwatch.IMetric] = ()) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(title=title, left=list(metrics), right=list(right) or None, width=width, height=6,
                                  stacked=stacked, left_annotations=list(lines) or None)


def annotation(value: float, label: str) -> cloudwatch.HorizontalAnnotation:
    return cloudwatch.HorizontalAnnotation(value=value, label=label, color=cloudwatch.Color.RED)

