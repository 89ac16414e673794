"""What monitoring costs a month at a stated traffic, from the bytes the functions actually write.

Measured here: the real inference ``lambda_handler`` answers one-row API Gateway events with metrics on and
capture at 100% (its PUTs kept in memory); every line it prints is read back: the EMF bytes per request, the
capture's gzip bytes per row and per flush. The drift function's hourly EMF records for the bundle's
features and the feedback function's record and DynamoDB item per label are built by their own code.
Then the monthly bill at the stated traffic, with us-east-1 list prices (below, as of writing), with the
drift function's per-feature metrics on (the default) and off (`-c slimserve:driftPerFeatureMetrics=false`).

Run: .venv/bin/python benchmarks/monitoring_cost.py [--requests N] [--monthly M] [--capture-rate R]
     [--labelled L] [--environments E] [--alarms A]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# us-east-1 list prices (USD).
METRIC_MONTH = 0.30  # custom metric, first 10,000
ALARM_MONTH = 0.10  # standard-resolution metric alarm
COMPOSITE_MONTH = 0.50
DASHBOARD_MONTH = 3.00  # beyond the 3 free dashboards of up to 50 metrics
LOGS_GB = 0.50  # CloudWatch Logs standard ingestion
LOGS_STORED_GB = 0.03  # per GB-month, compressed
S3_PUT_1000, S3_GET_1000, S3_LIST_1000 = 0.005, 0.0004, 0.005
S3_GB_MONTH = 0.023
DDB_WRITE_MILLION = 0.625  # on-demand write request units (1.25 before November 2024)
DDB_GB_MONTH, PITR_GB_MONTH = 0.25, 0.20
KMS_KEY_MONTH = 1.00
LOG_EVENT_OVERHEAD = 26  # bytes CloudWatch Logs counts per event beside its message
SECONDS_PER_MONTH = 30 * 24 * 3600
DRIFT_RUNS = 30 * 24  # hourly
WINDOW_HOURS = 24


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests measured through the handler")
    parser.add_argument("--monthly", type=float, default=10e6, help="requests a month (one row each)")
    parser.add_argument("--capture-rate", type=float, default=0.1, help="CAPTURE_SAMPLE_RATE")
    parser.add_argument("--labelled", type=float, default=0.01, help="share of predictions labelled back")
    parser.add_argument("--environments", type=int, default=2, help="warm inference environments on average")
    parser.add_argument("--alarms", type=int, default=29,
                        help="standard alarms of the stack (the default synth's; batch scoring adds 4)")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true",
                       "POWERTOOLS_LOG_LEVEL": "WARNING"})
    os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
    served = measure_serving(args.requests)
    drift = {on: measure_drift(served["manifest"], per_feature=on) for on in (True, False)}
    report(args, served, drift, measure_label())
    return 0


# -- measurements ------------------------------------------------------------------------------------

def measure_serving(requests: int) -> dict[str, Any]:
    from functions.common.bundle import directory_reader, read_manifest
    from functions.common.capture import Capture
    from pipeline.local.apigw import LambdaContext, proxy_event
    from pipeline.local.server import load_inference_handler

    bundle, rows = demo_bundle(Path(tempfile.mkdtemp(prefix="slimserve-monitoring-cost-")))
    module = load_inference_handler(str(bundle))
    puts: list[bytes] = []
    module.capture = Capture(sample_rate=1.0, put=lambda key, body: puts.append(body))
    context, out = LambdaContext(), io.StringIO()
    with redirect_stdout(out):
        for i in range(requests + 1):  # the holdout's rows in turn: capture compresses real variety
            body = json.dumps({"instances": [rows[i % len(rows)]]})
            event = proxy_event("POST", "/predict", body, {"Content-Type": "application/json"})
            assert module.lambda_handler(event, context)["statusCode"] == 200
        module.capture.flush()
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{") and '"_aws"' in line]
    serving = [r for r in records if "Requests" in r]
    capture = [r for r in records if "CaptureRowsWritten" in r]
    other = len(lines) - len(serving) - len(capture)
    rows = sum(r["CaptureRowsWritten"] for r in capture)
    return {"manifest": read_manifest(directory_reader(bundle))[0], "serving": serving[1:], "capture": capture,
            "first": serving[0], "other_lines": other, "puts": puts, "captured_rows": rows,
            "line_bytes": [len(line.encode()) for line in lines]}


def demo_bundle(work: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The handler benchmark's demo bundle and all its holdout rows (features only), not one."""
    import pandas as pd
    from handler import build_bundle

    bundle, _ = build_bundle(work)
    holdout = pd.read_csv(work / "holdout.csv").drop(columns=["target"])  # where train_demo_model writes it
    return bundle, json.loads(holdout.to_json(orient="records"))


