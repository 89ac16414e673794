"""Fuzz the local API from its own OpenAPI document with schemathesis, every check on.

For each bundle (the demo's 30-feature forest, and a churn model with categories and a nullable
column) `slimserve serve` runs in its own process; schemathesis reads /openapi.json, where the
row schema comes from the loaded manifest, so generated rows reach the model, and mutated ones
must be refused. Every request and answer is then read back from schemathesis' HAR report:
no 5xx, and every answer in its documented shape (the error shape for every 4xx).

Run: .venv/bin/python benchmarks/fuzz.py [--examples 1000] [--seed 20260101]   (or `make fuzz`)
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_api import demo_bundle, local_api, mixed_bundle

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MIN_CASES = 2000


def shape_problem(method: str, path: str, status: int, content_type: str, text: str) -> str | None:
    """Why an answer is outside the documented shapes, or None when it is inside."""
    if not content_type.startswith("application/json"):
        return f"content type {content_type!r}"
    try:
        body = json.loads(text)
    except ValueError:
        return "body is not JSON"
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if set(body) != {"error", "request_id"} or not isinstance(error, dict):
            return "not the error shape"
        if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
                and set(error) <= {"code", "message", "field"}):
            return "error without a code and a message"
        return None
    if path.endswith("/predict") and not {"predictions", "model_version", "request_id"} <= set(body):
        return "prediction without predictions, model_version and request_id"
    if path.endswith("/health") and body.get("status") != "ok":
        return "health without status ok"
    return None


def fuzz(bundle: Path, examples: int, seed: int, max_rows: int, report_dir: Path) -> dict[str, Any]:
    with local_api(bundle, {"MAX_ROWS": str(max_rows)}) as (base, _pid):
        done = subprocess.run([str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--checks", "all",
                               "--max-examples", str(examples), "--seed", str(seed), "--report", "har",
                               "--report-dir", str(report_dir), "--no-color"],
                              capture_output=True, text=True, cwd=report_dir)  # its crash cache stays out of the repo
    print(done.stdout[-3000:] if done.returncode else done.stdout[-600:])
    (har,) = report_dir.glob("*.json")
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses: collections.Counter[str] = collections.Counter()
    outside: list[str] = []
    for entry in entries:
        request, response = entry["request"], entry["response"]
        status, path = response["status"], request["url"].split("?")[0]
        statuses[f"{request['method']} /{path.rsplit('/', 1)[-1]} {status}"] += 1
        content = response.get("content", {})
        problem = shape_problem(request["method"], path, status, content.get("mimeType", ""), content.get("text", ""))
        if problem:
            outside.append(f"{request['method']} {path} {status}: {problem}")
    return {"bundle": bundle.name, "schemathesis_exit": done.returncode, "cases": len(entries),
            "reached_model": sum(n for k, n in statuses.items() if k.startswith("POST /predict 200")),
            "server_errors": sum(n for k, n in statuses.items() if k.endswith(tuple(f" 5{d:02d}" for d in range(100)))),
            "outside_shape": outside, "statuses": dict(sorted(statuses.items()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="schemathesis --max-examples per operation")
    parser.add_argument("--seed", type=int, default=20260101)
    # With the default 10,000 rows a schema-valid request can pass the 5 MiB body limit and get 413, which
    # no JSON Schema can say; 1,000 rows of the widest numbers stay under it, so every check applies as is.
    parser.add_argument("--max-rows", type=int, default=1000, help="MAX_ROWS of the served function")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slimserve-hardening")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for bundle in (demo_bundle(args.workdir), mixed_bundle(args.workdir)):
        with tempfile.TemporaryDirectory() as reports:
            results.append(fuzz(bundle, args.examples, args.seed, args.max_rows, Path(reports)))
    total = sum(r["cases"] for r in results)
    print(f"\nfuzz {dt.date.today()}: schemathesis --checks all --max-examples {args.examples} --seed {args.seed}, "
          f"MAX_ROWS={args.max_rows}")
    for r in results:
        print(f"  {r['bundle']}: {r['cases']} cases, {r['reached_model']} scored by the model, "
              f"{r['server_errors']} 5xx, {len(r['outside_shape'])} outside the documented shapes, "
              f"schemathesis exit {r['schemathesis_exit']}")
        print("    " + ", ".join(f"{k}: {n}" for k, n in r["statuses"].items()))
        for line in r["outside_shape"][:10]:
            print(f"    outside: {line}")
    print(f"  total: {total} cases")
    failed = total < MIN_CASES or any(r["schemathesis_exit"] or r["server_errors"] or r["outside_shape"]
                                      for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
