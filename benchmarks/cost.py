"""What serving costs per million requests, itemised, for the REST API and the HTTP API, x86_64 and arm64.

From stated us-east-1 list prices (below) and measured inputs: the handler's time (README, Performance: warm
p50/p99 and rows/s at 10,000 rows), the EMF bytes a request logs (README, Monitoring: 781 B) and the memory
the inference function is configured with (read from `ServingApiProps`). Lambda bills each invocation in
whole milliseconds, so a handler well under 1 ms bills 1 ms. Two workloads: a million one-row requests, and
a million rows sent 100 to a request (10,000 requests). Every input is printed with the table.

Run: .venv/bin/python benchmarks/cost.py [--handler-us 115] [--row-us 15.1] [--rps 50]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# us-east-1 list prices (USD).
API_MILLION = {"rest": 3.50, "http": 1.00}  # first 333 M (REST) / 300 M (HTTP) a month; HTTP counts per 512 KB
LAMBDA_REQUEST_MILLION = 0.20
GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}  # first 6 B GB-s a month
LOGS_GB = 0.50  # CloudWatch Logs ingestion
XRAY_TRACE_MILLION = 5.00  # traces recorded
XRAY_RESERVOIR, XRAY_RATE = 1, 0.05  # X-Ray's default rule: the first request each second, then 5%
# Bytes a request writes to CloudWatch Logs beside its EMF record (each counted with its 26-byte overhead):
PLATFORM_LOG_BYTES = 3 * 26 + 330  # Lambda's START, END and REPORT lines
ACCESS_LOG_BYTES = 26 + 420  # one JSON access log line (either API's format, typical values)
EMF_BYTES = 781  # measured: benchmarks/monitoring_cost.py
MILLION = 1_000_000


@dataclass(frozen=True)
class Workload:
    name: str
    requests: float
    rows_per_request: int


def memory_mb() -> int:
    """The inference function's configured memory, from the construct's props (what `cdk deploy` sets)."""
    sys.path.insert(0, str(ROOT))
    from cdk.constructs.serving_api import ServingApiProps

    return int(ServingApiProps.__dataclass_fields__["memory_size"].default)


def billed_ms(handler_us: float, row_us: float, rows: int) -> int:
    return max(1, math.ceil((handler_us + row_us * (rows - 1)) / 1000))


def sampled_share(rps: float) -> float:
    return min(1.0, (XRAY_RESERVOIR + XRAY_RATE * max(0.0, rps - XRAY_RESERVOIR)) / rps)


def itemise(api: str, arch: str, work: Workload, args: argparse.Namespace, memory: int) -> dict[str, float]:
    requests = work.requests
    ms = billed_ms(args.handler_us, args.row_us, work.rows_per_request)
    log_bytes = EMF_BYTES + PLATFORM_LOG_BYTES + ACCESS_LOG_BYTES
    return {
        "API": requests / MILLION * API_MILLION[api],
        "Lambda requests": requests / MILLION * LAMBDA_REQUEST_MILLION,
        "Lambda GB-s": requests * ms / 1000 * memory / 1024 * GB_SECOND[arch],
        "Logs": requests * log_bytes / 1e9 * LOGS_GB,
        "Custom metrics": 0.0,  # billed per metric-month, not per request (README, Monitoring)
        "X-Ray": requests * sampled_share(args.rps) / MILLION * XRAY_TRACE_MILLION,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler-us", type=float, default=115.0,
                        help="warm handler time of a one-row request, us (README: p50 55-115 with the Tracer on)")
    parser.add_argument("--row-us", type=float, default=15.1,
                        help="each further row, us (README: 150.9 ms for 10,000 rows)")
    parser.add_argument("--rps", type=float, default=50.0, help="steady requests a second, for X-Ray's sampling")
    args = parser.parse_args()
    memory = memory_mb()
    works = [Workload("per million one-row requests", MILLION, 1),
             Workload("per million rows, 100 a request", MILLION / 100, 100)]
    print(f"inputs: memory {memory} MB; handler {args.handler_us:g} us + {args.row_us:g} us a further row "
          f"(billed {billed_ms(args.handler_us, args.row_us, 1)} ms for 1 row, "
          f"{billed_ms(args.handler_us, args.row_us, 100)} ms for 100); logs {EMF_BYTES} B EMF + "
          f"{PLATFORM_LOG_BYTES} B platform + {ACCESS_LOG_BYTES} B access a request; X-Ray at {args.rps:g} req/s "
          f"samples {sampled_share(args.rps):.1%}")
    print(f"prices: API REST ${API_MILLION['rest']}/M, HTTP ${API_MILLION['http']}/M; Lambda "
          f"${LAMBDA_REQUEST_MILLION}/M requests, ${GB_SECOND['x86_64']}/GB-s x86_64, ${GB_SECOND['arm64']}/GB-s "
          f"arm64; logs ${LOGS_GB}/GB; X-Ray ${XRAY_TRACE_MILLION}/M traces")
    columns = [(api, arch) for api in ("rest", "http") for arch in ("x86_64", "arm64")]
    for work in works:
        table = {column: itemise(*column, work, args, memory) for column in columns}
        print(f"\n{work.name} ({work.requests:,.0f} requests), USD")
        print(f"{'item':<26}" + "".join(f"{api.upper() + ' ' + arch:>14}" for api, arch in columns))
        for item in next(iter(table.values())):
            print(f"{item:<26}" + "".join(f"{table[c][item]:>14.4f}" for c in columns))
        core = {c: t["API"] + t["Lambda requests"] + t["Lambda GB-s"] for c, t in table.items()}
        print(f"{'API + Lambda':<26}" + "".join(f"{core[c]:>14.4f}" for c in columns))
        print(f"{'all in':<26}" + "".join(f"{sum(table[c].values()):>14.4f}" for c in columns))
    single = {c: sum(list(itemise(*c, works[0], args, memory).values())[:3]) for c in columns}
    worst = max(single[("http", arch)] for arch in ("x86_64", "arm64"))
    print(f"\ngoal: API + Lambda <= $1.25 per million one-row requests on the HTTP API: "
          f"{'met' if worst <= 1.25 else 'not met'} (${worst:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