def measure_drift(manifest: Any, per_feature: bool) -> list[dict[str, Any]]:
    from functions.drift.service import DriftReport, metric_records
    from functions.drift.stats import Comparison

    profile = manifest.profile
    features = {}
    for feature in manifest.features:
        numeric = type(profile.features[feature.name]).__name__ == "NumericProfile"
        features[feature.name] = Comparison(psi=0.0123456789, ks=0.0123456789 if numeric else None,
                                            null_rate_delta=0.0, count=1000, labels=(), expected=(), actual=())
    prediction = Comparison(psi=0.0123456789, ks=None, null_rate_delta=0.0, count=1000, labels=(), expected=(),
                            actual=())
    report = DriftReport(model=manifest.name, version=manifest.version, rows=12345, objects=100, corrupt=0,
                         published=True, reason="", features=features, skipped={}, prediction=prediction,
                         canary_prediction=prediction)
    return metric_records(report, timestamp_ms=1_700_000_000_000, per_feature=per_feature)


def measure_label() -> dict[str, Any]:
    from functions.common.prediction_ids import issue
    from functions.feedback.labels import live_record

    prediction_id = issue(os.urandom(32), "churn", "20250101-120000", "c0a8e1f2-7b3d-4e5f-9a1b-2c3d4e5f6a7b", 0, 1)
    caller = "arn:aws:sts::123456789012:assumed-role/labeller/session-name"
    item = {"prediction_id": prediction_id, "model": "churn", "version": "20250101-120000",
            "request_id": "c0a8e1f2-7b3d-4e5f-9a1b-2c3d4e5f6a7b", "row": "0", "prediction": "1", "label": "1",
            "caller": caller, "labelled_at": "1700000000", "expires_at": "1731536000"}
    # DynamoDB's item size: attribute names plus values (numbers about their digit count).
    item_bytes = sum(len(k) + len(v.encode()) for k, v in item.items())
    record = live_record("churn", "20250101-120000", "LiveAccuracy", 1.0, 1_700_000_000_000)
    return {"item_bytes": item_bytes, "record": record}


# -- the bill ----------------------------------------------------------------------------------------

