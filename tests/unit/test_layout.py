"""The bucket layout: every key the functions write derives from one list of prefixes."""

from __future__ import annotations

from functions.common import layout


def test_scoring_keys_mirror_the_input_below_incoming() -> None:
    key = "incoming/2024/day.csv"
    assert layout.is_incoming(key) and layout.relative_key(key) == "2024/day.csv"
    assert layout.manifest_key(key) == "manifests/2024/day.csv.json"
    assert layout.scored_key(key) == "scored/2024/day.csv"
    assert layout.rejected_key(key, "csv") == "rejected/2024/day.csv"


def test_rejected_rows_of_other_formats_are_json_lines() -> None:
    assert layout.rejected_key("incoming/a.parquet", "parquet") == "rejected/a.parquet.jsonl"
    assert layout.rejected_key("incoming/a.jsonl", "jsonl") == "rejected/a.jsonl.jsonl"
    assert layout.rejected_key("incoming/a.jsonl.gz", "jsonl") == "rejected/a.jsonl.rejected.jsonl.gz"


def test_bundles_runs_and_reports() -> None:
    assert layout.model_prefix("churn", "v3") == "models/churn/v3"
    assert layout.report_key("models/churn/v3/") == "models/churn/v3/validation-report.json"
    assert layout.run_parts_prefix("abc") == "runs/abc/parts/"
    assert layout.objects(layout.INCOMING_PREFIX) == "incoming/*"
