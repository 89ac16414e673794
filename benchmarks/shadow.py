"""What a shadow adds to the inference handler: no shadow vs a shadow on 100% and on the default share.

The real ``lambda_handler`` (Tracer and metrics output off) answers API Gateway proxy events with a
fresh request id each, routed by the registry's routing item as on Lambda (a RoutingSource, its read
trusted for the whole run). The shadow is the same demo model under another version: a challenger of
the champion's size, so it doubles the model's work on the requests it runs on. The variants take
turns in blocks (interleaved) on the same warm module; the shadow's comparison and its EMF record are
inside the timed request, as they are on Lambda, which does no work after the response.

Run: .venv/bin/python benchmarks/shadow.py [--requests N] [--block N] [--rows N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per variant")
    parser.add_argument("--block", type=int, default=100, help="requests per turn")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    os.environ.update({"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
                       "POWERTOOLS_LOG_LEVEL": "WARNING"})
    from handler import build_bundle

    from functions.common.bundle import directory_reader, load_model
    from functions.common.manifest import MANIFEST_FILE
    from functions.common.registry import Routing
    from functions.common.routing import RoutingSource, set_metric_sink
    from functions.release.service import DEFAULT_SHADOW_SHARE
    from pipeline.local.apigw import LambdaContext, proxy_event
    from pipeline.local.server import load_inference_handler

    work = Path(tempfile.mkdtemp(prefix="slimserve-shadow-bench-"))
    champion, row = build_bundle(work)
    challenger = work / "challenger"
    shutil.copytree(champion, challenger)
    manifest = json.loads((challenger / MANIFEST_FILE).read_text())
    (challenger / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": "v2"}))
    module = load_inference_handler(str(champion))
    shadow_ms: list[float] = []  # ShadowLatency of every shadowed request, from its EMF record
    set_metric_sink(lambda record: shadow_ms.append(record["ShadowLatency"]) if "ShadowLatency" in record else None)

    def source(share: int) -> RoutingSource:
        routing = Routing(model=manifest["name"], champion_version="v1", champion_uri=str(champion),
                          shadow_version="v2" if share else None, shadow_uri=str(challenger) if share else "",
                          shadow_share=share)
        routed = RoutingSource(lambda: routing, lambda uri, sha: load_model(directory_reader(uri)),
                               ttl_seconds=1e9)
        routed.preload()
        return routed

    variants: dict[str, Any] = {"no shadow": source(0), "shadow 100%": source(100),
                                f"shadow {DEFAULT_SHADOW_SHARE}%": source(DEFAULT_SHADOW_SHARE)}
    body = json.dumps({"instances": [row] * args.rows})
    context = LambdaContext()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    own: dict[str, list[float]] = {name: [] for name in variants}

    def turn(name: str, n: int, timed: bool) -> None:
        module.holder = variants[name]
        for _ in range(n):
            event = proxy_event("POST", "/predict", body, {"Content-Type": "application/json"})
            before = len(shadow_ms)
            with redirect_stdout(io.StringIO()):
                started = time.perf_counter_ns()
                result = module.lambda_handler(event, context)
                elapsed = time.perf_counter_ns() - started
            assert result["statusCode"] == 200 and json.loads(result["body"])["model_version"] == "v1", result
            if timed:
                samples[name].append(elapsed / 1e3)
                own[name].extend(shadow_ms[before:])

    for name in variants:
        turn(name, 300, timed=False)  # warm-up
    while min(len(s) for s in samples.values()) < args.requests:
        for name in variants:
            turn(name, args.block, timed=True)

    base = samples["no shadow"]
    print(f"requests per variant: {len(base)}, {args.rows} row(s) each, interleaved blocks of {args.block}; "
          f"the shadow is the champion's model under another version")
    print(f"{'variant':<14}{'shadowed':>10}{'p50 us':>10}{'p99 us':>10}{'p50 x':>8}{'p99 x':>8}{'p99 added us':>14}")
    for name, values in samples.items():
        print(f"{name:<14}{len(own[name]):>10}{pct(values, 0.5):>10.1f}{pct(values, 0.99):>10.1f}"
              f"{pct(values, 0.5) / pct(base, 0.5):>8.3f}{pct(values, 0.99) / pct(base, 0.99):>8.3f}"
              f"{pct(values, 0.99) - pct(base, 0.99):>+14.1f}")
    print(f"baseline (no shadow): p50 {pct(base, 0.5):.1f} us, p99 {pct(base, 0.99):.1f} us")
    for name, values in own.items():
        if values:  # the shadow's own time (ShadowLatency): what each shadowed request pays, preemption aside
            print(f"{name}: ShadowLatency p50 {pct(values, 0.5) * 1e3:.1f} us, p99 {pct(values, 0.99) * 1e3:.1f} us "
                  f"over {len(values)} shadowed requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
