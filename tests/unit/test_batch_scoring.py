"""Batch scoring of whole files: every row comes back scored or rejected with a reason."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import Model, directory_reader, load_model
from tests.conftest import breast_cancer, examples, mixed_frame


@pytest.fixture(scope="module")
def rf(rf_bundle: Path) -> Model:
    return load_model(directory_reader(rf_bundle), max_rows=1_000_000)


@pytest.fixture(scope="module")
def mixed(mixed_bundle: Path) -> Model:
    return load_model(directory_reader(mixed_bundle), max_rows=1_000_000)


def features_csv(n: int = 50, extra: bool = True) -> str:
    frame = breast_cancer().head(n)
    if not extra:
        frame = frame.drop(columns=["target"])
    return frame.to_csv(index=False)


def run(model: Model, tmp_path: Path, key: str, data: bytes, **kwargs: Any) -> dict[str, Any]:
    source = Source("local", f"incoming/{key}", size=len(data), etag=hashlib.md5(data).hexdigest())
    return score_file(model, LocalStore(tmp_path), source, io.BytesIO(data), **kwargs).manifest


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_clean_csv_is_scored_with_the_columns_kept(rf: Model, tmp_path: Path) -> None:
    manifest = run(rf, tmp_path, "clean.csv", features_csv(50).encode())
    assert manifest["status"] == "complete" and manifest["rows"] == {"in": 50, "scored": 50, "rejected": 0}
    scored = read_csv(tmp_path / "scored/clean.csv")
    assert len(scored) == 50 and scored[0]["target"] == str(breast_cancer()["target"][0])  # extra column kept
    frame = breast_cancer().head(50).drop(columns=["target"])
    expected = rf.predict(json.loads(frame.to_json(orient="values")))
    assert [int(r["prediction"]) for r in scored] == expected.predictions
    assert np.allclose([float(r["probability_1"]) for r in scored], np.asarray(expected.probabilities)[:, 1],
                       atol=1e-5)
    assert manifest["model"]["version"] == "v1" and manifest["outputs"]["scored"]["sha256"]


def test_messy_csv_rejects_each_bad_row_with_line_and_reason(rf: Model, tmp_path: Path) -> None:
    lines = features_csv(20).splitlines()
    lines[3] = "oops," + lines[3].split(",", 1)[1]           # line 4: not a number
    lines[6] = lines[6].rsplit(",", 2)[0]                    # line 7: too few fields
    lines[9] = "-inf," + lines[9].split(",", 1)[1]           # line 10: infinity
    lines[12] = "," + lines[12].split(",", 1)[1]             # line 13: empty cell, feature not nullable
    lines[15] = "1e39," + lines[15].split(",", 1)[1]         # line 16: beyond float32
    lines.insert(18, "")                                     # a blank line is no row
    manifest = run(rf, tmp_path, "messy.csv", ("\n".join(lines) + "\n").encode())
    assert manifest["rows"] == {"in": 20, "scored": 15, "rejected": 5}
    rejected = read_csv(tmp_path / "rejected/messy.csv")
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejected] == [
        ("4", "wrong_type"), ("7", "wrong_length"), ("10", "non_finite"), ("13", "null_value"), ("16", "out_of_range")]
    assert rejected[0]["row"] == lines[3]
    assert len(read_csv(tmp_path / "scored/messy.csv")) == 15


def test_gzip_csv_in_gzip_out(rf: Model, tmp_path: Path) -> None:
    manifest = run(rf, tmp_path, "a.csv.gz", gzip.compress(features_csv(30).encode()))
    assert manifest["compression"] == "gzip" and manifest["rows"]["scored"] == 30
    text = gzip.decompress((tmp_path / "scored/a.csv.gz").read_bytes()).decode()
    assert len(text.splitlines()) == 31


def test_json_lines_with_categories_and_nulls(mixed: Model, tmp_path: Path) -> None:
    frame = mixed_frame(40).drop(columns=["churn"])
    lines = [json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})
             for row in frame.to_dict("records")]
    lines[2] = lines[2].replace('"pro"', '"platinum"').replace('"basic"', '"platinum"').replace('"plus"', '"platinum"')
    lines[5] = "{broken json"
    lines[8] = "[1, 2, 3]"
    manifest = run(mixed, tmp_path, "rows.jsonl", ("\n".join(lines) + "\n").encode())
    # The model's OneHotEncoder(handle_unknown="ignore") takes the unseen 'platinum': scored.
    assert manifest["rows"] == {"in": 40, "scored": 38, "rejected": 2}
    rejected = [json.loads(x) for x in (tmp_path / "rejected/rows.jsonl.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejected] == [
        (6, "malformed_json"), (9, "wrong_type")]
    scored = [json.loads(x) for x in (tmp_path / "scored/rows.jsonl").read_text().splitlines()]
    assert len(scored) == 38 and scored[0]["prediction"] in ("yes", "no") and set(scored[0]["probabilities"]) == {
        "no", "yes"}


def test_csv_with_categories_goes_through_the_row_by_row_reader(mixed: Model, tmp_path: Path) -> None:
    frame = mixed_frame(25)
    manifest = run(mixed, tmp_path, "m.csv", frame.to_csv(index=False).encode())
    assert manifest["rows"] == {"in": 25, "scored": 25, "rejected": 0}  # empty income cells are nulls here


def test_parquet_in_parquet_out(rf: Model, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    breast_cancer().head(64).to_parquet(buffer)
    manifest = run(rf, tmp_path, "p.parquet", buffer.getvalue(), chunk_rows=10)
    assert manifest["rows"] == {"in": 64, "scored": 64, "rejected": 0}
    out = pd.read_parquet(tmp_path / "scored/p.parquet")
    assert len(out) == 64 and {"prediction", "probability_0", "probability_1", "target"} <= set(out.columns)


@pytest.mark.parametrize(("key", "data", "code"), [
    ("a.txt", b"x", "unsupported_format"),
    ("a.csv", b"", "empty_file"),
    ("a.csv", b"mean radius,other\n", "wrong_header"),
    ("a.csv", gzip.compress(b"x,y\n1,2\n"), "wrong_format"),
    ("a.csv.gz", b"mean radius\n1\n", "corrupt_gzip"),
    ("a.csv.gz", gzip.compress(features_csv(200).encode())[:-200], "corrupt_gzip"),
    ("a.csv", b"\xff\xfe\x00binary\x00garbage\n\x00", "wrong_format"),
    ("a.jsonl", b"", "empty_file"),
    ("a.parquet", b"PAR1 not really parquet", "wrong_format"),
])
def test_whole_file_failures_give_a_rejected_manifest(rf: Model, tmp_path: Path, key: str, data: bytes,
                                                      code: str) -> None:
    manifest = run(rf, tmp_path, key, data)
    assert manifest["status"] == "rejected" and manifest["reason"]["code"] == code, manifest["reason"]
    assert (tmp_path / f"manifests/{key}.json").is_file()
    assert not (tmp_path / "scored").exists() or not any((tmp_path / "scored").iterdir())


def test_header_only_file_is_rejected(rf: Model, tmp_path: Path) -> None:
    manifest = run(rf, tmp_path, "h.csv", features_csv(0).encode())
    assert manifest["reason"]["code"] == "empty_file"


def test_file_over_the_hard_limit_is_rejected(rf: Model, tmp_path: Path) -> None:
    manifest = run(rf, tmp_path, "big.csv", features_csv(50).encode(), max_file_bytes=100)
    assert manifest["reason"]["code"] == "file_too_large"


def test_redelivery_writes_nothing_twice(rf: Model, tmp_path: Path) -> None:
    data = features_csv(30).encode()
    first = run(rf, tmp_path, "r.csv", data)
    stamp = (tmp_path / "scored/r.csv").stat().st_mtime_ns
    source = Source("local", "incoming/r.csv", size=len(data), etag=hashlib.md5(data).hexdigest())
    again = score_file(rf, LocalStore(tmp_path), source, io.BytesIO(data))
    assert again.skipped and again.manifest == first
    assert (tmp_path / "scored/r.csv").stat().st_mtime_ns == stamp


def test_a_late_event_for_an_older_version_does_not_overwrite(rf: Model, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    newer = Source("b", "incoming/v.csv", version_id="2", etag="e2", sequencer="00A2")
    older = Source("b", "incoming/v.csv", version_id="1", etag="e1", sequencer="0099")
    score_file(rf, store, newer, io.BytesIO(features_csv(5).encode()))
    late = score_file(rf, store, older, io.BytesIO(features_csv(9).encode()))
    assert late.skipped and late.manifest["source"]["version_id"] == "2"


def test_a_crash_mid_file_leaves_no_output_and_a_retry_completes(rf: Model, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.batch import scoring

    data = features_csv(100).encode()
    real, calls = scoring.score_chunk, {"n": 0}

    def crash_on_third_chunk(model: Model, chunk: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated crash")
        return real(model, chunk)

    monkeypatch.setattr(scoring, "score_chunk", crash_on_third_chunk)
    with pytest.raises(MemoryError):
        run(rf, tmp_path, "c.csv", data, chunk_rows=10)
    assert not list(tmp_path.rglob("c.csv*")) and not list(tmp_path.rglob(".c.csv*"))  # nothing half-written
    monkeypatch.setattr(scoring, "score_chunk", real)
    manifest = run(rf, tmp_path, "c.csv", data, chunk_rows=10)
    assert manifest["rows"] == {"in": 100, "scored": 100, "rejected": 0}
    assert len(read_csv(tmp_path / "scored/c.csv")) == 100


CORRUPTIONS = st.sampled_from(["drop_field", "extra_field", "text", "nan", "inf", "empty", "quote", "huge",
                               "blank", "garbage_bytes", "keep"])


def damage_rows(rows: list[str], damage: list[tuple[int, str]]) -> list[str]:
    """A copy of the CSV rows with each (row index, corruption) applied; each row is damaged at most once."""
    damaged = list(rows)
    for index, how in damage:
        fields = damaged[index].split(",")
        if how == "drop_field":
            fields = fields[:-1]
        elif how == "extra_field":
            fields.append("1")
        elif how in ("text", "nan", "inf", "empty", "huge"):
            fields[index % len(fields)] = {"text": "abc", "nan": "NaN", "inf": "-inf", "empty": "",
                                           "huge": "1e400"}[how]
        elif how == "quote":
            fields[0] = '"' + fields[0] + '"'
        elif how == "blank":
            fields = []
        elif how == "garbage_bytes":
            fields[1] = "\u00e9\u4e2d"
        damaged[index] = ",".join(fields)
    return damaged


DAMAGE = st.lists(st.tuples(st.integers(0, 59), CORRUPTIONS), max_size=25, unique_by=lambda d: d[0])


@settings(max_examples=examples(200))
@given(DAMAGE)
def test_the_damage_generator_changes_only_the_rows_it_names(damage: list[tuple[int, str]]) -> None:
    rows = features_csv(60, extra=False).splitlines()[1:]
    damaged = damage_rows(rows, damage)
    named = {index for index, how in damage if how != "keep"}
    assert len(damaged) == len(rows)
    assert all(damaged[i] == rows[i] for i in range(len(rows)) if i not in named)
    assert all(damaged[i] == "" for i, how in damage if how == "blank")


@settings(max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(DAMAGE, st.sampled_from([7, 20, 5000]))
def test_rows_in_always_equals_scored_plus_rejected(rf: Model, tmp_path_factory: pytest.TempPathFactory,
                                                    damage: list[tuple[int, str]], chunk_rows: int) -> None:
    header, *rows = features_csv(60, extra=False).splitlines()
    rows = damage_rows(rows, damage)
    out = tmp_path_factory.mktemp("prop")
    manifest = run(rf, out, "p.csv", ("\n".join([header, *rows]) + "\n").encode(), chunk_rows=chunk_rows)
    counts = manifest["rows"]
    assert counts["in"] == sum(1 for r in rows if r.strip()) == counts["scored"] + counts["rejected"]
    assert len(read_csv(out / "scored/p.csv")) == counts["scored"]
    assert len(read_csv(out / "rejected/p.csv")) == counts["rejected"]
