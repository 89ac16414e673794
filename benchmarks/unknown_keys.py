"""The worst refusal per byte: one row holding ~188,000 unknown keys (just under the 5 MiB body limit).

Measured in one run, through the inference Lambda handler in-process (event in, answer out):
  - the flood of unknown keys, refused (the "did you mean" search is capped);
  - a valid request of the same byte size, scored (the baseline), and the ratio of the two;
  - the uncapped search, timed on the first 2,000 keys and scaled to the whole row (what it cost before);
  - a 4 MiB unknown key: the time and the size of the error body.

Run: .venv/bin/python benchmarks/unknown_keys.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_api import demo_bundle

BODY_LIMIT = 5 * 1024 * 1024


@contextlib.contextmanager
def stdout_silenced() -> Iterator[None]:
    """Logs and metrics go to /dev/null while timing (they are still written, as on Lambda)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def median_seconds(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def flood_body(names: list[str]) -> str:
    """As many unknown keys as fit under the body limit, each the costliest kind to compare: a feature's name
    backwards, same length and same letters (so the quick filters pass) yet no match, so none stops the search."""
    keys, size, i = [], 20, 0
    while True:
        key = f"{names[i % len(names)][::-1]}{i}"
        size += len(key) + 9  # "key": 1.0,
        if size > BODY_LIMIT - 64:
            break
        keys.append(key)
        i += 1
    return json.dumps({"instances": [dict.fromkeys(keys, 1.0)]})


def valid_body_of_size(target: int, row: list[float]) -> str:
    per_row = len(json.dumps(row)) + 2
    return json.dumps({"instances": [row] * (target // per_row)})


def main() -> int:
    import boto3

    from pipeline.local.apigw import LambdaContext, proxy_event
    from pipeline.local.emulation import REGION, emulated_account, upload_bundle
    from pipeline.local.server import load_inference_handler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slimserve-hardening")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = demo_bundle(args.workdir)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    with emulated_account():
        module = load_inference_handler(upload_bundle(boto3.client("s3", region_name=REGION), bundle),
                                        MAX_BODY_BYTES=str(BODY_LIMIT), MAX_ROWS="10000")
        names = module.holder.load().manifest.feature_names

        def call(body: str) -> dict[str, Any]:
            event = proxy_event("POST", "/predict", body, {"Content-Type": "application/json"})
            return module.lambda_handler(event, LambdaContext())

        flood = flood_body(names)
        n_keys = flood.count('": 1.0')
        valid = valid_body_of_size(len(flood), [1234.5678901234567 + i for i in range(len(names))])
        huge_key = json.dumps({"instances": [{**dict.fromkeys(names, 1.0), "k" * (4 * 1024 * 1024): 1.0}]})
        with stdout_silenced():
            call(valid)  # warm-up
            flood_s, flood_answer = median_seconds(lambda: call(flood), args.repeat)
            valid_s, valid_answer = median_seconds(lambda: call(valid), args.repeat)
            huge_s, huge_answer = median_seconds(lambda: call(huge_key), args.repeat)
        keys = list(json.loads(flood)["instances"][0])
        sample = keys[:2000]
        start = time.perf_counter()
        for key in sample:
            difflib.get_close_matches(key, names, n=1, cutoff=0.75)
        uncapped_s = (time.perf_counter() - start) * len(keys) / len(sample)

    assert flood_answer["statusCode"] == 400 and valid_answer["statusCode"] == 200, (flood_answer, valid_answer)
    code = json.loads(flood_answer["body"])["error"]["code"]
    print(f"unknown-key flood {dt.date.today()}: demo bundle ({len(names)} features), handler in-process, "
          f"median of {args.repeat}")
    print(f"  flood: {n_keys} unknown keys, {len(flood)} bytes -> {flood_answer['statusCode']} {code} "
          f"in {flood_s * 1e3:.0f} ms")
    print(f"  baseline: a valid request of {len(valid)} bytes ({len(json.loads(valid)['instances'])} rows) "
          f"-> 200 in {valid_s * 1e3:.0f} ms")
    print(f"  ratio flood / baseline: {flood_s / valid_s:.2f}")
    print(f"  uncapped search on the same row (first {len(sample)} keys, scaled): {uncapped_s:.1f} s")
    print(f"  4 MiB unknown key: {len(huge_key)} bytes -> {huge_answer['statusCode']} in {huge_s * 1e3:.0f} ms, "
          f"error body {len(huge_answer['body'])} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