def metric_identities(records: list[dict[str, Any]]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Distinct custom metrics (name and dimension values) the records make."""
    found = set()
    for r in records:
        for directive in r["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    found.add((metric["Name"], tuple((d, str(r[d])) for d in dims)))
    return found


def as_role(record: dict[str, Any], role: str, version: str) -> dict[str, Any]:
    return {**record, "model_role": role, "model_version": version}


def emf_bytes(record: dict[str, Any]) -> int:
    return len(json.dumps(record, separators=(",", ":")).encode()) + 1 + LOG_EVENT_OVERHEAD


def report(args: argparse.Namespace, served: dict[str, Any], drift: dict[bool, list[dict[str, Any]]],
           label: dict[str, Any]) -> None:
    from cdk.constructs.alarms import DRIFT_SPECS

    serving, capture = served["serving"], served["capture"]
    per_request = sum(emf_bytes(r) for r in serving) / len(serving)
    rows_per_put = max(r["CaptureRowsWritten"] for r in capture)  # a full flush (the last one holds the rest)
    gzip_per_row = sum(len(b) for b in served["puts"]) / served["captured_rows"]
    capture_emf = sum(emf_bytes(r) for r in capture) / len(capture)
    drift_runs = {on: sum(emf_bytes(r) for r in records) for on, records in drift.items()}
    label_emf = emf_bytes(label["record"])
    manifest = served["manifest"]
    print(f"measured: {len(serving)} one-row requests through the inference handler ({len(manifest.features)} "
          f"features, {len(manifest.classes or [])} classes), capture 100%, flush at "
          f"{rows_per_put:.0f} rows")
    print(f"  EMF per request: {per_request:.0f} bytes (the line plus {LOG_EVENT_OVERHEAD} of event overhead); "
          f"other lines per request: {served['other_lines'] / len(serving):.3f}")
    print(f"  capture: {gzip_per_row:.1f} gzip bytes per row, one PUT per {rows_per_put:.0f} rows, "
          f"{capture_emf:.0f} EMF bytes per flush")
    print(f"  drift run: {len(drift[True])} EMF records, {drift_runs[True]} bytes ({len(drift[False])} records, "
          f"{drift_runs[False]} bytes with per-feature metrics off); label: {label_emf} EMF bytes, "
          f"DynamoDB item about {label['item_bytes']} bytes")

    # Custom metrics: both roles serving all month, one version each, plus drift, capture and labels.
    version = served["first"]["model_version"]
    role_records = [as_role(r, "champion", version) for r in serving[:1]] + [
        as_role(r, "canary", version + "-canary") for r in serving[:1]]
    label_records = [label["record"], {**label["record"], "model_version": "canary"}]
    others = {"capture (4 once a flush fails)": metric_identities(capture), "labels": metric_identities(label_records)}
    bills = {}
    for on, records in drift.items():
        groups = {"serving (2 roles)": metric_identities(role_records), "drift": metric_identities(records), **others}
        bills[on] = bill(args, groups, per_request, rows_per_put, gzip_per_row, capture_emf, drift_runs[on],
                         label, label_emf)
    print(f"\nAt {args.monthly / 1e6:g} M one-row requests a month ({args.monthly / SECONDS_PER_MONTH:.2f}/s), one "
          f"model, champion and canary, {len(manifest.features)} features, {len(DRIFT_SPECS)} drift signals:\n")
    print("| Item | Quantity x price | $ / month |\n|---|---|---:|")
    for item, quantity, cost in bills[True]:
        print(f"| {item} | {quantity} | {cost:.2f} |")
    print(f"| **Total** | | **{sum(c for _, _, c in bills[True]):.2f}** |")
    changed = [(line, cost) for line, (_, _, cost) in zip(bills[False], bills[True], strict=True)
               if round(line[2], 2) != round(cost, 2)]
    for (item, quantity, cost), before in changed:
        saved = round(cost, 2) - round(before, 2)
        print(f"| {item}, per-feature drift metrics off | {quantity} | {cost:.2f} ({saved:+.2f}) |")
    print(f"| **Total, per-feature drift metrics off** (`-c slimserve:driftPerFeatureMetrics=false`) | | "
          f"**{sum(c for _, _, c in bills[False]):.2f}** |")


def bill(args: argparse.Namespace, groups: dict[str, set[Any]], per_request: float,
         rows_per_put: float, gzip_per_row: float, capture_emf: float, drift_run: int, label: dict[str, Any],
         label_emf: int) -> list[tuple[str, str, float]]:
    """The month's items: (item, quantity x price, dollars)."""
    metrics = sum(len(g) for g in groups.values())
    monthly, rate = args.monthly, args.capture_rate
    requests_per_second = monthly / SECONDS_PER_MONTH
    rows = monthly * rate
    per_env_rows_per_minute = requests_per_second * rate * 60 / args.environments
    # An environment flushes at 500 rows or when a request finds its oldest row a minute old.
    puts = rows / max(1.0, min(rows_per_put, per_env_rows_per_minute)) if rate > 0 else 0
    objects_in_window = puts / 30 * WINDOW_HOURS / 24
    drift_gets = objects_in_window * DRIFT_RUNS if rate > 0 else 0
    drift_lists = 2 * (WINDOW_HOURS + 1) * DRIFT_RUNS  # one LIST per hour prefix per serving version per run
    capture_gb = rows * gzip_per_row / 1e9  # 30-day expiry: about one month stored
    labels = monthly * args.labelled
    label_wru = labels * -(-label["item_bytes"] // 1024)
    label_gb = labels * 12 * (label["item_bytes"] + 100) / 1e9  # 365-day TTL: a year of labels; 100 B index overhead
    emf_gb = (monthly * per_request + puts * capture_emf + DRIFT_RUNS * drift_run + labels * label_emf) / 1e9
    alarms, composites = args.alarms, 1  # the drift alarm is the one composite

    return [
        ("Custom metrics", f"{metrics} ({', '.join(f'{k} {len(v)}' for k, v in groups.items())}) x $0.30",
         metrics * METRIC_MONTH),
        ("Alarms", f"{alarms} standard x $0.10 + {composites} composite x $0.50",
         alarms * ALARM_MONTH + composites * COMPOSITE_MONTH),
        ("Dashboard", "1 x $3 (free if it is one of the account's first 3)", DASHBOARD_MONTH),
        ("Alarm topic key", "1 KMS key x $1 (its requests: a few per alarm, negligible)", KMS_KEY_MONTH),
        ("EMF log ingestion", f"{emf_gb:.2f} GB x $0.50 ({per_request:.0f} B per request)", emf_gb * LOGS_GB),
        ("EMF log storage", f"{emf_gb:.2f} GB ingested, kept a month (about 1/5 compressed) x $0.03",
         emf_gb / 5 * LOGS_STORED_GB),
        ("Capture PUTs", f"{puts:,.0f} x $0.005/1000 ({rate:.0%} of requests, {args.environments} warm environments)",
         puts / 1000 * S3_PUT_1000),
        ("Capture storage", f"{capture_gb:.3f} GB x $0.023 ({gzip_per_row:.0f} B per row, 30-day expiry)",
         capture_gb * S3_GB_MONTH),
        ("Drift reads of capture", f"{drift_gets:,.0f} GET x $0.0004/1000 + {drift_lists:,} LIST x $0.005/1000",
         drift_gets / 1000 * S3_GET_1000 + drift_lists / 1000 * S3_LIST_1000),
        ("Feedback table writes", f"{label_wru:,.0f} WRU x $0.625/M ({args.labelled:.0%} of predictions labelled, "
         f"{label['item_bytes']} B items)", label_wru / 1e6 * DDB_WRITE_MILLION),
        ("Feedback table storage", f"{label_gb:.3f} GB x ($0.25 + $0.20 PITR) (a year of labels)",
         label_gb * (DDB_GB_MONTH + PITR_GB_MONTH)),
    ]


if __name__ == "__main__":
    sys.exit(main())
