"""What request capture adds to the inference handler: capture off vs 100% sampling, one row a request.

The real ``lambda_handler`` (Tracer and metrics output off) answers API Gateway proxy events with a
fresh request id each. The variants take turns in blocks (interleaved) on the same warm module;
"100%" writes to a local moto S3 server through the real S3 client, so the flushes (every
--max-records rows: JSON Lines, gzip, one PUT) fall inside the timed requests and into the p99.
--shadow adds the same two variants with a shadow on every request (the demo model under another
version, routed as on Lambda): what a captured row's shadow answer adds is read between those two.

Run: .venv/bin/python benchmarks/capture.py [--requests N] [--block N] [--max-records N] [--shadow]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "capture-bench"
GOAL_P50_US = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per variant")
    parser.add_argument("--block", type=int, default=100, help="requests per turn")
    parser.add_argument("--max-records", type=int, default=500, help="CAPTURE_MAX_RECORDS: rows per flush")
    parser.add_argument("--shadow", action="store_true", help="also both variants with a shadow on every request")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
                       "POWERTOOLS_LOG_LEVEL": "WARNING"})
    import boto3
    from handler import build_bundle
    from moto.server import ThreadedMotoServer

    from functions.common.capture import Capture, s3_put
    from pipeline.local.apigw import LambdaContext, proxy_event
    from pipeline.local.server import load_inference_handler

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{server._server.server_port}"
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    bundle, row = build_bundle(Path(tempfile.mkdtemp(prefix="slimserve-capture-bench-")))
    module = load_inference_handler(str(bundle))
    def captured() -> Capture:
        return Capture(sample_rate=1.0, put=s3_put(BUCKET), max_records=args.max_records, emit=lambda record: None)

    served = module.holder
    variants = {"capture off": (Capture(sample_rate=0.0, put=None), served), "capture 100%": (captured(), served)}
    if args.shadow:
        shadowed = shadowed_source(bundle)
        variants |= {"shadow, off": (Capture(sample_rate=0.0, put=None), shadowed),
                     "shadow, 100%": (captured(), shadowed)}
    body = json.dumps({"instances": [row]})
    context = LambdaContext()
    samples: dict[str, list[float]] = {name: [] for name in variants}

    def turn(name: str, n: int, timed: bool) -> None:
        module.capture, module.holder = variants[name]
        for _ in range(n):
            event = proxy_event("POST", "/predict", body, {"Content-Type": "application/json"})
            with redirect_stdout(io.StringIO()):
                started = time.perf_counter_ns()
                result = module.lambda_handler(event, context)
                elapsed = time.perf_counter_ns() - started
            assert result["statusCode"] == 200, result
            if timed:
                samples[name].append(elapsed / 1e3)

    for name in variants:
        turn(name, 300, timed=False)  # warm-up
    while min(len(s) for s in samples.values()) < args.requests:
        for name in variants:
            turn(name, args.block, timed=True)
    for capture, _ in variants.values():
        capture.flush()
    server.stop()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    off, on = samples["capture off"], samples["capture 100%"]
    print(f"requests per variant: {len(off)}, one row each, flush every {args.max_records} rows, interleaved "
          f"blocks of {args.block}")
    print(f"{'variant':<14}{'p50 us':>10}{'p99 us':>10}{'max us':>10}")
    for name, values in samples.items():
        print(f"{name:<14}{pct(values, 0.5):>10.1f}{pct(values, 0.99):>10.1f}{max(values):>10.1f}")
    added50, added99 = pct(on, 0.5) - pct(off, 0.5), pct(on, 0.99) - pct(off, 0.99)
    print(f"baseline (capture off) p50 {pct(off, 0.5):.1f} us; capture 100% / off: "
          f"p50 x{pct(on, 0.5) / pct(off, 0.5):.3f}, p99 x{pct(on, 0.99) / pct(off, 0.99):.3f}")
    print(f"added by capture: p50 {added50:+.1f} us (goal <= {GOAL_P50_US:.0f}), p99 {added99:+.1f} us")
    flushes = sorted(on, reverse=True)[: max(1, len(on) // args.max_records)]
    print(f"the {len(flushes)} slowest capture requests (the flushes): median {pct(flushes, 0.5):.0f} us")
    if args.shadow:
        s_off, s_on = samples["shadow, off"], samples["shadow, 100%"]
        s_flushes = sorted(s_on, reverse=True)[: max(1, len(s_on) // args.max_records)]
        print(f"with a shadow on every request: capture 100% / off p50 x{pct(s_on, 0.5) / pct(s_off, 0.5):.3f}, "
              f"added p50 {pct(s_on, 0.5) - pct(s_off, 0.5):+.1f} us; flushes (rows with shadow keys): median "
              f"{pct(s_flushes, 0.5):.0f} us, x{pct(s_flushes, 0.5) / pct(flushes, 0.5):.3f} the rows without")
    return 0


def shadowed_source(bundle: Path) -> object:
    """A routing source serving ``bundle`` as v1 with a copy of it as v2, its shadow on every request."""
    import shutil

    from functions.common.bundle import directory_reader, load_model
    from functions.common.manifest import MANIFEST_FILE
    from functions.common.registry import Routing
    from functions.common.routing import RoutingSource

    challenger = bundle.parent / "challenger"
    shutil.copytree(bundle, challenger)
    manifest = json.loads((challenger / MANIFEST_FILE).read_text())
    (challenger / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": "v2"}))
    routing = Routing(model=manifest["name"], champion_version="v1", champion_uri=str(bundle), shadow_version="v2",
                      shadow_uri=str(challenger), shadow_share=100)
    source = RoutingSource(lambda: routing, lambda uri, sha: load_model(directory_reader(uri)), ttl_seconds=1e9)
    source.preload()
    return source


if __name__ == "__main__":
    sys.exit(main())
