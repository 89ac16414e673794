"""`slimserve monitor`: the drift function's figures for one model, as a table per feature with a small
text histogram of the profile against the live window, so a shift is seen rather than read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from functions.common.settings import DriftSettings
from functions.drift.service import DriftReport, measure_drift, read_profile
from functions.drift.stats import Comparison

BAR_WIDTH = 24
PROFILE_MARK, LIVE_MARK = "#", "="


def drift_now(target: Mapping[str, Any], model: str, *, window_hours: int, min_samples: int,
              now: dt.datetime | None = None) -> DriftReport:
    """Measure the model's window in the account `target` names (its table and model bucket); publishes nothing."""
    import boto3

    from functions.common.registry import Registry

    settings = DriftSettings(registry_table=target["table"], model_name=model, model_bucket=target["model_bucket"],
                             window_hours=window_hours, min_samples=min_samples)
    routing = Registry(boto3.client("dynamodb"), settings.registry_table).routing(model)
    s3 = boto3.client("s3")
    return measure_drift(settings, routing, s3, now or dt.datetime.now(dt.UTC),
                         lambda uri, sha: read_profile(uri, sha, lambda: s3))


def render(report: DriftReport, thresholds: Mapping[str, float]) -> str:
    """The report as text: a summary, one table row per feature, and each feature's histogram."""
    lines = [f"model {report.model}, champion {report.version or '-'}: {report.rows} rows from {report.objects} "
             f"capture objects ({report.corrupt} corrupt, skipped)"]
    if not report.published:
        return "\n".join([*lines, f"nothing compared: {report.reason}"])
    lines.append(f"max PSI {report.psi_max:.3f} (alarm above {thresholds['psi']:g}), max KS {report.ks_max:.3f} "
                 f"(alarm above {thresholds['ks']:g})")
    lines += ["", f"{'feature':<24} {'PSI':>7} {'KS':>7} {'null Δ':>8}  flag"]
    shown = dict(report.features)
    if report.prediction is not None:
        shown["(prediction)"] = report.prediction
    for name, c in shown.items():
        flag = "DRIFT" if c.psi > thresholds["psi"] or (c.ks or 0) > thresholds["ks"] else ""
        ks = "-" if c.ks is None else f"{c.ks:.3f}"
        lines.append(f"{name[:24]:<24} {c.psi:>7.3f} {ks:>7} {c.null_rate_delta:>+8.3f}  {flag}")
    for name, skipped in report.skipped.items():
        lines.append(f"{name[:24]:<24} {'':>7} {'':>7} {'':>8}  left out: {skipped}")
    for name, c in shown.items():
        lines += ["", f"{name}  ({PROFILE_MARK} profile, {LIVE_MARK} live)", *histogram(c)]
    return "\n".join(lines)


def histogram(comparison: Comparison) -> list[str]:
    """One pair of bars per bin (bins neither side holds are left out), scaled to the largest share."""
    top = max(max(comparison.expected), max(comparison.actual), 1e-12)
    width = max(len(label) for label in comparison.labels)
    out = []
    for label, e, a in zip(comparison.labels, comparison.expected, comparison.actual, strict=True):
        if e == 0 and a == 0:
            continue
        out.append(f"  {label:>{width}} {_bar(e, top, PROFILE_MARK)} {e:6.1%}")
        out.append(f"  {'':>{width}} {_bar(a, top, LIVE_MARK)} {a:6.1%}")
    return out


def _bar(share: float, top: float, mark: str) -> str:
    return (mark * round(share / top * BAR_WIDTH)).ljust(BAR_WIDTH)
