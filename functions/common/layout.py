"""Where things live in the project's buckets: the one list of key prefixes.

Read by the functions, the CDK constructs (grants, notification filters, item readers) and the
local emulation, so a prefix is named once. Plain strings only: no AWS, no third-party imports.
"""

from __future__ import annotations

from datetime import UTC, datetime

# Model bucket.
MODELS_PREFIX = "models/"  # bundles: models/<name>/<version>/
HOLDOUT_PREFIX = "holdout/"  # holdout files the validation gate reads
REPORT_FILE = "validation-report.json"  # written by the gate next to the bundle it judged
CAPTURE_PREFIX = "capture/"  # sampled requests and responses: capture/<model>/<version>/<YYYY>/<MM>/<DD>/<HH>/
FEEDBACK_PREFIX = "feedback/"  # label files (prediction_id,label) recorded as POST /feedback records one
FEEDBACK_RESULTS_PREFIX = "feedback-results/"  # one outcome summary per feedback file, outside feedback/

# Scoring bucket.
INCOMING_PREFIX = "incoming/"  # files dropped here are scored
SCORED_PREFIX = "scored/"
REJECTED_PREFIX = "rejected/"
MANIFESTS_PREFIX = "manifests/"  # one manifest per scored file: the commit marker, written last
RUNS_PREFIX = "runs/"  # Distributed Map parts (scoring bucket) and training runs (artifacts bucket)

SCORING_OUTPUT_PREFIXES = (SCORED_PREFIX, REJECTED_PREFIX, MANIFESTS_PREFIX)


def model_prefix(name: str, version: str) -> str:
    """Key prefix of one bundle, without the trailing slash."""
    return f"{MODELS_PREFIX}{name}/{version}"


def capture_model_prefix(model: str) -> str:
    """Every capture object of one model, with the trailing slash."""
    return f"{CAPTURE_PREFIX}{model}/"


def capture_key(model: str, version: str, when: datetime, suffix: str) -> str:
    """One capture object, in the UTC hour of its flush (`when` is timezone-aware), named by epoch ms."""
    utc = when.astimezone(UTC)
    epoch_ms = int(utc.timestamp() * 1000)
    return (
        f"{capture_model_prefix(model)}{version}/{utc:%Y/%m/%d/%H}/{epoch_ms}-{suffix}.jsonl.gz"
    )


def report_key(bundle_prefix: str) -> str:
    return f"{bundle_prefix.strip('/')}/{REPORT_FILE}"


def relative_key(key: str) -> str:
    """A scoring input's key below incoming/ (the key itself if it is elsewhere)."""
    return key[len(INCOMING_PREFIX):] if key.startswith(INCOMING_PREFIX) else key


def is_incoming(key: str) -> bool:
    return key.startswith(INCOMING_PREFIX)


def manifest_key(key: str) -> str:
    return f"{MANIFESTS_PREFIX}{relative_key(key)}.json"


def scored_key(key: str) -> str:
    return f"{SCORED_PREFIX}{relative_key(key)}"


def rejected_key(key: str, kind: str) -> str:
    """Rejected rows: CSV beside a CSV input, JSON Lines for the other formats (gzip kept)."""
    rel = relative_key(key)
    if kind == "csv":
        return f"{REJECTED_PREFIX}{rel}"
    if kind == "jsonl" and rel.lower().endswith(".gz"):
        return f"{REJECTED_PREFIX}{rel[:-3]}.rejected.jsonl.gz"
    return f"{REJECTED_PREFIX}{rel}.jsonl"


def run_prefix(run_id: str) -> str:
    """Everything of one Distributed Map run, without the trailing slash."""
    return f"{RUNS_PREFIX}{run_id}"


def run_parts_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/parts/"


def objects(prefix: str) -> str:
    """The object pattern for a prefix, as grants and IAM resources write it: 'incoming/*'."""
    return f"{prefix}*"
